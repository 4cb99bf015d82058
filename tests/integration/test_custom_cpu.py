"""Custom workflows on a real ComfyUI (CPU): an exported core-nodes graph end to end, hostile graphs, what
ComfyUI itself does with path escapes, and that nothing is ever written outside the job's folders."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import av
import pytest
import requests
from PIL import Image

import handler
from tenexa.comfy import ComfyClient
from tenexa.errors import ErrorCode, TenexaError
from tenexa.pipeline import execute_graph
from tenexa.workspace import JobWorkspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_e2e_local_api import start_local_api  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "custom"
EXPORTED = json.loads((FIXTURES / "core_video_api.json").read_text())
UI_FORMAT = json.loads((FIXTURES / "core_video_ui.json").read_text())
IMAGE = base64.b64encode((Path(__file__).resolve().parents[2] / "example_image.png").read_bytes()).decode()


def files_under(root: Path) -> dict[str, int]:
    """Every file in ComfyUI's input/, output/ and temp/ (path -> size): a job must leave this unchanged."""
    found = {}
    for kind in ("input", "output", "temp"):
        for path in (root / kind).rglob("*"):
            if path.is_file():
                found[str(path.relative_to(root))] = path.stat().st_size
    return found


@pytest.fixture
def worker(cpu_settings, comfy_server, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", replace(cpu_settings, allow_custom_workflows=True, exec_timeout=120.0))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_server.url))
    return comfy_server


def run_job(job_input, job_id="it-custom"):
    return asyncio.run(handler.handler({"id": job_id, "input": job_input}))


def job(graph=None, **extra):
    return {"workflow": copy.deepcopy(EXPORTED) if graph is None else graph,
            "images": [{"name": "input.png", "image": IMAGE}], **extra}


def changed(**nodes) -> dict:
    graph = copy.deepcopy(EXPORTED)
    for node_id, node in nodes.items():
        graph[node_id] = node
    return graph


def wait_idle(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = requests.get(url + "/queue", timeout=5).json()
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        time.sleep(0.3)
    raise AssertionError(f"ComfyUI still busy after {timeout} s: {queue}")


def test_exported_workflow_end_to_end_through_the_handler(worker):
    before = files_under(worker.root)
    out = run_job(job())
    assert out["status"] == "completed", out
    (video,), (image,) = out["videos"], out["images"]
    with av.open(io.BytesIO(base64.b64decode(video["data"]))) as container:
        stream = container.streams.video[0]
        decoded = sum(1 for _ in container.decode(stream))
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
    assert decoded == video["frames"] == 9 and video["fps"] == 8.0 and video["codec"] == "h264"
    with Image.open(io.BytesIO(base64.b64decode(image["data"]))) as png:
        assert png.format == "PNG" and png.size == (64, 48)
    assert out["removed_nodes"] == ["16"] and out["nodes"] == 6
    assert video["filename"] == "ComfyUI_00001_.mp4" and image["filename"] == "ComfyUI_00001_.png"
    assert files_under(worker.root) == before, "the job left files in ComfyUI's folders"


def test_local_api_runs_a_custom_workflow(comfy_server, tmp_path):
    """What a worker-comfyui client does: POST the workflow to /runsync of the runpod SDK's local API."""
    env = {"COMFY_ROOT": str(comfy_server.root), "COMFY_PORT": str(comfy_server.port), "COMFY_LOG": str(comfy_server.log_path),
           "VOLUME_ROOT": str(tmp_path / "none"), "ALLOW_CUSTOM_WORKFLOWS": "true"}
    proc, url = start_local_api(env, tmp_path / "handler.log")
    try:
        before = files_under(comfy_server.root)
        body = requests.post(url + "/runsync", json={"input": job()}, timeout=180).json()
        assert body["status"] == "COMPLETED", body
        output = body["output"]
        assert [v["frames"] for v in output["videos"]] == [9] and len(output["images"]) == 1
        assert files_under(comfy_server.root) == before
    finally:
        proc.terminate()
        proc.wait(10)


def test_switch_off_is_refused_on_the_real_worker(cpu_settings, comfy_server, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", cpu_settings)
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_server.url))
    out = run_job(job())
    assert out["error_code"] == "CUSTOM_WORKFLOWS_DISABLED"


ESCAPE_DIR = f"/tmp/tenexa-escape-{uuid.uuid4().hex[:8]}"
HOSTILE = [
    ("UI-format graph", job(UI_FORMAT), "INVALID_WORKFLOW"),
    ("unknown class", job(changed(**{"12": {"class_type": "WanVideoEnhancedBlockSwap", "inputs": {}}})), "INVALID_WORKFLOW"),
    ("LoadImage absolute path", job(changed(**{"10": {"class_type": "LoadImage", "inputs": {"image": "/etc/passwd"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("LoadImage climbs", job(changed(**{"10": {"class_type": "LoadImage", "inputs": {"image": "../../../etc/passwd"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("LoadImage of ComfyUI's own example", job(changed(**{"10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}})),
     "NO_IMAGE"),
    ("LoadImage from the output folder", job(changed(**{"10": {"class_type": "LoadImage", "inputs": {"image": "x.png [output]"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("prefix climbs out of output", job(changed(**{"15": {"class_type": "SaveImage",
                                                          "inputs": {"images": ["11", 0], "filename_prefix": "../../escape"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("prefix absolute", job(changed(**{"14": {"class_type": "SaveVideo", "inputs": {
        "video": ["13", 0], "filename_prefix": f"{ESCAPE_DIR}/v", "format": "mp4", "codec": "h264"}}})), "WORKFLOW_NOT_ALLOWED"),
    ("huge batch", job(changed(**{"12": {"class_type": "RepeatImageBatch", "inputs": {"image": ["11", 0], "amount": 4096}}})),
     "WORKFLOW_TOO_LARGE"),
    ("huge empty image", job(changed(**{"11": {"class_type": "EmptyImage", "inputs": {
        "width": 16384, "height": 16384, "batch_size": 64, "color": 0}}})), "WORKFLOW_TOO_LARGE"),
    ("path-reading node", job(changed(**{"17": {"class_type": "VHS_LoadImagePath", "inputs": {"image": "/etc/hosts"}},
                                         "12": {"class_type": "RepeatImageBatch", "inputs": {"image": ["17", 0], "amount": 2}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("model writer", job(changed(**{"17": {"class_type": "SaveLatent", "inputs": {"samples": ["18", 0], "filename_prefix": "l"}},
                                    "18": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                                    "19": {"class_type": "CheckpointSave", "inputs": {"filename_prefix": "ckpt"}}})),
     "WORKFLOW_NOT_ALLOWED"),
]


@pytest.mark.parametrize("name,job_input,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_graphs_get_their_code_and_write_nothing(worker, name, job_input, expected):
    before = files_under(worker.root)
    started = time.monotonic()
    out = run_job(job_input)
    assert out["status"] == "failed" and out["error_code"] == expected, out.get("error")
    assert "\n" not in out["error"] and time.monotonic() - started < 30
    assert files_under(worker.root) == before and not Path(ESCAPE_DIR).exists()


def test_slow_graph_times_out_and_leaves_nothing_once_comfyui_stops(worker, monkeypatch):
    """Within the limits but slow: TIMEOUT at COMFY_EXEC_TIMEOUT, ComfyUI interrupted, the job's folders gone."""
    monkeypatch.setattr(handler, "SETTINGS", replace(handler.SETTINGS, exec_timeout=3.0))
    before = files_under(worker.root)
    graph = changed(**{"11": {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "bilinear",
                                                                     "width": 320, "height": 240, "crop": "center"}},
                       "12": {"class_type": "RepeatImageBatch", "inputs": {"image": ["11", 0], "amount": 1000}}})
    started = time.monotonic()
    out = run_job(job(graph))
    assert out["error_code"] == "TIMEOUT" and time.monotonic() - started < 20, out.get("error")
    wait_idle(worker.url)
    assert files_under(worker.root) == before
    assert run_job(job())["status"] == "completed", "the next job still works"


# ----------------------------------------------------------------- what ComfyUI itself does (no confinement)


def _raw(client: ComfyClient, root: Path, graph_for, images=None):
    """Submit without custom_graph's rewriting, to see ComfyUI's own behaviour."""
    workspace = JobWorkspace(root, "it-raw")
    try:
        return execute_graph(client, graph_for(workspace), workspace=workspace, images=images or {},
                             deadline=time.monotonic() + 60)
    finally:
        workspace.cleanup()


def _save(prefix: str) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


@pytest.mark.parametrize("prefix", ["../escape", "../../escape", f"{ESCAPE_DIR}/abs"])
def test_comfyui_refuses_prefixes_outside_its_output_folder(comfy_server, prefix):
    """ComfyUI's get_save_image_path rejects these at run time (after validation passed), so a graph that
    reached it would fail as GENERATION_ERROR; custom_graph refuses them earlier and more clearly."""
    client = ComfyClient(comfy_server.url)
    before = files_under(comfy_server.root)
    with pytest.raises(TenexaError) as info:
        _raw(client, comfy_server.root, lambda ws: _save(prefix))
    assert info.value.code is ErrorCode.GENERATION_ERROR and "outside the output folder" in info.value.message
    assert files_under(comfy_server.root) == before and not Path(ESCAPE_DIR).exists()
    assert not (comfy_server.root / "escape").exists()


def test_comfyui_lets_a_prefix_name_another_jobs_folder(comfy_server):
    """Inside output/ ComfyUI writes wherever the prefix says, another job's folder included: why custom_graph
    moves every prefix under the job's own folder rather than trusting ComfyUI's check."""
    client = ComfyClient(comfy_server.url)
    other = f"tenexa/it-other-{uuid.uuid4().hex[:8]}"
    try:
        run, _ = _raw(client, comfy_server.root, lambda ws: _save(f"{other}/stolen"))
        (saved,) = run.history["outputs"]["2"]["images"]
        assert saved["subfolder"] == other and (comfy_server.root / "output" / other / saved["filename"]).is_file()
    finally:
        import shutil

        shutil.rmtree(comfy_server.root / "output" / other, ignore_errors=True)


def test_comfyui_load_image_reads_the_output_folder_by_annotation(comfy_server):
    """LoadImage takes 'name [output]' (and absolute paths, recorded in err_c2): without custom_graph's rule a
    caller could load another job's results."""
    client = ComfyClient(comfy_server.url)
    planted = f"tenexa/it-victim-{uuid.uuid4().hex[:8]}"
    folder = comfy_server.root / "output" / planted
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "secret.png")
    try:
        graph = {"1": {"class_type": "LoadImage", "inputs": {"image": f"{planted}/secret.png [output]"}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
        run, _ = _raw(client, comfy_server.root, lambda ws: {**graph, "2": {**graph["2"], "inputs": {
            **graph["2"]["inputs"], "filename_prefix": f"{ws.subfolder}/x"}}})
        assert run.status == "success"
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
