"""Size presets and output options on the real ComfyUI: a portrait clip from a landscape image, cropped and not
stretched (the real ImageResizeKJv2 against PIL), the last frame as a PNG, and every codec the worker offers
written by the real VHS and its ffmpeg."""

from __future__ import annotations

import base64
import io
import time
import uuid

import av
import pytest
from PIL import Image, ImageChops, ImageStat
from support import RecordingClient

from tenexa import formats, workflows
from tenexa.diagnostics import selftest_graph
from tenexa.generate import generate
from tenexa.pipeline import fetch_image, run_graph, upload_images
from tenexa.request import parse_generate
from tenexa.workspace import JobWorkspace

EXAMPLE_PNG = (workflows.REPO_ROOT / "example_image.png").read_bytes()


def landscape_png(width: int = 96, height: int = 64) -> bytes:
    """Distinct columns (a colour ramp left to right with a stripe every 8 px): a stretch and a crop differ."""
    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(height):
            image.putpixel((x, y), (int(255 * x / (width - 1)), 255 if x % 8 < 2 else 40, int(255 * y / (height - 1))))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


LANDSCAPE = landscape_png()


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def test_aspect_ratio_9_16_gives_a_portrait_clip_and_the_last_frame(comfy_server, cpu_settings, test_prompt):
    job = {"image_base64": base64.b64encode(LANDSCAPE).decode(), "prompt": test_prompt, "frames": 5, "steps": 2,
           "aspect_ratio": "9:16", "width": 64, "seed": 5, "return_last_frame": True}
    response = generate(f"it-portrait-{uuid.uuid4().hex[:6]}", job, settings=cpu_settings, client=RecordingClient(cpu_settings.comfy_url))
    assert (response["width"], response["height"]) == (64, 112)  # portrait, from a 96x64 landscape image
    assert response["used"]["aspect_ratio"] == "9:16"
    assert response["used"]["crop"] == {"x": 29, "y": 0, "width": 37, "height": 64, "of": [96, 64], "mode": "center"}

    last = Image.open(io.BytesIO(base64.b64decode(response["last_frame_base64"])))
    assert last.format == "PNG" and last.size == (64, 112)
    with av.open(io.BytesIO(base64.b64decode(response["video_base64"]))) as container:
        frames = [f.to_image() for f in container.decode(container.streams.video[0])]
    assert len(frames) == 5
    # the PNG is the last frame before the lossy encode: by far the nearest to the decoded last frame
    distances = [mean_difference(last, frame) for frame in frames]
    assert distances[-1] < 0.5 * min(distances[:-1]), distances


def test_the_start_image_is_centre_cropped_not_stretched(comfy_server, cpu_settings):
    """The bound graph's own resize step (LoadImage -> ImageResizeKJv2 with the bound size) on the real node."""
    request = parse_generate({"image_base64": "x", "aspect_ratio": "9:16", "width": 64})
    client = RecordingClient(cpu_settings.comfy_url)
    workspace = JobWorkspace(cpu_settings.comfy_root, "it-crop")
    try:
        bound = workflows.bind(request, image_size=(96, 64), settings=cpu_settings, start_image=workspace.input_name("start.png"),
                               end_image=None, output_prefix=workspace.output_prefix)
        g = bound.graph
        (load_id,) = [n for n, spec in g.items() if spec["class_type"] == "LoadImage"]
        (resize_id,) = [n for n, spec in g.items() if spec["class_type"] == "ImageResizeKJv2" and spec["inputs"]["image"] == [load_id, 0]]
        resize = g[resize_id]
        sub = {n: g[n] for n in (load_id, resize_id, resize["inputs"]["width"][0], resize["inputs"]["height"][0])}
        sub["1"] = {"class_type": "SaveImage", "inputs": {"images": [resize_id, 0], "filename_prefix": f"{workspace.output_prefix}_crop"}}
        upload_images(client, workspace, {"start.png": LANDSCAPE})
        run = client.run_prompt(sub, deadline=time.monotonic() + 120)
        assert run.status == "success", run.error
        resized = Image.open(fetch_image(client, run, "1", workspace)).convert("RGB")
    finally:
        workspace.cleanup()
    x, y, w, h = (bound.used["crop"][k] for k in ("x", "y", "width", "height"))
    source = Image.open(io.BytesIO(LANDSCAPE)).convert("RGB")
    cropped = source.crop((x, y, x + w, y + h)).resize((64, 112), Image.Resampling.LANCZOS)
    stretched = source.resize((64, 112), Image.Resampling.LANCZOS)
    assert resized.size == (64, 112)
    assert mean_difference(resized, cropped) < 2.0
    assert mean_difference(resized, stretched) > 5 * max(mean_difference(resized, cropped), 1.0)


@pytest.mark.parametrize("codec", formats.CODECS)
def test_the_real_video_node_writes_each_codec(comfy_server, cpu_settings, codec):
    """Each codec the API offers, written by the pinned VHS with its ffmpeg, read back by the worker's probe."""
    fmt = formats.video_format(codec)
    client = RecordingClient(cpu_settings.comfy_url)
    workspace = JobWorkspace(cpu_settings.comfy_root, f"it-{codec}")
    try:
        graph = selftest_graph(workspace.input_name("in.png"), workspace.output_prefix)
        (video,) = [spec["inputs"] for spec in graph.values() if spec["class_type"] == "VHS_VideoCombine"]
        widgets = {"pix_fmt": formats.PIX_FMT, "crf": fmt.crf("high"), "save_metadata": False, "trim_to_audio": False}
        for name in widgets:
            video.pop(name, None)
        video.update(format=fmt.vhs_format, **{k: v for k, v in widgets.items() if k in formats.VHS_WIDGETS[fmt.vhs_format]})
        result = run_graph(client, graph, workspace=workspace, images={"in.png": EXAMPLE_PNG}, deadline=time.monotonic() + 120)
    finally:
        workspace.cleanup()
    assert (result.video.codec, result.video.container, result.video.frames) == (fmt.probe_codec, fmt.container, 9)
