"""Size presets and output options through the worker's generate path against the ComfyUI double: what reaches
the graph, what the response reports (read from the file), and the last frame."""

from __future__ import annotations

import base64
import io

import av
import pytest
from PIL import Image
from support import settings_for

from tenexa.comfy import ComfyClient
from tenexa.generate import generate


def png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


LANDSCAPE = png(96, 64)


def run(double, **fields) -> dict:
    job_input = {"image_base64": LANDSCAPE, "frames": 9, "seed": 5, **fields}
    return generate("out", job_input, settings=settings_for(double), client=ComfyClient(double.url))


def node(double, class_type: str) -> dict:
    (found,) = [n for n in double.calls.prompts[-1]["prompt"].values() if n["class_type"] == class_type]
    return found


@pytest.mark.parametrize(("codec", "quality", "vhs_format", "crf", "probe", "container"), [
    ("h264", None, "video/h264-mp4", 19, "h264", "mp4"),
    ("h265", "medium", "video/h265-mp4", 26, "hevc", "mp4"),
    ("vp9", 40, "video/webm", 40, "vp9", "webm"),
])
def test_codec_and_quality_reach_the_video_node_and_come_back_from_the_file(comfy_double, codec, quality, vhs_format, crf, probe,
                                                                           container):
    fields = {"codec": codec, "width": 64, "height": 64, **({"quality": quality} if quality is not None else {})}
    out = run(comfy_double, **fields)
    vhs = node(comfy_double, "VHS_VideoCombine")["inputs"]
    assert (vhs["format"], vhs["crf"], vhs["pix_fmt"]) == (vhs_format, crf, "yuv420p")
    meta = out["metadata"]
    assert (meta["codec"], meta["container"]) == (probe, container) and meta["filename"].endswith("." + container)
    assert meta["mime_type"] == ("video/webm" if container == "webm" else "video/mp4")
    assert (out["used"]["codec"], out["used"]["crf"]) == (codec, crf)
    with av.open(io.BytesIO(base64.b64decode(out["video_base64"]))) as c:
        assert c.streams.video[0].codec_context.name == probe


def test_aspect_ratio_preset_makes_a_portrait_clip_from_a_landscape_image(comfy_double):
    out = run(comfy_double, aspect_ratio="9:16")
    assert (out["width"], out["height"]) == (480, 848)
    resize = node(comfy_double, "ImageResizeKJv2")["inputs"]
    assert (resize["keep_proportion"], resize["crop_position"]) == ("crop", "center")  # cropped, not stretched
    used = out["used"]
    assert (used["aspect_ratio"], used["resolution"]) == ("9:16", None)
    assert used["crop"] == {"x": 30, "y": 0, "width": 36, "height": 64, "of": [96, 64], "mode": "center"}


def test_resolution_preset_keeps_the_image_aspect(comfy_double):
    out = run(comfy_double, resolution="580p")
    assert (out["width"], out["height"], out["used"]["resolution"], out["used"]["aspect_ratio"]) == (944, 624, "580p", "auto")


def test_last_frame_comes_back_as_png_of_the_clip_last_frame(comfy_double):
    out = run(comfy_double, width=64, height=64, return_last_frame=True)
    frame = Image.open(io.BytesIO(base64.b64decode(out["last_frame_base64"])))
    assert frame.format == "PNG" and frame.size == (64, 64)
    with av.open(io.BytesIO(base64.b64decode(out["video_base64"]))) as c:
        last = list(c.decode(c.streams.video[0]))[-1].to_image()
    diff = [abs(a - b) for a, b in zip(frame.convert("RGB").getpixel((32, 32)), last.getpixel((32, 32)), strict=True)]
    assert max(diff) <= 6, (frame.getpixel((32, 32)), last.getpixel((32, 32)))
    save = node(comfy_double, "SaveImage")
    assert save["inputs"]["filename_prefix"].endswith("video_last")


def test_no_last_frame_unless_asked(comfy_double):
    out = run(comfy_double, width=64, height=64)
    assert "last_frame_base64" not in out and "last_frame_url" not in out
    assert "SaveImage" not in [n["class_type"] for n in comfy_double.calls.prompts[-1]["prompt"].values()]
