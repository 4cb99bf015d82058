"""Both shipped workflows, bound by ``tenexa.workflows.bind``, run for real on a CPU ComfyUI with tiny weights.

Test-only overrides (``cpu_settings``): attention sdpa, VAE fp32, T5 replaced by the embedding cache; size
64x64, 9 frames, 4 steps. Everything else is the production graph: both experts with their LoRAs, block
swap node, CFG schedule, the split, the I2V/FLF2V encode, decode and the VHS h264 MP4.

Two paths: ``test_workflow_runs_on_cpu`` posts the bound graph to ``/prompt`` and follows the WebSocket
itself; ``test_generate_path_on_cpu`` runs the same jobs through the worker's ``tenexa.generate``.
Run times per graph (ComfyUI execution, models loaded cold: the node cache is freed first) are printed
(``pytest -s``) and attached as ``cpu_run_s`` user properties.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from dataclasses import dataclass

import av
import pytest
import requests
import websocket
from PIL import Image

from tenexa import workflows
from tenexa.request import parse_generate

FRAMES, SIZE, STEPS = 9, 64, 4
UPLOAD_SUBFOLDER = "tenexa_it"


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (width, height), color)
    for x in range(width // 3):  # some structure, so crop/resize has something to do
        for y in range(height):
            image.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


START_PNG = png(96, 64, (200, 40, 40))  # wider than the output: exercises the centre crop
END_PNG = png(96, 64, (40, 40, 200))


def job_input(workflow: str, prompt: str) -> dict:
    data = {
        "workflow": workflow,
        "image_base64": base64.b64encode(START_PNG).decode(),
        "prompt": prompt,
        "steps": STEPS,
        "frames": FRAMES,
        "width": SIZE,
        "height": SIZE,
        "seed": 42,
    }
    if workflow == "flf2v":
        data["end_image_base64"] = base64.b64encode(END_PNG).decode()
    return data


@dataclass
class Run:
    timeline: list[tuple[float, str]]  # (seconds since submit, node id) from `executing` messages
    execution_s: float
    video: bytes


def upload(url: str, name: str, data: bytes) -> str:
    resp = requests.post(f"{url}/upload/image", files={"image": (name, data, "image/png")},
                         data={"subfolder": UPLOAD_SUBFOLDER, "overwrite": "true"}, timeout=30)
    resp.raise_for_status()
    body = resp.json()
    return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]


def free_models(url: str) -> None:
    """Unload models and drop ComfyUI's node cache, so each timed run includes its model loads."""
    requests.post(f"{url}/free", json={"unload_models": True, "free_memory": True}, timeout=10).raise_for_status()
    time.sleep(2.0)  # the prompt worker applies the flags between queue polls


def run_prompt(url: str, graph: dict, output_node: str, timeout: float = 600.0) -> Run:
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://{url.removeprefix('http://')}/ws?clientId={client_id}", timeout=timeout)
    try:
        submitted = time.monotonic()
        resp = requests.post(f"{url}/prompt", json={"prompt": graph, "client_id": client_id}, timeout=30)
        assert resp.status_code == 200, f"ComfyUI rejected the graph: {resp.text[:3000]}"
        prompt_id = resp.json()["prompt_id"]
        timeline: list[tuple[float, str]] = []
        started = None
        while True:
            frame = ws.recv()
            if not isinstance(frame, str):
                continue  # binary preview frames
            msg = json.loads(frame)
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if msg["type"] == "execution_start":
                started = time.monotonic()
            elif msg["type"] == "execution_error":
                pytest.fail(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                            f"{data.get('exception_type')}: {data.get('exception_message')}")
            elif msg["type"] == "execution_interrupted":
                pytest.fail("ComfyUI interrupted the prompt")
            elif msg["type"] == "executing" and data.get("prompt_id") == prompt_id:
                if data.get("node") is None:
                    break
                timeline.append((time.monotonic() - submitted, str(data["node"])))
        execution_s = time.monotonic() - (started or submitted)
    finally:
        ws.close()
    history = requests.get(f"{url}/history/{prompt_id}", timeout=30).json()[prompt_id]
    assert history["status"]["status_str"] == "success", history["status"]
    entry = history["outputs"][output_node]["gifs"][0]
    view = requests.get(f"{url}/view", params={k: entry[k] for k in ("filename", "subfolder", "type")}, timeout=60)
    view.raise_for_status()
    return Run(timeline, execution_s, view.content)


def probe(video: bytes) -> tuple[int, int, int, str]:
    """(frames, width, height, codec) of an MP4, by decoding every frame."""
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.width, stream.codec_context.height, stream.codec_context.name


def assert_both_experts_ran(timeline: list[tuple[float, str]], high: str, low: str) -> None:
    nodes = [node for _, node in timeline]
    assert high in nodes, f"HIGH expert sampler {high} never executed: {nodes}"
    assert low in nodes, f"LOW expert sampler {low} never executed: {nodes}"
    assert nodes.index(high) < nodes.index(low), f"LOW ran before HIGH: {nodes}"


@pytest.mark.parametrize("workflow", ["wan22_i2v", "flf2v"])
def test_workflow_runs_on_cpu(workflow, comfy_server, cpu_settings, test_prompt, record_property):
    request = parse_generate(job_input(workflow, test_prompt))
    start = upload(comfy_server.url, f"start-{workflow}.png", START_PNG)
    end = upload(comfy_server.url, f"end-{workflow}.png", END_PNG) if workflow == "flf2v" else None
    prefix = f"tenexa_it_{workflow}_{uuid.uuid4().hex[:8]}"
    bound = workflows.bind(request, image_size=(96, 64), settings=cpu_settings, start_image=start, end_image=end,
                           output_prefix=prefix)
    assert bound.used["frames"] == FRAMES and (bound.used["width"], bound.used["height"]) == (SIZE, SIZE)
    assert bound.graph[bound.high_sampler]["class_type"] == bound.graph[bound.low_sampler]["class_type"] == "WanVideoSampler"

    free_models(comfy_server.url)
    run = run_prompt(comfy_server.url, bound.graph, bound.output_node)

    frames, width, height, codec = probe(run.video)
    assert (frames, width, height, codec) == (FRAMES, SIZE, SIZE, "h264")
    assert_both_experts_ran(run.timeline, bound.high_sampler, bound.low_sampler)
    record_property("cpu_run_s", round(run.execution_s, 1))
    steps = " -> ".join(f"{node}@{t:.1f}s" for t, node in run.timeline)
    print(f"\nCPU run {workflow}: {run.execution_s:.1f} s execution, {frames} frames {width}x{height} {codec}; {steps}")
    for path in (comfy_server.root / "output").glob(f"{prefix}*"):
        path.unlink()


def test_generate_path_on_cpu(comfy_server, cpu_settings, test_prompt, record_property):
    """The same jobs through the worker's real generate path (upload, bind, follow, fetch, probe, deliver)."""
    from tenexa.comfy import ComfyClient
    from tenexa.generate import generate

    class RecordingClient(ComfyClient):
        """Keeps each PromptResult so the test can read the WebSocket timeline."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.results = []

        def run_prompt(self, *args, **kwargs):
            result = super().run_prompt(*args, **kwargs)
            self.results.append(result)
            return result

    for workflow in ("wan22_i2v", "flf2v"):
        client = RecordingClient(cpu_settings.comfy_url)
        started = time.monotonic()
        response = generate(f"it-{workflow}-{uuid.uuid4().hex[:6]}", job_input(workflow, test_prompt), settings=cpu_settings, client=client)
        elapsed = time.monotonic() - started
        assert response["status"] == "completed", response
        assert (response["frames"], response["width"], response["height"]) == (FRAMES, SIZE, SIZE)
        video = base64.b64decode(response["video"]) if "video" in response else None
        if video is not None:
            assert probe(video)[:3] == (FRAMES, SIZE, SIZE)
        spec = workflows.spec(workflow)
        assert_both_experts_ran([(t, n) for t, n in client.results[-1].timeline if n], spec.high_sampler, spec.low_sampler)
        record_property(f"generate_{workflow}_s", round(elapsed, 1))
        print(f"\ngenerate {workflow}: {elapsed:.1f} s end to end")


@pytest.mark.parametrize("workflow", ["wan22_i2v", "flf2v"])
def test_shipped_workflows_validate_against_live_object_info(workflow, comfy_server):
    """Live schemas, model files included: every name the graph uses is on the server (the manifest's names)."""
    from tenexa.validator import validate

    live = requests.get(f"{comfy_server.url}/object_info", timeout=60).json()
    assert validate(workflows.load_graph(workflow), live, check_files=True) == []
