"""send_test.py as a subprocess against the local stand-in of RunPod's production API."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import pytest
from client_harness import (
    FAILED_REPLY,
    SCRIPTS,
    SECRET_KEY,
    free_port,
    interruptible,
    probe_mp4,
    run_script,
    script_env,
    success_output,
    success_statuses,
)
from runpod_standin import Scenario

FAST = ("--poll", "0.05")


def assert_secret_hidden(result: subprocess.CompletedProcess) -> None:
    assert SECRET_KEY not in result.stdout and SECRET_KEY not in result.stderr


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_polling_success_writes_mp4_and_prints_table(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    server = standin(Scenario(statuses=success_statuses(tiny_mp4), api_key=SECRET_KEY))
    out = tmp_path / "video" / "clip.mp4"
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--output", str(out),
                        "--seed", "42", "--steps", "4", "--cfg", "1.5", "--prompt", "a cat", *FAST)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == tiny_mp4
    assert probe_mp4(out) == {"frames": 8, "width": 64, "height": 48}
    for label, value in (("seed", "42"), ("frames", "8"), ("fps", "16"), ("duration", "0.50 s"), ("resolution", "64x48"),
                         ("size", "KiB"), ("timings", "execution 2.5s"), ("saved", "sha256 verified")):
        assert any(line.split()[:1] == [label] and value in line for line in result.stdout.splitlines()), (label, result.stdout)
    # progress, queue state and elapsed time went to stderr as plain lines (not a TTY)
    assert "IN_QUEUE" in result.stderr and "sampling high" in result.stderr and "step 8/10" in result.stderr
    assert "80%" in result.stderr and "\r" not in result.stderr
    assert "workers" in result.stderr  # /health was asked while queued
    # the request: /run then GET /status polls, the key as a Bearer header, only the flags given
    run = next(r for r in server.requests if r.path.endswith("/run"))
    assert run.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    sent = run.body["input"]
    assert base64.b64decode(sent["image_base64"]) == tiny_png.read_bytes()
    assert {k: v for k, v in sent.items() if k != "image_base64"} == {"prompt": "a cat", "seed": 42, "steps": 4, "cfg": 1.5}
    assert server.paths("GET").count("/v2/standin-ep/status/job-1") == len(success_statuses(tiny_mp4))  # one poll per reply
    assert_secret_hidden(result)


def test_every_generate_flag_reaches_the_input(tiny_png) -> None:
    result = run_script("send_test.py", "ep", "--image", str(tiny_png), "--end-image", "https://example.com/end.png",
                        "--prompt", "p", "--negative-prompt", "n", "--seed", "1", "--steps", "2", "--cfg", "3.5",
                        "--frames", "17", "--width", "480", "--height", "320", "--fps", "12", "--shift", "5",
                        "--scheduler", "unipc", "--lora-high", "h.safetensors", "--lora-low", "l.safetensors",
                        "--lora-high-strength", "0.8", "--lora-low-strength", "0.6", "--delivery", "url",
                        "--set", "extra={\"a\": 1}", "--set", "tag=plain", "--dry-run")
    assert result.returncode == 0, result.stderr
    sent = json.loads(result.stdout)["input"]
    assert sent["image_base64"].endswith("base64 chars>")
    assert sent == {
        "image_base64": sent["image_base64"], "end_image_url": "https://example.com/end.png", "workflow": "flf2v",
        "prompt": "p", "negative_prompt": "n", "seed": 1, "steps": 2, "cfg": 3.5, "frames": 17, "width": 480,
        "height": 320, "fps": 12, "shift": 5.0, "scheduler": "unipc", "lora_high": "h.safetensors",
        "lora_low": "l.safetensors", "lora_high_strength": 0.8, "lora_low_strength": 0.6, "output": "url",
        "extra": {"a": 1}, "tag": "plain"}


def test_url_delivery_downloads_without_the_api_key(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    output = success_output(tiny_mp4, video_url=None, object_key="tenexa/x.mp4", expires_at="2030-01-01T00:00:00Z")
    del output["video_base64"]
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}, {"status": "COMPLETED", "output": output}],
                              files={"/bucket/x.mp4": tiny_mp4}))
    output["video_url"] = f"{server.root}/bucket/x.mp4?X-Amz-Signature=SIGNATURE"
    out = tmp_path / "url.mp4"
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--delivery", "url",
                        "--output", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == tiny_mp4
    download = next(r for r in server.requests if r.path == "/bucket/x.mp4")
    assert "Authorization" not in download.headers
    assert "video url" in result.stdout and "SIGNATURE" not in result.stdout + result.stderr


def test_runsync_final_reply(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    server = standin(Scenario(runsync_reply={"status": "COMPLETED", "output": success_output(tiny_mp4)}))
    out = tmp_path / "sync.mp4"
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--sync", "--output", str(out),
                        "--timeout", "120", *FAST)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == tiny_mp4
    runsync = next(r for r in server.requests if r.path.endswith("/runsync"))
    assert runsync.query["wait"] == ["120000"]
    assert not any("/status/" in path for path in server.paths())


def test_runsync_not_final_then_polls(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    server = standin(Scenario(runsync_reply={"status": "IN_PROGRESS"}, statuses=success_statuses(tiny_mp4)[3:]))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--sync",
                        "--output", str(tmp_path / "x.mp4"), *FAST)
    assert result.returncode == 0, result.stderr
    assert any("/status/job-1" in path for path in server.paths("GET"))


def test_failed_job_exits_1_with_code_message_and_logs(standin, tiny_png) -> None:
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}, FAILED_REPLY], api_key=SECRET_KEY))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), *FAST)
    assert result.returncode == 1, result.stderr
    assert "code     MODEL_MISSING" in result.stdout
    assert "not found in diffusion_models" in result.stdout
    assert "| [ComfyUI] FileNotFoundError" in result.stdout
    assert "Traceback" not in result.stderr
    assert_secret_hidden(result)


@pytest.mark.parametrize("status, code", [("TIMED_OUT", "TIMED_OUT"), ("CANCELLED", "CANCELLED")])
def test_other_final_states_exit_1(standin, tiny_png, status, code) -> None:
    server = standin(Scenario(statuses=[{"status": "IN_PROGRESS"}, {"status": status}]))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), *FAST)
    assert result.returncode == 1
    assert f"code     {code}" in result.stdout


def test_completed_without_video_exits_1(standin, tiny_png) -> None:
    server = standin(Scenario(statuses=[{"status": "COMPLETED"}]))  # e.g. a result too big for RunPod
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), *FAST)
    assert result.returncode == 1
    assert "NO_OUTPUT" in result.stdout


def test_timeout_cancels_and_exits_2(standin, tiny_png) -> None:
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}, {"status": "IN_PROGRESS", "output": {"phase": "sampling_high", "percent": 5}}]))
    started = time.monotonic()
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--timeout", "1", *FAST)
    assert result.returncode == 2
    assert time.monotonic() - started < 20
    assert_one_line_error(result, "--timeout 1s", "cancelled job job-1")
    assert "/v2/standin-ep/cancel/job-1" in server.paths("POST")


def test_timeout_with_no_cancel_leaves_job(standin, tiny_png) -> None:
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}]))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--timeout", "0.5", "--no-cancel", *FAST)
    assert result.returncode == 2
    assert_one_line_error(result, "left running")
    assert not any("/cancel/" in path for path in server.paths())


def test_unauthorized_exits_2_with_one_line(standin, tiny_png) -> None:
    server = standin(Scenario(api_key="the-right-key"))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), *FAST)
    assert result.returncode == 2
    assert_one_line_error(result, "HTTP 401", "RUNPOD_API_KEY")
    assert_secret_hidden(result)


def test_missing_api_key_is_a_usage_error(tiny_png) -> None:
    result = run_script("send_test.py", "abc123", "--image", str(tiny_png), env=script_env())
    assert result.returncode == 2
    assert_one_line_error(result, "RUNPOD_API_KEY")


def test_unknown_endpoint_exits_2(standin, tiny_png) -> None:
    server = standin(Scenario())
    result = run_script("send_test.py", f"{server.root}/v2/nope", "--image", str(tiny_png), *FAST)
    assert result.returncode == 2
    assert_one_line_error(result, "endpoint not found")


def test_unreachable_endpoint_exits_2_without_traceback(tiny_png) -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/gone"
    result = run_script("send_test.py", url, "--image", str(tiny_png), *FAST)
    assert result.returncode == 2
    assert_one_line_error(result, "cannot reach", "Connection refused")
    assert result.stdout == ""


def test_rate_limit_is_retried(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    server = standin(Scenario(statuses=success_statuses(tiny_mp4)[-2:], rate_limit_first=2))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--output", str(tmp_path / "r.mp4"), *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("rate limited") == 2


def test_missing_image_and_bad_arguments_exit_2(tmp_path) -> None:
    missing = run_script("send_test.py", "ep", "--image", str(tmp_path / "nope.png"))
    assert missing.returncode == 2
    assert_one_line_error(missing, "image not found")
    bad = run_script("send_test.py", "ep", "--image", "x.png", "--steps", "many")
    assert bad.returncode == 2 and "invalid int value" in bad.stderr


def test_oversized_request_is_refused_before_sending(tmp_path, standin) -> None:
    server = standin(Scenario())
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (8 * 1024 * 1024))  # 8 MiB → ~10.7 MiB of base64
    result = run_script("send_test.py", server.endpoint_url, "--image", str(big))
    assert result.returncode == 2
    assert_one_line_error(result, "at most 10.00 MiB")
    assert server.requests == []


def test_help_documents_exit_codes() -> None:
    result = run_script("send_test.py", "--help")
    assert result.returncode == 0
    for fragment in ("exit codes:", "0    success", "1    the job failed", "2    usage, network", "130"):
        assert fragment in result.stdout


def test_runs_from_any_working_directory(tiny_png, tmp_path) -> None:
    result = run_script("send_test.py", "ep", "--image", str(tiny_png), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# --- --json ---------------------------------------------------------------------------------------


def test_json_success_shape(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    server = standin(Scenario(statuses=success_statuses(tiny_mp4), api_key=SECRET_KEY))
    out = tmp_path / "j.mp4"
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--output", str(out), "--json", *FAST)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["id"] == "job-1" and reply["status"] == "COMPLETED" and reply["executionTime"] == 3400
    assert reply["output"]["video_base64"] == f"<{len(base64.b64encode(tiny_mp4))} base64 chars>"
    assert reply["output"]["seed"] == 42 and reply["output"]["timings"]["total_s"] == 2.9
    assert out.read_bytes() == tiny_mp4
    assert_secret_hidden(result)


def test_json_failure_shape(standin, tiny_png) -> None:
    server = standin(Scenario(statuses=[FAILED_REPLY]))
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--json", *FAST)
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["status"] == "FAILED" and reply["error"].startswith("MODEL_MISSING: ")
    assert reply["output"]["error_code"] == "MODEL_MISSING"


def test_json_client_error_shape(tiny_png) -> None:
    result = run_script("send_test.py", f"http://127.0.0.1:{free_port()}/v2/gone", "--image", str(tiny_png), "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout) == {"client_error": {"kind": "network", "message": json.loads(result.stdout)["client_error"]["message"], "job_id": None}}
    assert "cannot reach" in json.loads(result.stdout)["client_error"]["message"]


# --- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_cancels_the_remote_job(standin, tiny_png) -> None:
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}, {"status": "IN_PROGRESS", "output": {"phase": "sampling_low", "percent": 60}}],
                              api_key=SECRET_KEY))
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "send_test.py"), server.endpoint_url, "--image", str(tiny_png), *FAST],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(RUNPOD_API_KEY=SECRET_KEY), preexec_fn=interruptible)
    try:
        assert server.wait_for_status_poll(timeout=20), "the client never polled /status"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "/v2/standin-ep/cancel/job-1" in server.paths("POST")
    assert "cancelled job job-1" in stderr and "Traceback" not in stderr
    assert SECRET_KEY not in stdout + stderr


def test_output_option_flags_and_the_last_frame(standin, tiny_mp4, tiny_png, tmp_path) -> None:
    frame = tiny_png.read_bytes()
    output = success_output(tiny_mp4, last_frame_base64=base64.b64encode(frame).decode())
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}, {"status": "COMPLETED", "output": output}]))
    out, last = tmp_path / "clip.webm", tmp_path / "last.png"
    result = run_script("send_test.py", server.endpoint_url, "--image", str(tiny_png), "--resolution", "720p",
                        "--aspect-ratio", "9:16", "--interpolate", "2", "--interpolator", "rife", "--codec", "vp9",
                        "--quality", "30", "--output", str(out), "--last-frame", str(last), *FAST)
    assert result.returncode == 0, result.stderr
    sent = next(r for r in server.requests if r.path.endswith("/run")).body["input"]
    assert {k: v for k, v in sent.items() if k != "image_base64"} == {
        "resolution": "720p", "aspect_ratio": "9:16", "interpolate": 2, "interpolator": "rife", "codec": "vp9",
        "quality": 30, "return_last_frame": True}
    assert out.read_bytes() == tiny_mp4 and last.read_bytes() == frame
    assert any(line.split()[:2] == ["last", "frame"] and str(last) in line for line in result.stdout.splitlines())
    dry = run_script("send_test.py", "ep", "--image", str(tiny_png), "--quality", "medium", "--dry-run")
    assert json.loads(dry.stdout)["input"]["quality"] == "medium"
