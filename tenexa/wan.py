"""The Wan2.2 I2V-A14B rules every request is fitted to. Pure functions, no ComfyUI, no I/O.

- Frame counts are 4n+1 (the VAE compresses time 4x after the first frame); default 81 at 16 fps.
- Width and height are multiples of 16 (VAE stride 8 x patch 2); non-multiples fail inside the model.
- Sizes are areas: without an explicit size the output keeps the input image's aspect ratio at the
  832x480 area the A14B experts were tuned for (480p). A ``resolution`` preset names another area
  (580p: 1024x576, 720p: 1280x720) and an ``aspect_ratio`` replaces the image's; the image is then
  centre-cropped to the output's aspect (``crop_box``), never stretched.
- One generation window is capped in frames and in latent tokens (``check_window``).
- The high-noise expert runs the steps whose timestep is at or above the I2V boundary 900 (Wan2.2
  ``wan/configs/wan_i2v_A14B.py``: ``boundary = 0.900``), in the schedule the chosen scheduler really runs;
  the low-noise expert runs the rest. See ``expert_split``.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

from tenexa.schedules import schedule

MIN_FRAMES = 5
DEFAULT_AREA = 832 * 480
# Presets name the pixel area of their 16:9 size, so every aspect ratio costs the model about the same tokens.
RESOLUTIONS: dict[str, int] = {"480p": 832 * 480, "580p": 1024 * 576, "720p": 1280 * 720}
ASPECT_RATIOS: dict[str, Fraction] = {"16:9": Fraction(16, 9), "9:16": Fraction(9, 16), "1:1": Fraction(1)}
AUTO_ASPECT = "auto"
SIZE_MULTIPLE = 16
MIN_SIDE = 64  # WanVideoImageToVideoEncode's minimum width/height
MAX_SIDE = 1920  # the request's limit


def round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def fit_frames(frames: int) -> int:
    """Nearest 4n+1 frame count (ties go up), at least ``MIN_FRAMES``."""
    n = round_half_up((frames - 1) / 4)
    return max(MIN_FRAMES, 4 * n + 1)


def plan_segments(frames: int, window: int) -> list[int]:
    """Frame counts of the consecutive windows a ``frames``-long (4n+1) clip is generated in.

    Each window is 4n+1 frames, at most ``window``, and starts on the previous window's last frame, which the
    join keeps once: ``sum(counts) - (len(counts) - 1) == frames``. As few windows as fit, as even as possible,
    so that no window is a short tail: 161 at window 81 is 81 + 81, 165 is 57 + 57 + 53. One window when
    ``frames`` fits.
    """
    if frames < MIN_FRAMES or (frames - 1) % 4:
        raise ValueError(f"frames must be 4n+1 and at least {MIN_FRAMES}, got {frames}")
    per_window = (window - 1) // 4  # latent steps (4 frames each) one window adds after its first frame
    if per_window < 1:
        raise ValueError(f"a window holds at least {MIN_FRAMES} frames, got {window}")
    steps = (frames - 1) // 4
    count = -(-steps // per_window)
    base, extra = divmod(steps, count)
    return [4 * (base + (1 if i < extra else 0)) + 1 for i in range(count)]


def fit_side(pixels: float) -> int:
    """Nearest multiple of 16 (ties go up), clamped to [64, 1920]."""
    value = SIZE_MULTIPLE * round_half_up(pixels / SIZE_MULTIPLE)
    return min(MAX_SIDE, max(MIN_SIDE, value))


def output_size(
    image_size: tuple[int, int],
    width: int | None = None,
    height: int | None = None,
    *,
    resolution: str | None = None,
    aspect_ratio: str | None = None,
) -> tuple[int, int]:
    """The (width, height) the video is rendered at.

    The aspect is ``aspect_ratio`` (``16:9``, ``9:16``, ``1:1``), or the input image's when it is ``auto`` or
    absent. Both sides given: each rounded to a multiple of 16. One given: the other follows the aspect.
    None given: the aspect at the area of ``resolution`` (default 480p, 832x480).
    """
    img_w, img_h = image_size
    if img_w <= 0 or img_h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    aspect = float(ASPECT_RATIOS[aspect_ratio]) if aspect_ratio not in (None, AUTO_ASPECT) else img_w / img_h
    area = RESOLUTIONS[resolution] if resolution is not None else DEFAULT_AREA
    if width is not None and height is not None:
        return fit_side(width), fit_side(height)
    if width is not None:
        return fit_side(width), fit_side(width / aspect)
    if height is not None:
        return fit_side(height * aspect), fit_side(height)
    return fit_side(math.sqrt(area * aspect)), fit_side(math.sqrt(area / aspect))


def crop_box(image_size: tuple[int, int], output: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the centred region of the image that fills the output without stretching.

    The same arithmetic as ImageResizeKJv2's ``keep_proportion: crop`` with ``crop_position: center`` (the
    node the graphs resize with), so ``used`` reports the region the model really saw.
    """
    img_w, img_h = image_size
    out_aspect = output[0] / output[1]
    if img_w / img_h > out_aspect:
        crop_w, crop_h = round(img_h * out_aspect), img_h
    else:
        crop_w, crop_h = img_w, round(img_w / out_aspect)
    return (img_w - crop_w) // 2, (img_h - crop_h) // 2, crop_w, crop_h



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
MAX_FRAMES = 241  # the longest window a worker may be configured for (MAX_WINDOW_FRAMES)
# A clip (several windows, plan_segments): 20 s at 16 fps by default (MAX_FRAMES), at most MAX_CLIP_FRAMES. The
# cap keeps the longest clip, interpolated 4x, under ImageFromBatch's index limit (4095), which picks its last frame.
DEFAULT_CLIP_FRAMES = 321
MAX_CLIP_FRAMES = 1021


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
# LOW continues from ``split``), and ``expert_split`` computes ``split`` the way Wan2.2 itself switches experts
# (``wan/image2video.py``: the high-noise model runs while the timestep t >= boundary x 1000 = 900), on the
# timesteps tenexa.schedules reproduces from the pinned pack's own scheduler code.

BOUNDARY_TIMESTEP = 900.0  # Wan2.2 I2V-A14B: boundary 0.900 x num_train_timesteps 1000


class SplitError(ValueError):
    """The split of this schedule cannot be predicted exactly (a step sits on the expert boundary)."""


def expert_split(steps: int, shift: float, scheduler: str) -> int:
    """How many of ``steps`` the high-noise expert runs (the low-noise expert runs the rest).

    The steps whose timestep is at or above 900 (Wan2.2's I2V boundary), counted from the first, in the
    schedule ``scheduler`` really runs; clamped to [1, steps-1] so that both experts run. Raises
    ``SplitError`` when a step lies within the reproduction margin of the boundary (only possible for the
    beta variants, res_multistep and er_sde, and then only for shifts that land within ~1e-6 of it).
    """
    if steps < 2:
        raise ValueError(f"two experts need at least 2 steps, got {steps}")
    timesteps, margin, _ = schedule(scheduler, steps, shift)  # int(t) >= 900 exactly when t >= 900
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
