"""The timesteps the pinned WanVideoWrapper's samplers really run, reproduced in plain Python (the handler has no torch).

For each accepted scheduler, ``schedule`` gives the timesteps the pinned pack's ``get_scheduler``
(wanvideo/schedulers/__init__.py) produces for the same scheduler, steps and shift, computed operation by
operation as the pack does: numpy float64 where the pack uses numpy, IEEE single precision where it uses float32
tensors. ``tenexa.wan.expert_split`` applies Wan2.2's expert boundary to them;
tests/integration/test_schedules_cpu.py compares every accepted scheduler with the pack's own code.
"""

from __future__ import annotations

import functools
import math
import struct

TRAIN_TIMESTEPS = 1000

# Schedulers whose timesteps this module reproduces (the pack's scheduler_list has more; they are refused).
SCHEDULERS = (
    "unipc", "unipc/beta", "dpm++", "dpm++/beta", "dpm++_sde", "dpm++_sde/beta", "euler", "euler/beta",
    "deis", "lcm", "lcm/beta", "res_multistep", "er_sde",
)

# How far (in timestep units) a reproduced timestep may be from the pack's. 0 = bit for bit. The beta
# variants go through scipy's beta quantile (reproduced here to ~1e-14, not bit for bit); res_multistep and
# er_sde start from torch.linspace in float32, whose last bit depends on the CPU's vector width and the torch
# build. A step closer to the boundary than this margin cannot be assigned with certainty and is refused.
_EXACT, _BETA_MARGIN, _LINSPACE32_MARGIN = 0.0, 1e-3, 1e-3


def _f32(x: float) -> float:
    """``x`` rounded to the nearest IEEE single (what a float32 tensor stores)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _linspace(start: float, stop: float, num: int) -> list[float]:
    """numpy.linspace(start, stop, num) in float64, the same operations in the same order."""
    if num == 1:
        return [start]
    div = num - 1
    step = (stop - start) / div
    values = [i * step + start for i in range(num)] if step != 0 else [i / div * (stop - start) + start for i in range(num)]
    values[-1] = stop
    return values


def _shift64(sigma: float, shift: float) -> float:
    """``shift * sigmas / (1 + (shift - 1) * sigmas)`` on a float64 numpy array."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def _shift32(sigma: float, shift: float) -> float:
    """The same on a float32 tensor: torch casts the Python scalars to float32 and rounds every operation."""
    return _f32(_f32(_f32(shift) * sigma) / _f32(1 + _f32(_f32(shift - 1) * sigma)))


def _beta_cf(x: float, a: float, b: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return h


def _beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_cf(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_cf(1 - x, b, a) / b


def beta_ppf(q: float, a: float = 0.6, b: float = 0.6) -> float:
    """Quantile of the Beta(a, b) distribution (scipy.stats.beta.ppf): Newton steps kept inside a shrinking
    bisection bracket, to the precision of the CDF (~1e-15)."""
    if q <= 0:
        return 0.0
    if q >= 1:
        return 1.0
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    lo, hi, x = 0.0, 1.0, q
    for _ in range(200):
        error = _beta_cdf(x, a, b) - q
        if error == 0:
            return x
        lo, hi = (x, hi) if error < 0 else (lo, x)
        density = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) + log_norm)
        step = x - error / density
        new = step if lo < step < hi else (lo + hi) / 2
        if new == x or hi - lo <= 4e-16 * x:
            return new
        x = new
    return x


def _beta_sigmas(sigmas: list[float], steps: int) -> list[float]:
    """``_convert_to_beta`` (alpha = beta = 0.6) of the pack's and diffusers' flow schedulers."""
    sigma_min, sigma_max = sigmas[-1], sigmas[0]
    return [sigma_min + beta_ppf(1 - q) * (sigma_max - sigma_min) for q in _linspace(0.0, 1.0, steps)]


def _flow_solver(steps: int, shift: float, beta: bool) -> list[float]:
    """FlowUniPCMultistepScheduler / FlowDPMSolverMultistepScheduler: ``unipc``, ``dpm++``, ``dpm++_sde``.

    __init__ shifts the float32 training sigmas once (sigma_max = shifted 0.999); set_timesteps spaces
    [sigma_max, 0] linearly in float64 and shifts again; timesteps = sigmas x 1000 (cast to int64 later).
    """
    sigma_max = _shift32(_f32(1.0 - 1 / TRAIN_TIMESTEPS), shift)
    sigmas = [_shift64(s, shift) for s in _linspace(sigma_max, 0.0, steps + 1)[:-1]]
    if beta:
        sigmas = _beta_sigmas(sigmas, steps)
    return [s * TRAIN_TIMESTEPS for s in sigmas]


def _flow_match(steps: int, shift: float, beta: bool) -> list[float]:
    """diffusers FlowMatchEulerDiscreteScheduler (``euler``) and the pack's FlowMatchLCMScheduler (``lcm``).

    __init__: float32 sigmas t/1000 for t in 1000..1, shifted; set_timesteps: linspace(sigma_max, sigma_min)
    x 1000 in float64, /1000, shifted again; timesteps = float32 sigmas x 1000 in float32.
    """
    sigma_max = _shift32(1.0, shift)
    sigma_min = _shift32(_f32(1 / TRAIN_TIMESTEPS), shift)
    points = _linspace(sigma_max * TRAIN_TIMESTEPS, sigma_min * TRAIN_TIMESTEPS, steps)
    sigmas = [_shift64(t / TRAIN_TIMESTEPS, shift) for t in points]
    if beta:
        sigmas = _beta_sigmas(sigmas, steps)
    return [_f32(_f32(s) * TRAIN_TIMESTEPS) for s in sigmas]


def _deis(steps: int, shift: float) -> list[float]:
    """diffusers DEISMultistepScheduler(use_flow_sigmas=True): float64 throughout (timesteps cast to int64 later)."""
    sigmas = [_shift64(1.0 - a, shift) for a in _linspace(1.0, 1 / TRAIN_TIMESTEPS, steps + 1)]
    return [s * TRAIN_TIMESTEPS for s in reversed(sigmas[1:])]


def _linspace32(start: float, end: float, num: int) -> list[float]:
    """torch.linspace(start, end, num) in float32, to within a unit or two in the last place (see the margin)."""
    start, end = _f32(start), _f32(end)
    step = _f32(_f32(end - start) / (num - 1))
    half = num // 2
    return [_f32(start + step * i) if i < half else _f32(end - step * (num - 1 - i)) for i in range(num)]


def _picked_sigmas(steps: int, shift: float) -> list[float]:
    """FlowMatchSchedulerResMultistep / ERSDEScheduler: ``steps`` sigmas picked from 1000 float32 ones, shifted in float32."""
    full = _linspace32(1.0, 0.003 / 1.002, TRAIN_TIMESTEPS)
    stride = TRAIN_TIMESTEPS / steps
    picked = [full[int(round(x * stride))] for x in range(steps)]
    return [_f32(_shift32(s, shift) * TRAIN_TIMESTEPS) for s in picked]


@functools.lru_cache(maxsize=1024)  # a request is checked when parsed and again when bound
def schedule(scheduler: str, steps: int, shift: float) -> tuple[tuple[float, ...], float, bool]:
    """(timesteps before any integer cast, margin of error, whether the pack casts them to int64)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    beta = scheduler.endswith("/beta")
    base = scheduler.removesuffix("/beta")
    if base in ("unipc", "dpm++", "dpm++_sde"):
        values, margin, integer = _flow_solver(steps, shift, beta), _EXACT, True
    elif base in ("euler", "lcm"):
        values, margin, integer = _flow_match(steps, shift, beta), _EXACT, False
    elif scheduler == "deis":
        values, margin, integer = _deis(steps, shift), _EXACT, True
    elif scheduler in ("res_multistep", "er_sde"):
        values, margin, integer = _picked_sigmas(steps, shift), _LINSPACE32_MARGIN, False
    else:
        raise ValueError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    return tuple(values), (_BETA_MARGIN if beta else margin), integer


def scheduler_timesteps(scheduler: str, steps: int, shift: float) -> tuple[list[float], float]:
    """The timesteps the pack's sampler runs for ``scheduler`` (first to last), and their margin of error."""
    values, margin, integer = schedule(scheduler, steps, shift)
    return ([float(int(t)) for t in values] if integer else list(values)), margin
