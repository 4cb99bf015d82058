"""End to end through the runpod SDK's own local API: `python handler.py --rp_serve_api`, against the double."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import requests
from comfy_double import Behaviour, ComfyDouble, free_port, reference_json

ROOT = Path(__file__).resolve().parent.parent
IMAGE_B64 = base64.b64encode((ROOT / "example_image.png").read_bytes()).decode()


def start_local_api(env_overrides: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RUNPOD_LOG_LEVEL": "WARN", **env_overrides}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"local API exited: {log_path.read_text()[-2000:]}")
        try:
            requests.get(url + "/openapi.json", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("local API did not start")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    double = ComfyDouble(root / "ComfyUI").start()
    (double.root / "comfy.log").write_text("booting\nBUCKET_SECRET_ACCESS_KEY=hunter2hunter2\nready\n")
    proc, url = start_local_api({
        "COMFY_ROOT": str(double.root), "COMFY_PORT": str(double.port), "COMFY_READY_TIMEOUT": "3",
        "COMFY_EXEC_TIMEOUT": "15", "VOLUME_ROOT": str(root / "volume"), "HANDLER_VERSION": "e2e-test",
        "BUCKET_SECRET_ACCESS_KEY": "hunter2hunter2",
    }, root / "handler.log")
    yield double, url
    proc.terminate()
    proc.wait(10)
    double.stop()


def runsync(url: str, job_input: dict, timeout: float = 60) -> dict:
    resp = requests.post(url + "/runsync", json={"input": job_input}, timeout=timeout)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_test_mode(stack):
    double, url = stack
    started = time.monotonic()
    body = runsync(url, {"test": True})
    assert time.monotonic() - started < 1.0
    assert body["status"] == "COMPLETED"
    out = body["output"]
    assert out["ok"] is True and out["comfyui_up"] is True and out["handler_version"] == "e2e-test"
    assert out["volume_mounted"] is False and out["disk_free_gb"] > 0


def test_diagnose_with_selftest(stack):
    double, url = stack
    out = runsync(url, {"diagnose": True, "selftest": True})["output"]
    assert out["comfyui_reachable"] is True and out["system"]["comfyui_version"] == "0.8.0"
    assert out["selftest"]["ok"] is True and out["selftest"]["video"]["frames"] == 9
    assert "WanVideoSampler" in out["node_check"]["required_available"]
    assert out["manifest"]["missing"], "the double has no model files, so every manifest model is missing"
    assert out["healthy"] is False
    for check in out["workflow_checks"].values():
        assert check["exists"] and check["missing_models"], check


def test_generate_returns_a_real_mp4(stack):
    double, url = stack
    double.behaviour = Behaviour("success")
    body = runsync(url, {"image_base64": IMAGE_B64, "prompt": 'a "quoted" {brace} prompt', "seed": 7, "frames": 17, "steps": 4})
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    video = base64.b64decode(out["video_base64"])
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (832, 480)
    assert (out["frames"], out["width"], out["height"], out["seed"], out["fps"]) == (17, 832, 480, 7, 16.0)
    assert out["used"]["steps"] == 4 and 0 < out["used"]["split"] < 4
    assert out["metadata"]["size_bytes"] == len(video)
    assert set(out["timings"]) == {"upload_s", "queue_wait_s", "execution_s", "encode_s", "total_s"}
    graph = double.calls.prompts[-1]["prompt"]
    assert any(n["inputs"].get("positive_prompt") == 'a "quoted" {brace} prompt' for n in graph.values())
    leftovers = [p for k in ("input", "output", "temp") for p in (double.root / k).rglob("*") if p.is_file()]
    assert leftovers == []


def test_generate_failures_are_coded(stack):
    double, url = stack
    body = runsync(url, {"image_base64": IMAGE_B64, "steps": "many"})
    assert body["status"] == "FAILED" and body["error"].startswith("INVALID_INPUT: steps")
    assert "Traceback" not in body["error"]

    body = runsync(url, {"image_base64": "@@@"})
    assert body["status"] == "FAILED" and body["error"].startswith("INVALID_IMAGE")

    double.behaviour = Behaviour("reject", reject_body=reference_json("err_a2_unknown_class_plus_valid.json")["response"]["json"])
    body = runsync(url, {"image_base64": IMAGE_B64, "frames": 9})
    assert body["status"] == "FAILED" and body["error"].startswith("QUEUE_FAILED") and "does not exist" in body["error"]

    double.behaviour = Behaviour("error")
    body = runsync(url, {"image_base64": IMAGE_B64, "frames": 9})
    assert body["status"] == "FAILED" and body["error"].startswith("GENERATION_ERROR")

    double.behaviour = Behaviour("success")
    assert runsync(url, {"image_base64": IMAGE_B64, "frames": 9})["status"] == "COMPLETED", "the next job still works"


def test_run_then_status_route(stack):
    double, url = stack
    job = requests.post(url + "/run", json={"input": {"test": True}}, timeout=10).json()
    assert job["status"] == "IN_PROGRESS"
    body = requests.post(f"{url}/status/{job['id']}", timeout=30).json()
    assert body["status"] == "COMPLETED" and body["output"]["ok"] is True
