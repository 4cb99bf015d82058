"""Frame interpolation without ComfyUI: the choice of interpolator, the frame arithmetic, the RIFE graph edit,
and the worker's ffmpeg fallback on real video files (PyAV). ``pytest -k interpolat`` selects these."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from tenexa import formats, interpolation, workflows
from tenexa.config import load_settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.request import parse_generate
from tenexa.validator import load_object_info, validate

SETTINGS = load_settings({})
OBJECT_INFO = load_object_info()


def moving_bar(index: int, width: int = 64, height: int = 48) -> Image.Image:
    """A white bar that moves 4 px per frame over a background whose green grows: motion to interpolate."""
    img = Image.new("RGB", (width, height), (30, 10 * index % 255, 90))
    ImageDraw.Draw(img).rectangle([4 * index, 8, 4 * index + 9, height - 8], fill=(250, 250, 250))
    return img


def write_lossless(path: Path, frames: int, fps: float = 16.0) -> list[Image.Image]:
    """What the graph writes for the ffmpeg path: FFV1 in Matroska, BGRA (VHS's video/ffv1-mkv, pix_fmt bgra)."""
    images = [moving_bar(i) for i in range(frames)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = images[0].width, images[0].height, formats.LOSSLESS_PIX_FMT
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_image(image)))
        out.mux(stream.encode(None))
    return images


def decode(path: Path) -> tuple[list[Image.Image], float, str, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return frames, float(stream.average_rate), stream.codec_context.name, container.format.name


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


# ------------------------------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize(("frames", "multiplier", "expected"), [(9, 2, 17), (81, 2, 161), (81, 3, 241), (5, 4, 17), (9, 1, 9)])
def test_interpolated_frame_count_keeps_the_originals(frames, multiplier, expected):
    assert interpolation.interpolated_frames(frames, multiplier) == expected


def test_interpolation_output_fps_is_adjusted_unless_slow_motion_is_asked():
    assert interpolation.output_fps(16.0, 2, adjust=True) == 32.0
    assert interpolation.output_fps(16.0, 2, adjust=False) == 16.0
    assert interpolation.output_fps(24.0, 1, adjust=True) == 24.0


# ------------------------------------------------------------------------------------------ choice


def test_no_interpolator_at_multiplier_one():
    assert interpolation.choose("rife", 1, rife_ready=False) == interpolation.NONE


def test_auto_interpolator_prefers_rife_and_falls_back_to_ffmpeg():
    assert interpolation.choose("auto", 2, rife_ready=True) == interpolation.RIFE
    assert interpolation.choose("auto", 2, rife_ready=False, why_not="no checkpoint") == interpolation.FFMPEG
    assert interpolation.choose("ffmpeg", 3, rife_ready=True) == interpolation.FFMPEG


def test_explicit_rife_interpolator_without_checkpoint_fails_before_submitting():
    with pytest.raises(TenexaError) as info:
        interpolation.choose("rife", 2, rife_ready=False, why_not="no checkpoint at /x/rife47.pth")
    assert info.value.code is ErrorCode.MODEL_MISSING
    assert "/x/rife47.pth" in info.value.message and "interpolator auto/ffmpeg" in info.value.message


def test_rife_interpolation_checkpoint_is_where_the_pack_looks(tmp_path):
    # vfi_utils: <pack>/<config ckpts_path "./ckpts">/<model_type "rife">/<ckpt_name>
    path = interpolation.rife_checkpoint(tmp_path)
    assert path == tmp_path / "custom_nodes" / "ComfyUI-Frame-Interpolation" / "ckpts" / "rife" / "rife47.pth"


# ------------------------------------------------------------------------------------------ graph


def bind(interpolator: str, **fields):
    req = parse_generate({"image_base64": "iVBORw0KGgo=", "frames": 9, **fields})
    return workflows.bind(req, image_size=(832, 480), settings=SETTINGS, start_image="in/start.png", end_image=None,
                          output_prefix="job/video", interpolator=interpolator)


def test_without_interpolation_no_rife_node_is_in_the_graph():
    bound = bind(interpolation.NONE, interpolate=3)  # asked, but the worker chose none: nothing is inserted
    assert not [n for n in bound.graph.values() if n["class_type"] == interpolation.RIFE_CLASS]
    assert bound.used["interpolate"] == 1 and bound.used["interpolator"] == "none"
    assert bound.finish is None


def test_rife_interpolation_sits_between_decode_and_video():
    bound = bind(interpolation.RIFE, interpolate=3, fps=16)
    g = bound.graph
    (rife_id,) = [k for k, n in g.items() if n["class_type"] == interpolation.RIFE_CLASS]
    rife, video = g[rife_id], g[bound.output_node]
    assert video["inputs"]["images"] == [rife_id, 0]
    assert g[rife["inputs"]["frames"][0]]["class_type"] == "WanVideoDecode"
    assert rife["inputs"]["multiplier"] == 3 and rife["inputs"]["ckpt_name"] == "rife47.pth"
    assert video["inputs"]["frame_rate"] == 48.0 and video["inputs"]["format"] == "video/h264-mp4"
    assert bound.used["output_frames"] == 25 and bound.used["output_fps"] == 48.0 and bound.used["fps"] == 16.0
    assert bound.finish is None
    assert validate(g, OBJECT_INFO) == []


def test_ffmpeg_interpolation_graph_writes_a_lossless_intermediate_at_the_generated_rate():
    bound = bind(interpolation.FFMPEG, interpolate=2, fps=16, codec="vp9", quality="medium")
    video = bound.graph[bound.output_node]["inputs"]
    assert (video["format"], video["pix_fmt"], video["frame_rate"]) == ("video/ffv1-mkv", "bgra", 16.0)
    assert not [n for n in bound.graph.values() if n["class_type"] == interpolation.RIFE_CLASS]
    finish = bound.finish
    assert (finish.multiplier, finish.fps, finish.video_format.codec, finish.crf) == (2, 32.0, "vp9", 31)
    assert bound.used["interpolator"] == "ffmpeg" and bound.used["codec"] == "vp9" and bound.used["container"] == "webm"
    assert validate(bound.graph, OBJECT_INFO) == []


def test_slow_motion_interpolation_keeps_the_frame_rate():
    bound = bind(interpolation.RIFE, interpolate=2, fps=16, adjust_fps_for_interpolation=False)
    assert bound.graph[bound.output_node]["inputs"]["frame_rate"] == 16.0
    assert bound.used["output_fps"] == 16.0 and bound.used["output_frames"] == 17


# ------------------------------------------------------------------------------------------ ffmpeg fallback


@pytest.mark.parametrize("codec", formats.CODECS)
def test_ffmpeg_interpolation_doubles_frames_and_rate_in_each_codec(tmp_path, codec):
    source = tmp_path / "in.mkv"
    originals = write_lossless(source, 9)
    fmt = formats.video_format(codec)
    dest = tmp_path / f"out.{fmt.container}"
    written = interpolation.interpolate_video(source, dest, multiplier=2, fps=32.0, video_format=fmt, crf=fmt.crf("high"))
    frames, fps, name, demuxer = decode(dest)
    assert written == len(frames) == 17 and fps == 32.0 and name == fmt.probe_codec
    assert formats.container_name(demuxer, dest.suffix) == fmt.container
    # the generated frames stay where they were (up to the codec's loss); the new ones lie between them
    for i, original in enumerate(originals):
        assert mean_difference(frames[2 * i], original) < 4.0, i
    for i in range(len(originals) - 1):
        between = frames[2 * i + 1]
        assert mean_difference(between, originals[i]) > 0.5 and mean_difference(between, originals[i + 1]) > 0.5


def test_ffmpeg_interpolation_triples_for_slow_motion(tmp_path):
    source = tmp_path / "in.mkv"
    write_lossless(source, 5)
    fmt = formats.video_format("h264")
    dest = tmp_path / "out.mp4"
    assert interpolation.interpolate_video(source, dest, multiplier=3, fps=16.0, video_format=fmt, crf=23) == 13
    frames, fps, _, _ = decode(dest)
    assert len(frames) == 13 and fps == 16.0


def test_ffmpeg_interpolation_of_an_unreadable_file_is_a_generation_error(tmp_path):
    source = tmp_path / "in.mkv"
    source.write_bytes(b"not a video")
    with pytest.raises(TenexaError) as info:
        interpolation.interpolate_video(source, tmp_path / "out.mp4", multiplier=2, fps=32.0,
                                        video_format=formats.video_format("h264"), crf=19)
    assert info.value.code is ErrorCode.GENERATION_ERROR
