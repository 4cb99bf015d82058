"""diagnose.py as a subprocess against the RunPod stand-in, plus the report renderer on odd shapes."""

from __future__ import annotations

import json

import pytest
from client_harness import SECRET_KEY, free_port, run_script
from runpod_standin import Scenario

FAST = ("--poll", "0.05")

FULL_REPORT = {
    "status": "completed", "comfyui_reachable": True,
    "system": {"comfyui_version": "0.8.0", "pytorch_version": "2.9.1+cu128",
               "devices": [{"name": "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync", "type": "cuda",
                            "vram_total": 85045821440, "vram_free": 84300000000}]},
    "disk": {"root": {"free_gb": 41.5, "total_gb": 100.0}, "volume": {"free_gb": 812.0}},
    "volume_mounted": True,
    "models": {"diffusion_models": {"local": [], "volume": ["Wan2_2-I2V-A14B-HIGH.safetensors"]},
               "loras": {"local": ["tenexa.safetensors"], "volume": []}},
    "manifest": {"present": ["wan22_high"], "missing": [{"name": "wan22_low", "folder": "diffusion_models",
                                                         "file": "Wan2_2-I2V-A14B-LOW.safetensors"}]},
    "node_check": {"required_available": ["WanVideoSampler"], "required_missing": ["WanVideoEnhancedBlockSwap"]},
    "workflow_checks": {
        "new_Wan22_api.json": {"exists": True, "nodes": 28, "missing_nodes": [], "valid": True, "errors": [],
                               "missing_models": {"diffusion_models": []}},
        "new_Wan22_flf2v_api.json": {"exists": True, "nodes": 30, "missing_nodes": ["WanVideoEnhancedBlockSwap"],
                                     "missing_models": {"diffusion_models": ["Wan2_2-I2V-A14B-LOW.safetensors"]},
                                     "valid": False, "errors": ["node 12: unknown class"]}},
    "settings": {"attention_mode": "sdpa", "blocks_to_swap": 20},
    "selftest": {"ok": True, "seconds": 12.5, "video": {"frames": 5, "fps": 16, "width": 64, "height": 64, "bytes": 2048}},
    "healthy": False,
    "something_new": {"x": 1},
}


def completed(output: dict) -> list:
    return [{"status": "IN_QUEUE"}, {"status": "IN_PROGRESS"}, {"status": "COMPLETED", "output": output}]


def test_test_mode_ok(standin) -> None:
    output = {"status": "completed", "ok": True, "comfyui_up": True, "disk_free_gb": 41.5, "volume_mounted": False,
              "handler_version": "1.2.3"}
    server = standin(Scenario(statuses=completed(output), api_key=SECRET_KEY))
    result = run_script("diagnose.py", server.endpoint_url, "--test", *FAST)
    assert result.returncode == 0, result.stderr
    assert "Health check: OK" in result.stdout and "41.5 GB" in result.stdout and "1.2.3" in result.stdout
    assert server.requests[0].body == {"input": {"test": True}}
    assert SECRET_KEY not in result.stdout + result.stderr


def test_test_mode_not_ok_exits_1(standin) -> None:
    server = standin(Scenario(statuses=completed({"status": "completed", "ok": False, "comfyui_up": False})))
    result = run_script("diagnose.py", server.endpoint_url, "--test", *FAST)
    assert result.returncode == 1
    assert "Health check: DEGRADED" in result.stdout


def test_full_report_sections_and_degraded_verdict(standin) -> None:
    server = standin(Scenario(statuses=completed(FULL_REPORT)))
    result = run_script("diagnose.py", server.endpoint_url, "--selftest", *FAST)
    assert result.returncode == 1, result.stderr
    assert server.requests[0].body == {"input": {"diagnose": True, "selftest": True}}
    text = result.stdout
    for section in ("ComfyUI", "GPU and VRAM", "Disk and volume", "Models", "Nodes", "Workflows", "Effective settings",
                    "Selftest", "Other", "Verdict: DEGRADED"):
        assert f"\n{section}" in text, section
    assert "NVIDIA H100" in text and "78.51 GiB / 79.21 GiB" in text
    assert "MISSING  wan22_low  (diffusion_models/Wan2_2-I2V-A14B-LOW.safetensors)" in text
    assert "FAIL  new_Wan22_flf2v_api.json" in text and "OK    new_Wan22_api.json" in text
    assert "missing nodes: WanVideoEnhancedBlockSwap" in text and "error: node 12: unknown class" in text
    assert "blocks_to_swap" in text and "something_new" in text
    assert "- workflow new_Wan22_flf2v_api.json invalid" in text
    assert "- 1 model file(s) from the manifest missing" in text


def test_wrong_sizes_hashes_and_host_memory_are_shown(standin) -> None:
    report = {**FULL_REPORT, "healthy": False,
              "manifest": {"present": [], "missing": [], "ok": False, "verified": ["vae"], "unverifiable": ["t5"],
                           "wrong_size": [{"name": "lora_high", "path": "/v/models/loras/x.safetensors", "size": 700000,
                                           "expected": 1226977424}],
                           "hash_mismatch": [{"name": "vae", "path": "/v/models/vae/v.safetensors", "expected": "ab" * 32}]},
              "host_memory": {"ram_total_gb": 31.2, "need_gb": 47.7, "ok": False,
                              "parts_gb": {"diffusion_models": 28.6, "text_encoders": 11.4},
                              "reason": "host RAM 31.2 GB is below the 47.7 GB that TENEXA_LOAD_DEVICE=offload_device needs"}}
    server = standin(Scenario(statuses=completed(report)))
    result = run_script("diagnose.py", server.endpoint_url, "--verify-hashes", *FAST)
    assert result.returncode == 1, result.stderr
    assert server.requests[0].body == {"input": {"diagnose": True, "verify_hashes": True}}
    text = result.stdout
    assert "SIZE     lora_high  (/v/models/loras/x.safetensors: 683.59 KiB, expected 1.14 GiB)" in text
    assert "SHA256   vae  (/v/models/vae/v.safetensors does not match the manifest)" in text
    assert "\nHost memory" in text and "31.2 GB / 47.7 GB  FAIL" in text and "diffusion_models" in text
    assert "- 1 model file(s) with the wrong size" in text and "- 1 model file(s) with the wrong sha256" in text
    assert "- not enough host RAM: host RAM 31.2 GB is below" in text


@pytest.mark.parametrize("report, code", [
    ({"status": "completed", "comfyui_reachable": True, "healthy": True}, 0),
    ({"status": "completed", "comfyui_reachable": True}, 0),  # no verdict from the worker, nothing wrong found
    ({"status": "completed", "comfyui_reachable": False}, 1),
    ({"status": "completed", "selftest": {"ok": False, "error": "GENERATION_ERROR: boom"}}, 1),
    ({"status": "completed", "healthy": "maybe", "system": "not a dict", "models": [1, 2], "manifest": None,
      "workflow_checks": {"w.json": "weird"}, "settings": [], "disk": 12}, 0),
])
def test_verdict_and_defensive_rendering(standin, report, code) -> None:
    server = standin(Scenario(statuses=completed(report)))
    result = run_script("diagnose.py", server.endpoint_url, *FAST)
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Verdict:" in result.stdout


def test_json_full_report(standin) -> None:
    server = standin(Scenario(statuses=completed(FULL_REPORT)))
    result = run_script("diagnose.py", server.endpoint_url, "--json", *FAST)
    assert result.returncode == 1  # healthy: false
    reply = json.loads(result.stdout)
    assert reply["status"] == "COMPLETED" and reply["output"] == FULL_REPORT


def test_diagnose_job_failed_exits_1(standin) -> None:
    server = standin(Scenario(statuses=[{"status": "FAILED", "error": "COMFY_NOT_READY: ComfyUI did not start in 120 s"}]))
    result = run_script("diagnose.py", server.endpoint_url, *FAST)
    assert result.returncode == 1
    assert "COMFY_NOT_READY" in result.stdout


def test_unreachable_exits_2(tmp_path) -> None:
    result = run_script("diagnose.py", f"http://127.0.0.1:{free_port()}/v2/gone", "--test")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [result.stderr.strip()]


def test_never_answers_times_out_with_2(standin) -> None:
    server = standin(Scenario(statuses=[{"status": "IN_QUEUE"}]))  # no worker ever picks it up
    result = run_script("diagnose.py", server.endpoint_url, "--timeout", "0.5", *FAST)
    assert result.returncode == 2
    assert "cancelled job job-1" in result.stderr


def test_help_documents_exit_codes() -> None:
    result = run_script("diagnose.py", "--help")
    assert result.returncode == 0
    assert "0    healthy" in result.stdout and "1    the worker answered but is degraded" in result.stdout
    assert "2    usage, network" in result.stdout


UNREACHABLE_COMFY_REPORT = {  # the shape tenexa.diagnostics builds when ComfyUI is down
    "status": "completed", "handler_version": "dev", "comfyui_reachable": False, "comfyui_url": "http://127.0.0.1:8188",
    "system": {"error": "ConnectionError"},
    "disk": {"comfy_root": {"path": "/ComfyUI", "free_gb": 41.5, "total_gb": 100.0}, "volume": {"path": "/", "free_gb": 41.5}},
    "volume_mounted": False, "models": {"diffusion_models": {"local": [], "volume": []}},
    "manifest": {"present": [], "missing": []},
    "node_check": {"required_available": [], "required_missing": [], "checked": False},
    "workflow_checks": {"new_Wan22_api.json": {"workflow": "wan22_i2v", "exists": True, "nodes": 28, "valid": None,
                                               "errors": ["ComfyUI unreachable: not checked against live /object_info"]}},
    "settings": {"attention_mode": "auto"}, "selftest": {"ok": False, "error": "ComfyUI unreachable"},
    "healthy": False, "seconds": 2.01,
}


def test_report_when_comfyui_is_down(standin) -> None:
    server = standin(Scenario(statuses=completed(UNREACHABLE_COMFY_REPORT)))
    result = run_script("diagnose.py", server.endpoint_url, *FAST)
    assert result.returncode == 1
    text = result.stdout
    assert "reachable              FAIL" in text and "error                  ConnectionError" in text
    assert "not checked (ComfyUI unreachable)" in text and "?     new_Wan22_api.json" in text
    assert "free                   41.5 GB" in text and "diagnose took 2.0s" in text
    assert "- ComfyUI not reachable" in text and "- selftest failed" in text
    assert "\nOther" not in text
