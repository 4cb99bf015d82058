"""Both scripts against the real SDK dev server (``--rp_serve_api``) running a stand-in handler.

This pins the local API's real route shapes: /run does not execute, POST /status/{id} runs the job,
/runsync runs it inline, no /cancel, FAILED bodies carry only ``error``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from client_harness import SCRIPTS, interruptible, probe_mp4, run_script, script_env


def test_generate_via_run_and_status(dev_server, tiny_mp4, tiny_png, tmp_path) -> None:
    out = tmp_path / "local.mp4"
    result = run_script("send_test.py", dev_server.url, "--image", str(tiny_png), "--output", str(out), "--seed", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert probe_mp4(out) == {"frames": 8, "width": 64, "height": 48}
    assert "local API" in result.stderr and "COMPLETED" in result.stderr
    assert "seed        5" in result.stdout and "sha256 verified" in result.stdout


def test_generate_via_runsync_json(dev_server, tiny_png, tmp_path) -> None:
    out = tmp_path / "sync.mp4"
    result = run_script("send_test.py", dev_server.url + "/runsync", "--image", str(tiny_png), "--sync", "--json",
                        "--output", str(out), "--workflow", "wan22_i2v", "--frames", "17")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["id"].startswith("test-") and reply["status"] == "COMPLETED"
    assert reply["output"]["echo"] == {"workflow": "wan22_i2v", "frames": 17}
    assert reply["output"]["video_base64"].endswith("base64 chars>")
    assert probe_mp4(out)["frames"] == 8


def test_failed_job_exits_1_and_prints_code(dev_server, tiny_png) -> None:
    result = run_script("send_test.py", dev_server.url, "--image", str(tiny_png), "--prompt", "fail")
    assert result.returncode == 1, result.stderr
    assert "code     MODEL_MISSING" in result.stdout and "not found" in result.stdout


def test_no_api_key_needed_and_none_sent(dev_server, tiny_png, tmp_path) -> None:
    result = run_script("send_test.py", dev_server.url, "--image", str(tiny_png), "--output", str(tmp_path / "k.mp4"),
                        env=script_env())
    assert result.returncode == 0, result.stderr


def test_diagnose_test_mode(dev_server) -> None:
    result = run_script("diagnose.py", dev_server.url, "--test")
    assert result.returncode == 0, result.stderr
    assert "Health check: OK" in result.stdout and "stub-1" in result.stdout


def test_diagnose_full_report_healthy(dev_server) -> None:
    result = run_script("diagnose.py", dev_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verdict: HEALTHY" in result.stdout and "NVIDIA H100" in result.stdout


def test_diagnose_selftest_failure_is_degraded(dev_server) -> None:
    result = run_script("diagnose.py", dev_server.url, "--selftest", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["output"]["selftest"]["ok"] is False


def test_ctrl_c_on_local_api_says_cancel_is_unsupported(dev_server, tiny_png) -> None:
    dev_server.marker.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "send_test.py"), dev_server.url, "--image", str(tiny_png),
                                "--prompt", "sleep", "--set", "seconds=2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(), preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 20
        while not dev_server.marker.exists():  # the handler is now running inside POST /status
            assert time.monotonic() < deadline, "the handler never started"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "does not support cancel" in stderr and "Traceback" not in stderr
