"""The Wan2.2 I2V-A14B rules every request is fitted to. Pure functions, no ComfyUI, no I/O.

- Frame counts are 4n+1 (the VAE compresses time 4x after the first frame); default 81 at 16 fps.
- Width and height are multiples of 16 (VAE stride 8 x patch 2); non-multiples fail inside the model.
- Sizes are areas: without an explicit size the output keeps the input image's aspect ratio at the
  832x480 area the A14B experts were tuned for (480p). A ``resolution`` preset names another area
  (580p: 1024x576, 720p: 1280x720) and an ``aspect_ratio`` replaces the image's; the image is then
  centre-cropped to the output's aspect (``crop_box``), never stretched.
- The high-noise expert runs while the shifted sigma is above the I2V boundary 0.9 (Wan2.2
  ``wan/configs/wan_i2v_A14B.py``: ``boundary = 0.900``); the low-noise expert runs the rest. See
  ``expert_split``.
"""

from __future__ import annotations

import math
from fractions import Fraction

MIN_FRAMES = 5
DEFAULT_AREA = 832 * 480
# Presets name the pixel area of their 16:9 size, so every aspect ratio costs the model about the same tokens.
RESOLUTIONS: dict[str, int] = {"480p": 832 * 480, "580p": 1024 * 576, "720p": 1280 * 720}
ASPECT_RATIOS: dict[str, Fraction] = {"16:9": Fraction(16, 9), "9:16": Fraction(9, 16), "1:1": Fraction(1)}
AUTO_ASPECT = "auto"
SIZE_MULTIPLE = 16
MIN_SIDE = 64  # WanVideoImageToVideoEncode's minimum width/height
MAX_SIDE = 1920  # the request's limit
I2V_BOUNDARY = Fraction(9, 10)


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


def shifted_sigma(sigma: Fraction, shift: Fraction) -> Fraction:
    """Flow-matching time shift: sigma' = k*sigma / (1 + (k-1)*sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def expert_split(steps: int, shift: float) -> int:
    """How many of ``steps`` the high-noise expert runs (the low-noise expert runs the rest).

    Rule: count the step indices i in [0, steps) whose shifted sigma, with sigma = 1 - i/steps, is
    above the I2V boundary 0.9, then clamp to [1, steps-1] so that both experts run at least one step.
    Exact rational arithmetic, so a sigma landing exactly on the boundary (8 steps at shift 9) is
    decided the same way on every machine. Reproduces Wan2.2's table: 40 steps/shift 5 -> 15,
    20/8 -> 10, 8/9 -> 4, 4/5 -> 2.
    """
    if steps < 2:
        raise ValueError(f"two experts need at least 2 steps, got {steps}")
    k = Fraction(shift)
    high = sum(1 for i in range(steps) if shifted_sigma(Fraction(steps - i, steps), k) > I2V_BOUNDARY)
    return min(steps - 1, max(1, high))
