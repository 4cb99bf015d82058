"""The Wan2.2 I2V-A14B rules every request is fitted to. Pure functions, no ComfyUI, no I/O.

- Frame counts are 4n+1 (the VAE compresses time 4x after the first frame); default 81 at 16 fps.
- Width and height are multiples of 16 (VAE stride 8 x patch 2); non-multiples fail inside the model.
- Sizes are areas: without an explicit size the output keeps the input image's aspect ratio at the
  832x480 area the A14B experts were tuned for (480p).
- The high-noise expert runs while the shifted sigma is above the I2V boundary 0.9 (Wan2.2
  ``wan/configs/wan_i2v_A14B.py``: ``boundary = 0.900``); the low-noise expert runs the rest. See
  ``expert_split``.
"""

from __future__ import annotations

import math
from fractions import Fraction

MIN_FRAMES = 5
DEFAULT_AREA = 832 * 480
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
