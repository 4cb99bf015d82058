"""Faults seen through the handler: what the caller gets back when ComfyUI is slow, gone, stuck or flaky."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import pytest
from comfy_double import Behaviour, ComfyDouble, free_port
from support import settings_for

import handler
from tenexa.comfy import ComfyClient

IMAGE = base64.b64encode((handler.SETTINGS.workflow_dir / "example_image.png").read_bytes()).decode()


def run(job_input):
    return asyncio.run(handler.handler({"id": "fault", "input": job_input}))


@pytest.fixture
def use(monkeypatch):
    def _use(double, **env):
        monkeypatch.setattr(handler, "SETTINGS", settings_for(double, **env))
        monkeypatch.setattr(handler, "CLIENT", ComfyClient(double.url, crash_grace=2.0))
    return _use


def test_slow_start_test_mode_says_so_at_once_and_generate_waits(tmp_path, use):
    double = ComfyDouble(tmp_path / "ComfyUI", port=free_port())
    use(double, COMFY_READY_TIMEOUT="10")
    started = time.monotonic()
    out = run({"test": True})
    assert out["ok"] is False and out["comfyui_up"] is False and time.monotonic() - started < 0.5
    timer = threading.Timer(1.5, double.start)
    timer.start()
    try:
        out = run({"image_base64": IMAGE, "frames": 9})
        assert out["status"] == "completed", out
        assert out["timings"]["total_s"] >= 1.0
    finally:
        timer.join()
        double.stop()


def test_never_ready_is_comfy_not_ready_after_the_timeout(tmp_path, use):
    double = ComfyDouble(tmp_path / "ComfyUI", port=free_port())  # never started
    (double.root / "comfy.log").write_text("Traceback (most recent call last):\nRuntimeError: CUDA error: no kernel image\n")
    use(double, COMFY_READY_TIMEOUT="1.5")
    started = time.monotonic()
    out = run({"image_base64": IMAGE})
    elapsed = time.monotonic() - started
    assert out["error_code"] == "COMFY_NOT_READY" and 1.4 < elapsed < 4
    assert "CUDA error" in out["logs_tail"]


def test_killed_mid_job_fails_fast_with_logs_and_refresh(comfy_double, use):
    use(comfy_double)
    (comfy_double.root / "comfy.log").write_text("loading model\nKilled\n")
    comfy_double.behaviour = Behaviour("crash", node_seconds=0.3)
    started = time.monotonic()
    out = run({"image_base64": IMAGE, "frames": 9})
    assert out["error_code"] == "COMFY_CRASHED" and out["refresh_worker"] is True
    assert "Killed" in out["logs_tail"] and time.monotonic() - started < 10


def test_stuck_job_times_out_is_removed_and_next_job_works(comfy_double, use):
    use(comfy_double, COMFY_EXEC_TIMEOUT="2")
    comfy_double.behaviour = Behaviour("hang")
    out = run({"image_base64": IMAGE, "frames": 9})
    assert out["error_code"] == "TIMEOUT"
    pid = comfy_double.calls.interrupts[-1]["prompt_id"]
    assert {"delete": [pid]} in comfy_double.calls.queue_deletes
    comfy_double.behaviour = Behaviour("success")
    assert run({"image_base64": IMAGE, "frames": 9})["status"] == "completed"


def test_dropped_socket_job_completes(comfy_double, use):
    use(comfy_double)
    comfy_double.behaviour = Behaviour("drop", node_seconds=0.15)
    out = run({"image_base64": IMAGE, "frames": 9})
    assert out["status"] == "completed" and out["frames"] == 9


def test_runpod_cancel_interrupts_comfy(comfy_double, use):
    """RunPod's /cancel cancels the handler's asyncio task: ComfyUI must be interrupted, files removed."""
    use(comfy_double)
    comfy_double.behaviour = Behaviour("hang")

    async def cancel_soon():
        task = asyncio.create_task(handler.handler({"id": "to-cancel", "input": {"image_base64": IMAGE, "frames": 9}}))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    deadline = time.monotonic() + 5
    while not comfy_double.calls.interrupts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert comfy_double.calls.interrupts and comfy_double.calls.interrupts[-1]["prompt_id"]
    while time.monotonic() < deadline and any((comfy_double.root / "input").rglob("*.png")):
        time.sleep(0.1)
    assert not any((comfy_double.root / "input").rglob("*.png"))


def test_unexpected_bug_is_internal_error_without_traceback(comfy_double, use, monkeypatch):
    use(comfy_double)

    def boom(*args, **kwargs):
        raise KeyError("secret-internal-detail")

    monkeypatch.setattr(handler, "generate", boom)
    out = run({"image_base64": IMAGE})
    assert out["error_code"] == "INTERNAL_ERROR" and "Traceback" not in out["error"]
    assert "secret-internal-detail" not in out["error"]


def test_misconfigured_runtime_setting_is_config_error(comfy_double, use):
    use(comfy_double, TENEXA_VAE_PRECISION="fp4")
    out = run({"image_base64": IMAGE, "frames": 9})
    assert out["error_code"] == "CONFIG_ERROR" and "TENEXA_VAE_PRECISION" in out["error"]
