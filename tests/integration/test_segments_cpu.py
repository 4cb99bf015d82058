"""A clip of two windows on the real ComfyUI with tiny weights (64x64, windows of 5 frames, 2 steps): the frame
count, and the seam frame is exactly the first window's last frame (taps on the bound graph, read as PNGs)."""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import replace

import av
from PIL import Image, ImageChops
from support import RecordingClient

from tenexa import workflows
from tenexa.pipeline import fetch_image, run_graph
from tenexa.request import parse_generate
from tenexa.workspace import JobWorkspace

from .test_wan_cpu import START_PNG

WINDOW, FRAMES = 5, 9  # two windows of 5 frames: 5 + (5 - 1) = 9


def tap(graph: dict, node_id: str, source: list, index: int, prefix: str) -> None:
    """Save frame ``index`` of the batch at ``source`` as a PNG (test-only nodes on the bound graph)."""
    graph[node_id] = {"class_type": "ImageFromBatch", "inputs": {"image": source, "batch_index": index, "length": 1}}
    graph[node_id + "1"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0], "filename_prefix": prefix}}


def test_two_segment_clip_has_the_frames_and_its_seam_is_the_first_segments_last_frame(comfy_server, cpu_settings, test_prompt):
    request = parse_generate({"image_base64": "x", "prompt": test_prompt, "frames": FRAMES, "steps": 2, "width": 64, "height": 64,
                              "seed": 21})
    client = RecordingClient(cpu_settings.comfy_url)
    workspace = JobWorkspace(cpu_settings.comfy_root, f"it-seg-{uuid.uuid4().hex[:6]}")
    try:
        bound = workflows.bind(request, image_size=(96, 64), settings=replace(cpu_settings, max_window_frames=WINDOW),
                               start_image=workspace.input_name("start.png"), end_image=None, output_prefix=workspace.output_prefix)
        assert bound.used["segments"] == [5, 5] and bound.used["frames"] == FRAMES
        g = bound.graph
        windows = sorted((n for n, spec in g.items() if spec["class_type"] == "WanVideoDecode"), key=int)
        assert len(windows) == 2
        joined = g[bound.output_node]["inputs"]["images"]
        tap(g, "9001", [windows[0], 0], workflows.LAST_FRAME_INDEX, f"{workspace.output_prefix}_first_last")
        tap(g, "9002", joined, WINDOW - 1, f"{workspace.output_prefix}_seam")
        tap(g, "9003", [windows[1], 0], 0, f"{workspace.output_prefix}_second_first")
        tap(g, "9004", joined, WINDOW, f"{workspace.output_prefix}_after_seam")
        tap(g, "9005", [windows[1], 0], 1, f"{workspace.output_prefix}_second_1")
        result = run_graph(client, g, workspace=workspace, images={"start.png": START_PNG}, deadline=time.monotonic() + 600)
        first_last, seam, second_first, after_seam, second_1 = (
            Image.open(fetch_image(client, result.run, n, workspace)).convert("RGB") for n in ("90011", "90021", "90031", "90041", "90051"))
        video = result.video_path.read_bytes()
    finally:
        workspace.cleanup()

    assert (result.video.frames, result.video.width, result.video.height) == (FRAMES, 64, 64)
    with av.open(io.BytesIO(video)) as container:
        assert sum(1 for _ in container.decode(container.streams.video[0])) == FRAMES
    # the joined clip's frame 4 is, pixel for pixel, the first window's last frame ...
    assert ImageChops.difference(seam, first_last).getbbox() is None
    # ... and not the second window's own first frame (its re-rendering of that frame, which the join drops);
    # the next frame is the second window's frame 1: nothing duplicated, nothing dropped
    assert ImageChops.difference(seam, second_first).getbbox() is not None
    assert ImageChops.difference(after_seam, second_1).getbbox() is None
    # the frames differ at all (a test of which frame is where needs that)
    assert ImageChops.difference(first_last, second_1).getbbox() is not None
    # both windows ran, the second after the first
    ran = [node for _, node in client.results[-1].timeline if node]
    samplers = [n for n in ran if g[n]["class_type"] == "WanVideoSampler"]
    first = [i for i, n in enumerate(samplers) if int(n) < workflows.SEGMENT_ID_STRIDE]
    second = [i for i, n in enumerate(samplers) if int(n) >= workflows.SEGMENT_ID_STRIDE]
    assert len(first) == len(second) == 2 and max(first) < min(second), samplers
