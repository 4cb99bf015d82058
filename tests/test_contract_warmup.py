"""Warm-up mode through the real handler coroutine against the ComfyUI double.

``{"input": {"warmup": true}}`` (the original Tenexa clients' start-up ping) runs the default graph at the smallest
window with the loader inputs of a default generate, reports the load time, and never fails the job.
"""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from comfy_double import Behaviour
from PIL import Image
from support import settings_for

import handler
from tenexa.comfy import ComfyClient
from tenexa.progress import LOADER_CLASSES


@pytest.fixture
def worker(comfy_double, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(comfy_double, TENEXA_ATTENTION="sdpa"))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url, crash_grace=2.0))
    return comfy_double


def run_job(job_input, job_id="warm"):
    return asyncio.run(handler.handler({"id": job_id, "input": job_input}))


def png(width, height) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def loader_inputs(graph: dict) -> dict[str, dict]:
    """Every node that loads weights (and the LoRA nodes), with its literal inputs: what ComfyUI's cache keys on."""
    keep = LOADER_CLASSES | {"WanVideoLoraSelectMulti", "WanVideoSetLoRAs", "WanVideoBlockSwap", "WanVideoSetBlockSwap"}
    return {nid: {"class_type": n["class_type"], **n["inputs"]} for nid, n in graph.items() if n["class_type"] in keep}


def test_warmup_runs_the_default_graph_with_a_default_generates_loader_inputs(worker):
    out = run_job({"warmup": True})
    assert out["status"] == "completed" and out["warmup"] is True and out["ok"] is True, out
    assert "error" not in out  # RunPod would mark the job FAILED
    assert out["load_s"] >= 0 and out["execution_s"] > 0 and out["seconds"] >= out["execution_s"]
    used = out["used"]
    assert (used["frames"], used["width"], used["height"], used["steps"]) == (5, 64, 64, 2)
    warm_graph = worker.calls.prompts[-1]["prompt"]

    generated = run_job({"image_base64": png(832, 480), "prompt": "a bird", "frames": 9})
    assert generated["status"] == "completed", generated
    assert loader_inputs(worker.calls.prompts[-1]["prompt"]) == loader_inputs(warm_graph)
    assert loader_inputs(warm_graph), "the graph has loaders"


def test_warmup_load_time_counts_only_loader_nodes(worker):
    worker.behaviour = Behaviour("success", node_seconds=0.05)
    out = run_job({"warmup": True})
    graph = worker.calls.prompts[-1]["prompt"]
    loaders = sum(1 for n in graph.values() if n["class_type"] in LOADER_CLASSES)
    assert loaders >= 3  # two experts, VAE, T5
    assert 0.04 * loaders <= out["load_s"] < out["execution_s"]


@pytest.mark.parametrize(("behaviour", "code"), [(Behaviour("error"), "GENERATION_ERROR"), (Behaviour("no_output"), "NO_OUTPUT")])
def test_warmup_failures_are_reported_not_raised(worker, behaviour, code):
    worker.behaviour = behaviour
    out = run_job({"warmup": True})
    assert out["status"] == "completed" and out["ok"] is False and out["error_code"] == code
    assert "error" not in out and "\n" not in out["error_message"]


def test_warmup_with_comfyui_down_is_a_coded_result(worker, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(worker, COMFY_PORT="1", COMFY_READY_TIMEOUT="0.5"))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient("http://127.0.0.1:1"))
    out = run_job({"warmup": True})
    assert out["status"] == "completed" and out["ok"] is False and out["error_code"] == "COMFY_NOT_READY"


def test_warmup_with_a_lossy_quantization_setting_is_a_config_error(worker, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(worker, TENEXA_QUANTIZATION="fp8_e5m2"))
    out = run_job({"warmup": True})
    assert (out["ok"], out["error_code"]) == (False, "CONFIG_ERROR")
    assert "TENEXA_QUANTIZATION=fp8_e5m2" in out["error_message"] and "loses precision" in out["error_message"]
    assert worker.calls.prompts == []
