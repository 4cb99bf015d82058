"""Frame interpolation: which interpolator a job gets, and the weight-free ffmpeg fallback.

Two interpolators, both producing ``(n - 1) * m + 1`` frames from ``n`` frames at multiplier ``m`` (the
originals are kept, ``m - 1`` new frames between each pair):

- ``rife``: RIFE 4.7 (``RIFE VFI`` of ComfyUI-Frame-Interpolation) inside the ComfyUI graph, between the
  decode and the video encode. Its checkpoint is the manifest entry ``rife47``; the pack reads it from its
  own folder (the entry's ``pack_path``) and would download it from GitHub when it is not there, so the
  worker submits a RIFE graph only when that file is present and ComfyUI serves the node.
- ``ffmpeg``: ffmpeg's motion-compensated ``minterpolate`` filter, run by the worker with PyAV on a lossless
  FFV1 intermediate that the graph writes instead of the final video; the worker then encodes the final
  video once, with the requested codec and quality. No weights; slower on long clips and prone to warping
  on fast motion, which is why ``auto`` takes RIFE whenever it can.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from tenexa import manifest
from tenexa.errors import ErrorCode, TenexaError
from tenexa.formats import PIX_FMT, VideoFormat

RIFE_ENTRY = "rife47"  # the manifest entry of the checkpoint
RIFE_CLASS = "RIFE VFI"
NONE, RIFE, FFMPEG = "none", "rife", "ffmpeg"
# minterpolate keeps two frames of look-ahead and drops them at the end of the stream: feed the last frame
# this many more times and cut the output back to (n - 1) * m + 1.
_TAIL_PADDING = 2
# ffmpeg's AVCOL_* value for BT.709 and AVCOL_RANGE_MPEG: the tags VHS writes on its MP4/WebM files.
_BT709, _TV_RANGE = 1, 1


def interpolated_frames(frames: int, multiplier: int) -> int:
    """Frames in the video after interpolating ``frames`` frames by ``multiplier``."""
    return (frames - 1) * multiplier + 1


def output_fps(fps: float, multiplier: int, adjust: bool) -> float:
    """The video's frame rate: ``fps`` times the multiplier (same duration), or ``fps`` (slow motion)."""
    return float(fps) * multiplier if adjust else float(fps)


def rife_checkpoint(comfy_root: Path) -> Path:
    """Where ComfyUI-Frame-Interpolation looks for the RIFE checkpoint (the manifest's ``pack_path``)."""
    entry = manifest.entry(RIFE_ENTRY)
    assert entry.pack_path is not None, "the rife47 manifest entry needs a pack_path"
    return Path(comfy_root) / entry.pack_path


def choose(requested: str, multiplier: int, *, rife_ready: bool, why_not: str = "") -> str:
    """The interpolator a job runs: ``none`` at multiplier 1, else ``rife`` or ``ffmpeg``.

    ``auto`` takes RIFE when it is ready and falls back to ffmpeg; an explicit ``rife`` that is not ready
    fails before anything is submitted (MODEL_MISSING), never letting the pack download at run time.
    """
    if multiplier <= 1:
        return NONE
    if requested == FFMPEG or (requested == "auto" and not rife_ready):
        return FFMPEG
    if not rife_ready:
        raise TenexaError(ErrorCode.MODEL_MISSING, f"interpolator rife is not available: {why_not}; "
                          "provision the rife47 model (MODELS=all) or use interpolator auto/ffmpeg")
    return RIFE


def interpolate_video(source: Path, dest: Path, *, multiplier: int, fps: float, video_format: VideoFormat, crf: int,
                      check: Callable[[], None] | None = None) -> int:
    """``minterpolate`` ``source`` by ``multiplier`` into ``dest`` at ``fps``, encoded once as ``video_format``.

    ``source`` is the graph's lossless intermediate. The filter runs at ``multiplier`` times the source's rate;
    the frames are then written at ``fps`` (the source rate times the multiplier, or the source rate for slow
    motion). ``check`` runs before each source frame and may raise to stop (cancel, deadline). Returns the
    frame count written, ``(n - 1) * multiplier + 1``.
    """
    import av  # the worker imports PyAV on first use (start-up time)

    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(source)) as inp, av.open(str(dest), "w") as out:
            src_stream = inp.streams.video[0]
            src_rate = src_stream.average_rate or src_stream.guessed_rate or Fraction(16)
            stream = out.add_stream(video_format.encoder, rate=rate)
            stream.width, stream.height, stream.pix_fmt = src_stream.codec_context.width, src_stream.codec_context.height, PIX_FMT
            stream.codec_context.time_base = 1 / rate
            stream.options = {"crf": str(crf), **({"b:v": "0"} if video_format.encoder == "libvpx-vp9" else {})}
            ctx = stream.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
            ctx.color_range = _TV_RANGE
            if video_format.encoder == "libx265":
                stream.codec_tag = "hvc1"  # what VHS's h265-mp4 writes: Safari plays only hvc1-tagged HEVC
                stream.options["x265-params"] = "log-level=quiet"

            graph = av.filter.Graph()
            chain = [graph.add_buffer(template=src_stream),
                     graph.add("scale", "out_color_matrix=bt709:out_range=tv"),
                     graph.add("format", PIX_FMT),
                     graph.add("minterpolate", f"fps={src_rate * multiplier}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1"),
                     graph.add("buffersink")]
            for a, b in zip(chain, chain[1:], strict=False):
                a.link_to(b)
            graph.configure()

            frames_in = 0
            written = 0
            wanted: int | None = None

            def drain() -> None:
                nonlocal written
                while True:
                    try:
                        frame = graph.pull()
                    except (av.BlockingIOError, av.EOFError):
                        return
                    if wanted is not None and written >= wanted:
                        continue
                    frame.pts, frame.time_base = written, 1 / rate
                    out.mux(stream.encode(frame))
                    written += 1

            last, step = None, 1
            for frame in inp.decode(src_stream):
                if check is not None:
                    check()
                frames_in += 1
                if last is not None and frame.pts is not None and last.pts is not None:
                    step = max(1, frame.pts - last.pts)
                last = frame
                graph.push(frame)
                drain()
            if last is None:
                raise TenexaError(ErrorCode.NO_OUTPUT, "the generated video has no frames to interpolate")
            wanted = interpolated_frames(frames_in, multiplier)
            for _ in range(_TAIL_PADDING):
                last.pts += step
                graph.push(last)
                drain()
            graph.push(None)
            drain()
            out.mux(stream.encode(None))
    except av.FFmpegError as exc:
        raise TenexaError(ErrorCode.GENERATION_ERROR, f"ffmpeg interpolation failed: {type(exc).__name__}: {exc}") from None
    if written != wanted:
        raise TenexaError(ErrorCode.GENERATION_ERROR, f"ffmpeg interpolation wrote {written} frames, expected {wanted}")
    return written
