"""The video formats a caller can ask for: codec, container and quality, and how each is written.

Each format is one the pinned VideoHelperSuite writes (``video_formats/<name>.json``) and a browser plays:

- ``h264`` in MP4 (libx264): plays everywhere; the default.
- ``h265`` in MP4 (libx265, tagged ``hvc1``): about half the size at the same quality; Safari, and Chrome/Edge
  where the machine decodes HEVC in hardware; not Firefox.
- ``vp9`` in WebM (libvpx-vp9): Chrome, Firefox, Edge, Safari 14.1+.

All three are written 8-bit ``yuv420p`` (the 10-bit variants VHS offers are not browser-safe). ``quality`` is
a preset (``high``, ``medium``, ``low``) mapped to each encoder's own CRF scale so that a preset means about
the same visual quality in every codec, or a raw CRF in the codec's range (lower is better). The CRF of
``high`` for H.264 is 19, the value the shipped graphs always used.

The same table drives both places a final video can be encoded: VHS inside ComfyUI (``vhs_format``) and, for
the ffmpeg interpolation fallback, PyAV in the worker (``encoder``), so a request gets the same codec, pixel
format and CRF either way.
"""

from __future__ import annotations

from dataclasses import dataclass

QUALITY_PRESETS = ("high", "medium", "low")
DEFAULT_CODEC = "h264"
DEFAULT_QUALITY = "high"
PIX_FMT = "yuv420p"


@dataclass(frozen=True)
class VideoFormat:
    codec: str  # the request's value
    vhs_format: str  # VHS_VideoCombine ``format``
    encoder: str  # the ffmpeg/PyAV encoder VHS's format uses
    probe_codec: str  # what PyAV reports when it reads the result back
    container: str  # also the file extension VHS writes
    crf_max: int  # the encoder's own CRF range is 0..crf_max
    presets: tuple[tuple[str, int], ...]  # quality preset -> CRF

    def crf(self, quality: str | int) -> int:
        """The CRF for a preset name or a raw CRF (already range-checked by the request parser)."""
        if isinstance(quality, str):
            return dict(self.presets)[quality]
        return int(quality)


# CRFs per preset: x264 19/23/28 (23 is x264's own default); x265 reaches the same look about 3-4 CRF higher;
# libvpx-vp9's scale is 0..63 and its "good quality" band is roughly 24-37.
FORMATS: dict[str, VideoFormat] = {
    "h264": VideoFormat("h264", "video/h264-mp4", "libx264", "h264", "mp4", 51,
                        (("high", 19), ("medium", 23), ("low", 28))),
    "h265": VideoFormat("h265", "video/h265-mp4", "libx265", "hevc", "mp4", 51,
                        (("high", 22), ("medium", 26), ("low", 31))),
    "vp9": VideoFormat("vp9", "video/webm", "libvpx-vp9", "vp9", "webm", 63,
                       (("high", 24), ("medium", 31), ("low", 37))),
}
CODECS = tuple(FORMATS)

# A lossless intermediate VHS writes when the worker itself finishes the video (ffmpeg interpolation):
# FFV1 in Matroska, 8-bit BGRA, so the frames the worker reads back are exactly the frames ComfyUI made.
LOSSLESS_VHS_FORMAT = "video/ffv1-mkv"
LOSSLESS_PIX_FMT = "bgra"
# Its other widgets at the defaults of VHS's ffv1-mkv.json (intra-only: every frame a keyframe).
LOSSLESS_WIDGETS = {"level": "3", "coder": "1", "context": "1", "gop_size": 1, "slices": "16", "slicecrc": "1"}

# The widgets each VHS format adds to VHS_VideoCombine (video_formats/<name>.json; checked against the recorded
# schema by a test). ComfyUI drops an input the chosen format does not declare, so a bound graph carries
# exactly the chosen format's widgets.
VHS_WIDGETS: dict[str, tuple[str, ...]] = {
    "video/h264-mp4": ("pix_fmt", "crf", "save_metadata", "trim_to_audio"),
    "video/h265-mp4": ("pix_fmt", "crf", "save_metadata"),
    "video/webm": ("pix_fmt", "crf", "save_metadata", "trim_to_audio"),
    LOSSLESS_VHS_FORMAT: ("level", "coder", "context", "gop_size", "slices", "slicecrc", "pix_fmt", "save_metadata",
                          "trim_to_audio"),
}

# Containers by the demuxer PyAV names and the file's extension (Matroska and WebM share a demuxer).
_CONTAINERS = {"mp4": "mp4", "webm": "webm", "mkv": "mkv", "mov": "mov"}


def video_format(codec: str) -> VideoFormat:
    try:
        return FORMATS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}") from None


def container_name(demuxer: str, extension: str) -> str:
    """``mp4``/``webm``/``mkv``/``mov`` for a file, from PyAV's demuxer name list and the file extension."""
    ext = extension.lower().lstrip(".")
    names = set(demuxer.split(","))
    if ext in _CONTAINERS and ext in names | ({"webm", "mkv"} if "matroska" in names else set()):
        return _CONTAINERS[ext]
    return demuxer.split(",")[0]


def mime_type(container: str) -> str:
    return {"mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska", "mov": "video/quicktime"}.get(
        container, "application/octet-stream")
