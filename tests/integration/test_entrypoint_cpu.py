"""README's run command, scripts/serve_local.sh (entrypoint.sh with workstation defaults), against the real ComfyUI that
scripts/install_stack.py installed: it finds the install with no variable set, boots ComfyUI on CPU, serves the local
API from the install's own venv, answers test mode and a self-test, and takes ComfyUI down on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comfy_double import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_serve_local_serves_the_installed_stack(comfy_install, tmp_path):
    comfy_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFY_ROOT", "COMFY_PYTHON", "HANDLER_PYTHON", "ALLOW_CPU", "MODELS", "SERVE_API_LOCALLY")}
    # Only ports, log and volume are set (other tests run beside it); where the stack is found is the script's business.
    env.update({"COMFY_PORT": str(comfy_port), "RP_API_HOST": "127.0.0.1", "RP_API_PORT": str(api_port),
                "COMFY_LOG": str(tmp_path / "comfy.log"), "VOLUME_ROOT": str(tmp_path / "volume"),
                "COMFY_READY_TIMEOUT": "180", "RUNPOD_LOG_LEVEL": "WARN"})
    default_install = Path(env.get("HOME", "/root"), ".cache", "tenexa")
    if comfy_install.root != (default_install / "ComfyUI").resolve():  # a checkout named by COMFY_ROOT: pass it on
        env.update({"COMFY_ROOT": str(comfy_install.root), "COMFY_PYTHON": str(comfy_install.python),
                    "HANDLER_PYTHON": str(comfy_install.python)})
    out = open(tmp_path / "entrypoint.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "serve_local.sh")], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{api_port}"
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "entrypoint.log").read_text()[-3000:]
            try:
                requests.get(url + "/openapi.json", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() - started < 240, "local API not up after 240 s"
                time.sleep(0.5)
        test = requests.post(url + "/runsync", json={"input": {"test": True}}, timeout=30).json()
        assert test["status"] == "COMPLETED" and test["output"]["comfyui_up"] is True
        diag = requests.post(url + "/runsync", json={"input": {"diagnose": True, "selftest": True}}, timeout=180).json()
        assert diag["output"]["selftest"]["ok"] is True, diag
        assert diag["output"]["selftest"]["video"]["frames"] == 9
        log = (tmp_path / "entrypoint.log").read_text()
        assert f"cd {comfy_install.root} && {comfy_install.python} main.py" in log, "ComfyUI runs from the install"
        assert f"starting handler: {comfy_install.python} handler.py --rp_serve_api" in log, "so does the handler"
        assert "--cpu" in log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.close()
    assert proc.returncode is not None
    # nothing of ours keeps the ComfyUI port after shutdown
    time.sleep(0.5)
    try:
        requests.get(f"http://127.0.0.1:{comfy_port}/system_stats", timeout=1)
        alive = True
    except requests.RequestException:
        alive = False
    assert not alive, "ComfyUI outlived the entrypoint"
