"""Facts about a finished video, read from the file itself (PyAV), never echoed from the request."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tenexa.errors import ErrorCode, TenexaError
from tenexa.files import sha256_file
from tenexa.formats import container_name


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    duration_sec: float
    codec: str
    size_bytes: int
    sha256: str
    container: str = "mp4"  # mp4, webm, mkv: from the demuxer and the file name


def probe_video(path: Path) -> VideoInfo:
    import av  # ~50 ms to import: paid by the first video, not by every worker start

    try:
        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.type == "video")
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            frames = stream.frames
            if not frames:  # some muxers leave nb_frames empty: count packets instead
                frames = sum(1 for p in container.demux(stream) if p.size)
            fps = float(rate) if rate else 0.0
            duration = frames / fps if fps else float(container.duration or 0) / av.time_base
            info = (int(frames), round(fps, 3), stream.codec_context.width, stream.codec_context.height,
                    round(duration, 3), stream.codec_context.name)
            container_format = container_name(container.format.name, path.suffix)
    except (av.FFmpegError, StopIteration, OSError) as exc:
        raise TenexaError(ErrorCode.NO_OUTPUT, f"ComfyUI produced a file that is not a readable video ({type(exc).__name__})") from None
    return VideoInfo(*info, size_bytes=path.stat().st_size, sha256=sha256_file(path), container=container_format)
