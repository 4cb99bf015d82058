"""The Wan2.2 I2V-A14B rules every request is fitted to. Pure functions, no ComfyUI, no I/O.

- Frame counts are 4n+1 (the VAE compresses time 4x after the first frame); default 81 at 16 fps.
- Width and height are multiples of 16 (VAE stride 8 x patch 2); non-multiples fail inside the model.
- Sizes are areas: without an explicit size the output keeps the input image's aspect ratio at the
  832x480 area the A14B experts were tuned for (480p).
- One generation window is capped in frames and in latent tokens (``check_window``).
- The high-noise expert runs the steps whose timestep is at or above the I2V boundary 900 (Wan2.2
  ``wan/configs/wan_i2v_A14B.py``: ``boundary = 0.900``), in the schedule the chosen scheduler really runs;
  the low-noise expert runs the rest. See ``expert_split``.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct

MIN_FRAMES = 5
DEFAULT_AREA = 832 * 480
SIZE_MULTIPLE = 16
MIN_SIDE = 64  # WanVideoImageToVideoEncode's minimum width/height
MAX_SIDE = 1920  # the request's limit


def round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def fit_frames(frames: int) -> int:
    """Nearest 4n+1 frame count (ties go up), at least ``MIN_FRAMES``."""
    n = round_half_up((frames - 1) / 4)
    return max(MIN_FRAMES, 4 * n + 1)


def fit_side(pixels: float) -> int:
    """Nearest multiple of 16 (ties go up), clamped to [64, 1920]."""
    value = SIZE_MULTIPLE * round_half_up(pixels / SIZE_MULTIPLE)
    return min(MAX_SIDE, max(MIN_SIDE, value))


def output_size(image_size: tuple[int, int], width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """The (width, height) the video is rendered at.

    Both given: each rounded to a multiple of 16 (the image is centre-cropped to that aspect).
    One given: the other follows the input image's aspect ratio.
    None given: the image's aspect ratio at the 832x480 area.
    """
    img_w, img_h = image_size
    if img_w <= 0 or img_h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    aspect = img_w / img_h
    if width is not None and height is not None:
        return fit_side(width), fit_side(height)
    if width is not None:
        return fit_side(width), fit_side(width / aspect)
    if height is not None:
        return fit_side(height * aspect), fit_side(height)
    return fit_side(math.sqrt(DEFAULT_AREA * aspect)), fit_side(math.sqrt(DEFAULT_AREA / aspect))



# ------------------------------------------------------------------------------------------ one generation window
#
# One window = one sampler pass over all frames at once. Its cost is set by the latent tokens the transformer
# attends over: ((frames-1)/4+1) latent frames x (W/16) x (H/16) patches (VAE stride 4x8x8, patch 1x2x2).
# Attention grows with the square of that count, so the budget is what decides whether a job fits a GPU
# and its timeout. The defaults (81 frames, 75,600 tokens = 1280x720x81) are what Wan2.2-I2V-A14B is
# trained and published at; operators with bigger GPUs raise them (MAX_WINDOW_FRAMES, MAX_LATENT_TOKENS).
# Videos longer than one window are built from several windows on top of these functions.

DEFAULT_WINDOW_FRAMES = 81
DEFAULT_LATENT_TOKENS = 21 * 80 * 45  # 1280x720 at 81 frames
MAX_FRAMES = 241  # the request's limit


class WindowError(ValueError):
    """A window the worker refuses; ``field`` names the request field to change."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


def window_tokens(frames: int, width: int, height: int) -> int:
    """Latent tokens of one window of ``frames`` (4n+1) at ``width`` x ``height`` (multiples of 16)."""
    return latent_frames(frames) * (width // SIZE_MULTIPLE) * (height // SIZE_MULTIPLE)


def frames_within(width: int, height: int, max_frames: int, max_tokens: int) -> int | None:
    """The most 4n+1 frames (at most ``max_frames``) that fit ``max_tokens`` at this size; None if not even 5."""
    per_latent_frame = (width // SIZE_MULTIPLE) * (height // SIZE_MULTIPLE)
    latent = min(latent_frames(max_frames), max_tokens // per_latent_frame)
    frames = 4 * (latent - 1) + 1
    return frames if frames >= MIN_FRAMES else None


def size_within(width: int, height: int, frames: int, max_tokens: int) -> tuple[int, int] | None:
    """The largest size with (about) this aspect ratio, sides multiples of 16 and at least 64, that fits
    ``max_tokens`` at ``frames``; None when even the smallest does not."""
    scale = math.sqrt(max_tokens / window_tokens(frames, width, height))
    while True:
        w = max(MIN_SIDE, SIZE_MULTIPLE * math.floor(width * scale / SIZE_MULTIPLE))
        h = max(MIN_SIDE, SIZE_MULTIPLE * math.floor(height * scale / SIZE_MULTIPLE))
        if window_tokens(frames, w, h) <= max_tokens:
            return w, h
        if w == h == MIN_SIDE:
            return None
        scale *= 0.99


def check_window_frames(frames: int, max_frames: int) -> None:
    """Refuse a window longer than ``max_frames``."""
    if frames > max_frames:
        raise WindowError(
            "frames", f"{frames} frames is more than one generation window holds on this worker ({max_frames}, "
            f"MAX_WINDOW_FRAMES; Wan2.2 is trained at 81 and drifts back to the first frame in longer windows); "
            f"ask for at most {max_frames} frames")


def check_window(frames: int, width: int, height: int, *, max_frames: int, max_tokens: int) -> None:
    """Refuse a window longer than ``max_frames`` or bigger than ``max_tokens``, saying how to fit it."""
    check_window_frames(frames, max_frames)
    tokens = window_tokens(frames, width, height)
    if tokens > max_tokens:
        hints = []
        size = size_within(width, height, frames, max_tokens)
        if size:
            hints.append(f"{size[0]}x{size[1]} fits at {frames} frames")
        fewer = frames_within(width, height, max_frames, max_tokens)
        if fewer:
            hints.append(f"{fewer} frames fit at {width}x{height}")
        raise WindowError(
            "size", f"{width}x{height} at {frames} frames is {tokens:,} latent tokens, over this worker's budget of "
            f"{max_tokens:,} (MAX_LATENT_TOKENS; 75,600 = 1280x720 at 81 frames); " + (" or ".join(hints) or "no size fits"))


# ------------------------------------------------------------------------------------------ the expert split
#
# The wrapper does not pick the expert: the graph chains two WanVideoSamplers (HIGH runs steps [0, split),
# LOW continues from ``split``), and this module computes ``split`` the way Wan2.2 itself switches experts
# (``wan/image2video.py``: the high-noise model runs while the timestep t >= boundary x 1000 = 900). The
# timesteps are the ones the pinned pack's ``get_scheduler`` (wanvideo/schedulers/__init__.py) produces for
# the same scheduler, steps and shift, reproduced below operation by operation in plain Python (the handler
# has no torch): numpy float64 where the pack uses numpy, IEEE single precision where it uses float32
# tensors. tests/integration/test_schedules_cpu.py compares every accepted scheduler with the pack's own code.

BOUNDARY_TIMESTEP = 900.0  # Wan2.2 I2V-A14B: boundary 0.900 x num_train_timesteps 1000
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


class SplitError(ValueError):
    """The split of this schedule cannot be predicted exactly (a step sits on the expert boundary)."""


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
def _schedule(scheduler: str, steps: int, shift: float) -> tuple[tuple[float, ...], float, bool]:
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
    values, margin, integer = _schedule(scheduler, steps, shift)
    return ([float(int(t)) for t in values] if integer else list(values)), margin


def expert_split(steps: int, shift: float, scheduler: str) -> int:
    """How many of ``steps`` the high-noise expert runs (the low-noise expert runs the rest).

    The steps whose timestep is at or above 900 (Wan2.2's I2V boundary), counted from the first, in the
    schedule ``scheduler`` really runs; clamped to [1, steps-1] so that both experts run. Raises
    ``SplitError`` when a step lies within the reproduction margin of the boundary (only possible for the
    beta variants, res_multistep and er_sde, and then only for shifts that land within ~1e-6 of it).
    """
    if steps < 2:
        raise ValueError(f"two experts need at least 2 steps, got {steps}")
    timesteps, margin, _ = _schedule(scheduler, steps, shift)  # int(t) >= 900 exactly when t >= 900
    sure_high = sum(1 for _ in itertools.takewhile(lambda t: t - margin >= BOUNDARY_TIMESTEP, timesteps))
    maybe_high = sum(1 for _ in itertools.takewhile(lambda t: t + margin >= BOUNDARY_TIMESTEP, timesteps))
    split, other = (min(steps - 1, max(1, high)) for high in (sure_high, maybe_high))
    if split != other:
        t = timesteps[sure_high]
        raise SplitError(
            f"shift {shift:.10g} with {steps} steps puts step {sure_high + 1} of the {scheduler} schedule at timestep "
            f"{t:.4f}, on the high/low expert boundary ({BOUNDARY_TIMESTEP:g}) within this worker's rounding margin; "
            f"use a slightly different shift (e.g. {round(shift + 0.01, 6):g})"
        )
    return split
