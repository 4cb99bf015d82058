"""Turn a request's image (base64 text or URL) into clean PNG bytes ComfyUI can load.

Odd but valid images (CMYK, alpha, 16-bit, palette, animated) are converted to 8-bit RGB rather than refused;
anything that is not a decodable image, or is too big in bytes or pixels, is refused with a clear code.
URLs are fetched by ``tenexa.fetch`` (the SSRF guard: http(s) only, every hop resolved once, checked and
connected to at the checked address, a size cap and a whole-download deadline).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, ImageSequence

from tenexa.config import Settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.fetch import IMAGE_CODES, UrlPolicy, fetch_bytes
from tenexa.request import ImageSource

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*?;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class PreparedImage:
    png: bytes
    width: int
    height: int
    source_format: str
    converted_from: str | None  # original mode when a conversion happened


# ----------------------------------------------------------------------------------------------- decoding


def decode_base64(text: str, field: str, max_bytes: int) -> bytes:
    body = _DATA_URI.sub("", text.strip(), count=1)
    body = "".join(body.split())  # line-wrapped base64 is common
    if len(body) * 3 // 4 > max_bytes + 3:
        raise TenexaError(ErrorCode.IMAGE_TOO_LARGE, f"{field}: decoded image would exceed {max_bytes} bytes")
    body = body.replace("-", "+").replace("_", "/")  # accept the URL-safe alphabet too
    body += "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise TenexaError(ErrorCode.INVALID_IMAGE, f"{field}: not valid base64") from None
    if not raw:
        raise TenexaError(ErrorCode.INVALID_IMAGE, f"{field}: empty image")
    return raw


def normalize_image(raw: bytes, field: str, max_pixels: int, *, keep_alpha: bool = False) -> PreparedImage:
    """Decode fully (so truncation is caught here, not in ComfyUI) and re-encode as 8-bit RGB PNG (RGBA when
    ``keep_alpha`` and the image has transparency: a custom graph's LoadImage turns alpha into its mask)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:
                width, height = img.size
                if width < 1 or height < 1:
                    raise TenexaError(ErrorCode.INVALID_IMAGE, f"{field}: image has no pixels")
                if width * height > max_pixels:
                    raise TenexaError(
                        ErrorCode.IMAGE_TOO_LARGE,
                        f"{field}: {width}x{height} is {width * height} pixels; the limit is {max_pixels}",
                    )
                fmt = img.format or "unknown"
                frame = next(ImageSequence.Iterator(img)) if getattr(img, "is_animated", False) else img
                frame.load()
                converted = _to_rgb(ImageOps.exif_transpose(frame) or frame, keep_alpha=keep_alpha)
                mode = frame.mode
    except TenexaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TenexaError(ErrorCode.IMAGE_TOO_LARGE, f"{field}: declared dimensions are too large") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        reason = "truncated or corrupt image" if "truncat" in str(exc).lower() else "not a readable image"
        raise TenexaError(ErrorCode.INVALID_IMAGE, f"{field}: {reason}") from None
    out = io.BytesIO()
    converted.save(out, format="PNG", compress_level=1)
    return PreparedImage(out.getvalue(), converted.width, converted.height, fmt, None if mode == "RGB" else mode)


def _to_rgb(img: Image.Image, *, keep_alpha: bool = False) -> Image.Image:
    if img.mode == "RGB":
        return img
    if keep_alpha and ("A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)):
        return img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits instead of clipping.
        img = img.point(lambda v: v / 256).convert("L") if img.mode != "I" else img.convert("F").point(lambda v: v / 256).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "A" in img.getbands():
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


# ------------------------------------------------------------------------------------------------ fetching


def fetch_url(url: str, field: str, settings: Settings, policy: UrlPolicy | None = None) -> bytes:
    """Download an image through the SSRF-safe fetcher: every hop checked and pinned, a byte cap, a total deadline."""
    return fetch_bytes(url, field, max_bytes=settings.max_image_bytes, timeout=settings.image_url_timeout,
                       codes=IMAGE_CODES, policy=policy or UrlPolicy.from_settings(settings))


def prepare_image(source: ImageSource, settings: Settings, *, keep_alpha: bool = False) -> PreparedImage:
    if source.base64 is not None:
        raw = decode_base64(source.base64, source.field, settings.max_image_bytes)
    else:
        assert source.url is not None
        raw = fetch_url(source.url, source.field, settings)
    if len(raw) > settings.max_image_bytes:
        raise TenexaError(ErrorCode.IMAGE_TOO_LARGE, f"{source.field}: {len(raw)} bytes; the limit is {settings.max_image_bytes}")
    return normalize_image(raw, source.field, settings.max_image_pixels, keep_alpha=keep_alpha)
