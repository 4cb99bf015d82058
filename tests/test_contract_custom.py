"""Custom workflows through the real handler coroutine against the ComfyUI double: the switch, the response
shape, hostile graphs, timeout, cleanup and the per-worker schema cache."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import tempfile
import time
from pathlib import Path

import av
import pytest
from comfy_double import Behaviour
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import settings_for

import handler
from tenexa.comfy import ComfyClient
from tenexa.custom import MAX_IMAGES

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPORTED = json.loads((FIXTURES / "custom" / "core_video_api.json").read_text())
UI_FORMAT = json.loads((FIXTURES / "custom" / "core_video_ui.json").read_text())
SCHEMA = json.loads((FIXTURES / "comfyui" / "object_info_custom.json").read_text())


def png_b64(size=(80, 60), color=(20, 120, 200), mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


IMAGE = png_b64()


@pytest.fixture
def worker(comfy_double, monkeypatch):
    """The handler pointed at the double, custom workflows on, the recorded schemas of the classes used here."""
    comfy_double.object_info_body = {**comfy_double.object_info_body, **SCHEMA}
    monkeypatch.setattr(handler, "SETTINGS", settings_for(comfy_double, ALLOW_CUSTOM_WORKFLOWS="true", COMFY_EXEC_TIMEOUT="3"))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url, crash_grace=2.0))
    return comfy_double


def run_job(job_input, job_id="custom"):
    return asyncio.run(handler.handler({"id": job_id, "input": job_input}))


def job(graph=None, images=None, **extra):
    return {"workflow": copy.deepcopy(EXPORTED) if graph is None else graph,
            "images": [{"name": "input.png", "image": IMAGE}] if images is None else images, **extra}


def leftovers(double):
    return [p for kind in ("input", "output", "temp") for p in (double.root / kind).rglob("*") if p.is_file()]


def temp_dirs():
    return sorted(Path(tempfile.gettempdir()).glob("tenexa-job-*"))


def test_switch_off_refuses_graphs_but_keeps_builtin_names(comfy_double, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(comfy_double))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url))
    out = run_job(job())
    assert out["status"] == "failed" and out["error_code"] == "CUSTOM_WORKFLOWS_DISABLED"
    assert "ALLOW_CUSTOM_WORKFLOWS=true" in out["error"] and out["error_field"] == "workflow"
    assert comfy_double.calls.prompts == [] and comfy_double.calls.uploads == []
    builtin = run_job({"workflow": "wan22_i2v", "image_base64": IMAGE, "frames": 9})
    assert builtin["status"] == "completed" and builtin["workflow"] == "wan22_i2v"


def test_custom_workflow_returns_every_output_and_leaves_nothing(worker):
    before = temp_dirs()
    out = run_job(job(extra_key=1))
    assert out["status"] == "completed", out
    assert out["delivery"] == "base64" and out["workflow"] == "custom" and out["nodes"] == 6
    assert out["removed_nodes"] == ["16"] and out["ignored_keys"] == ["extra_key"]
    (video,), (image,) = out["videos"], out["images"]
    assert video["type"] == "base64" and video["node"] == "14" and video["content_type"] == "video/mp4"
    with av.open(io.BytesIO(base64.b64decode(video["data"]))) as container:
        assert container.streams.video[0].frames == video["frames"] == 9
    assert Image.open(io.BytesIO(base64.b64decode(image["data"]))).size == (image["width"], image["height"]) == (64, 48)
    assert image["node"] == "15" and image["content_type"] == "image/png"

    submitted = worker.calls.prompts[-1]["prompt"]
    token = submitted["10"]["inputs"]["image"].split("/")[1]
    assert submitted["10"]["inputs"]["image"] == f"tenexa/{token}/image_0.png"
    assert submitted["14"]["inputs"]["filename_prefix"] == f"tenexa/{token}/video/ComfyUI"
    assert worker.calls.uploads == [f"tenexa/{token}/image_0.png"]
    assert leftovers(worker) == [] and temp_dirs() == before


def test_url_delivery_needs_a_bucket(worker):
    out = run_job(job(output="url"))
    assert out["error_code"] == "UPLOAD_FAILED" and leftovers(worker) == []


def test_too_many_outputs_for_the_response_without_a_bucket(worker, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(worker, ALLOW_CUSTOM_WORKFLOWS="true", MAX_RESPONSE_MB="0.01"))
    out = run_job(job())
    assert out["error_code"] == "OUTPUT_TOO_LARGE" and "2 file(s)" in out["error"] and leftovers(worker) == []


def _graph(**changes):
    graph = copy.deepcopy(EXPORTED)
    for node_id, node in changes.items():
        if node is None:
            graph.pop(node_id)
        else:
            graph[node_id] = node
    return graph


HOSTILE = [
    ("UI-format graph", job(UI_FORMAT), "INVALID_WORKFLOW"),
    ("unknown class", job(_graph(**{"12": {"class_type": "EvilNode", "inputs": {"image": ["11", 0]}}})), "INVALID_WORKFLOW"),
    ("LoadImage reads /etc/passwd", job(_graph(**{"10": {"class_type": "LoadImage", "inputs": {"image": "/etc/passwd"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("LoadImage climbs", job(_graph(**{"10": {"class_type": "LoadImage", "inputs": {"image": "../../../x.png"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("LoadImage reads outputs", job(_graph(**{"10": {"class_type": "LoadImage", "inputs": {"image": "x.png [output]"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("LoadImage of an image not sent", job(images=[]), "NO_IMAGE"),
    ("prefix climbs out", job(_graph(**{"15": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "../../x"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("prefix absolute", job(_graph(**{"15": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "/tmp/x"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("path-reading node", job(_graph(**{"17": {"class_type": "VHS_LoadVideoPath", "inputs": {"video": "/etc/hosts"}}})),
     "WORKFLOW_NOT_ALLOWED"),
    ("huge batch", job(_graph(**{"12": {"class_type": "RepeatImageBatch", "inputs": {"image": ["11", 0], "amount": 4096}}})),
     "WORKFLOW_TOO_LARGE"),
    ("cycle", job(_graph(**{"11": {"class_type": "ImageScale", "inputs": {"image": ["12", 0], "upscale_method": "bilinear",
                                                                       "width": 8, "height": 8, "crop": "center"}}})),
     "INVALID_WORKFLOW"),
    ("images not a list", job(images={"name": "input.png"}), "INVALID_INPUT"),
    ("image name with a folder", job(images=[{"name": "a/input.png", "image": IMAGE}]), "INVALID_INPUT"),
    ("duplicate image names", job(images=[{"name": "input.png", "image": IMAGE}] * 2), "INVALID_INPUT"),
    ("too many images", job(images=[{"name": f"{i}.png", "image": IMAGE} for i in range(MAX_IMAGES + 1)]), "INVALID_INPUT"),
    ("image not base64", job(images=[{"name": "input.png", "image": "@@@"}]), "INVALID_IMAGE"),
    ("image URL to loopback", job(images=[{"name": "input.png", "url": "http://127.0.0.1:8188/view?filename=x"}]), "URL_BLOCKED"),
    ("image URL in the image field", job(images=[{"name": "input.png", "image": "http://169.254.169.254/x.png"}]), "URL_BLOCKED"),
    ("output mode unknown", job(output="ftp"), "INVALID_INPUT"),
    ("empty graph", job({}), "INVALID_WORKFLOW"),
]


@pytest.mark.parametrize("name,job_input,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_custom_graphs(worker, name, job_input, expected):
    before = temp_dirs()
    out = run_job(job_input)
    assert out["status"] == "failed" and out["error_code"] == expected, out.get("error")
    assert out["error"] == f"{expected}: {out['error_message']}" and "\n" not in out["error"]
    assert "Traceback" not in json.dumps(out)
    assert worker.calls.prompts == [], "refused before anything reached ComfyUI"
    assert leftovers(worker) == [] and temp_dirs() == before
    assert run_job(job())["status"] == "completed", "the next job still works"


def test_node_errors_ride_along(worker):
    out = run_job(job(_graph(**{"12": {"class_type": "RepeatImageBatch", "inputs": {"image": ["11", 0]}}})))
    assert out["error_code"] == "INVALID_WORKFLOW" and "node 12 (RepeatImageBatch) input amount" in out["error"]
    assert out["node_errors"]["12"]["errors"][0]["type"] == "required_input_missing"


def test_timeout_interrupts_and_cleans_up(worker):
    worker.behaviour = Behaviour("hang")
    started = time.monotonic()
    out = run_job(job())
    assert out["error_code"] == "TIMEOUT" and time.monotonic() - started < 10
    assert worker.calls.interrupts and leftovers(worker) == []


def test_comfyui_rejection_drops_the_cached_schema(worker):
    client = handler.CLIENT
    assert run_job(job())["status"] == "completed"
    assert run_job(job())["status"] == "completed"
    assert worker.calls.object_info == 1, "the schema is fetched once per worker, not per job"
    worker.behaviour = Behaviour("reject", reject_body={"error": {"type": "prompt_outputs_failed_validation", "message": "x"},
                                                        "node_errors": {}})
    assert run_job(job())["error_code"] == "QUEUE_FAILED"
    assert client._schema is None
    worker.behaviour = Behaviour()
    assert run_job(job())["status"] == "completed" and worker.calls.object_info == 2


def test_a_refusal_is_checked_again_against_fresh_schemas(worker):
    """A node class the cached schema lacks may come from a pack ComfyUI loaded since: one fresh look."""
    handler.CLIENT.cached_object_info()
    handler.CLIENT._schema = (time.monotonic() - 120, handler.CLIENT._schema[1])  # an older copy
    graph = _graph(**{"12": {"class_type": "EvilNode", "inputs": {"image": ["11", 0]}}})
    assert run_job(job(graph))["error_code"] == "INVALID_WORKFLOW"
    assert worker.calls.object_info == 2
    assert run_job(job(graph))["error_code"] == "INVALID_WORKFLOW"
    assert worker.calls.object_info == 2, "a fresh copy is not fetched again for the same refusal"


def test_unused_images_are_not_fetched(worker):
    out = run_job(job(images=[{"name": "input.png", "image": IMAGE},
                              {"name": "spare.png", "url": "http://127.0.0.1:9/never-fetched.png"}]))
    assert out["status"] == "completed" and out["ignored_images"] == ["spare.png"]


def test_diagnose_reports_the_switch_and_limits(worker):
    report = run_job({"diagnose": True})
    assert report["custom_workflows"] == {"enabled": True, "max_nodes": 500, "max_batch": 1024, "max_pixels": 600_000_000,
                                          "max_images": MAX_IMAGES, "max_output_files": 100}


CLASSES = sorted(SCHEMA) + ["EvilNode"]
literals = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12) \
    | st.sampled_from(["input.png", "../x", "/etc/passwd", "x [output]", "bilinear", "mp4"])
links = st.tuples(st.sampled_from(["10", "11", "12", "13", "99"]), st.integers(-1, 3)).map(list)
node = st.fixed_dictionaries({"class_type": st.sampled_from(CLASSES),
                              "inputs": st.dictionaries(st.sampled_from(["image", "images", "filename_prefix", "amount", "width",
                                                                         "height", "batch_size", "video", "fps", "value", "x"]),
                                                        literals | links, max_size=5)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["10", "11", "12", "13", "14", "15", "x"]), node, max_size=6))
def test_fuzzed_graphs_never_crash(worker, graph):
    out = run_job(job(graph))
    assert out["status"] in ("completed", "failed")
    if out["status"] == "failed":
        assert out["error_code"] != "INTERNAL_ERROR", out["error"]
        assert "\n" not in out["error"]
    assert leftovers(worker) == []


def test_progress_reports_worker_phases_in_order(worker):
    from tenexa.custom import run_custom

    sent: list[dict] = []
    settings = settings_for(worker, ALLOW_CUSTOM_WORKFLOWS="true", PROGRESS_INTERVAL="0")
    out = run_custom("progress", job(), settings=settings, client=ComfyClient(worker.url), send_progress=sent.append)
    assert out["status"] == "completed"
    phases = [p["phase"] for p in sent]
    assert phases[0] == "uploading" and "queued" in phases and phases[-1] == "delivering"
    percents = [p["percent"] for p in sent]
    assert percents == sorted(percents)
