"""Helpers for the client-script tests: a tiny MP4, canned worker replies, the SDK dev server's stand-in
handler, and ``run_script``, which runs a script as a subprocess the way a user does.

A module of its own (not conftest) so test files can import it by a name no other test folder uses."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # runpod_standin, also under --import-mode=importlib


REPO = HERE.parent.parent
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))  # unit tests import _client directly

SECRET_KEY = "rpa_TESTSECRET_5f3c9a7e1d"  # must never appear in any output


def make_mp4(frames: int = 8, width: int = 64, height: int = 48, fps: int = 16) -> bytes:
    import av  # tests may use PyAV; the scripts may not
    from PIL import Image

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for index in range(frames):
            image = Image.new("RGB", (width, height), (index * 30 % 256, 80, 160))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def probe_mp4(path: Path) -> dict[str, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {"frames": frames, "width": stream.codec_context.width, "height": stream.codec_context.height}


def success_output(mp4: bytes, **extra: object) -> dict[str, object]:
    import hashlib

    output: dict[str, object] = {
        "status": "completed", "video_base64": base64.b64encode(mp4).decode(), "seed": 42, "fps": 16, "frames": 8,
        "duration_sec": 0.5, "width": 64, "height": 48, "workflow": "wan22_i2v", "prompt_id": "p-1",
        "metadata": {"filename": "tenexa_00001.mp4", "size_mb": round(len(mp4) / 1e6, 4), "sha256": hashlib.sha256(mp4).hexdigest()},
        "timings": {"upload_s": 0.1, "queue_wait_s": 0.0, "execution_s": 2.5, "encode_s": 0.2, "total_s": 2.9},
    }
    output.update(extra)
    return output


def progress(phase: str, percent: float, step: int | None = None, total: int | None = None) -> dict[str, object]:
    return {"status": "IN_PROGRESS", "delayTime": 1200,
            "output": {"phase": phase, "step": step, "total": total, "percent": percent, "eta_s": 3.0 if step else None,
                       "node": "WanVideoSampler" if step else None}}


def success_statuses(mp4: bytes) -> list[dict[str, object]]:
    return [
        {"status": "IN_QUEUE"},
        {"status": "IN_PROGRESS", "delayTime": 1200},
        progress("uploading", 2.0),
        progress("sampling_high", 30.0, 3, 10),
        progress("sampling_low", 80.0, 8, 10),
        {"status": "IN_PROGRESS", "output": "some other progress text"},
        progress("encoding", 95.0),
        {"status": "COMPLETED", "delayTime": 1200, "executionTime": 3400, "output": success_output(mp4)},
    ]


FAILED_REPLY = {
    "status": "FAILED", "delayTime": 900, "executionTime": 1500,
    "error": "MODEL_MISSING: Wan2_2-I2V-A14B-HIGH.safetensors not found in diffusion_models",
    "output": {"status": "failed", "error_code": "MODEL_MISSING",
               "error_message": "Wan2_2-I2V-A14B-HIGH.safetensors not found in diffusion_models",
               "logs_tail": ["[ComfyUI] loading workflow", "[ComfyUI] FileNotFoundError: Wan2_2-I2V-A14B-HIGH.safetensors"]},
}


def interruptible() -> None:
    """Popen ``preexec_fn``: the client starts with Ctrl-C's default action, as it does in a terminal.

    A shell that runs a command in the background without job control (``cmd &`` in a script, as CI or nohup may)
    starts it with SIGINT ignored, and children inherit that; Python then never raises KeyboardInterrupt, so a
    Ctrl-C test would measure how pytest was launched instead of the client."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def script_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RUNPOD_API_KEY", "TENEXA_ENDPOINT")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_script(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run scripts/<name> like a user does: a fresh interpreter, separate stdout and stderr."""
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env or script_env(RUNPOD_API_KEY=SECRET_KEY), cwd=str(cwd or REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the real SDK dev server with a stand-in handler -------------------------------------------------

STUB_HANDLER = textwrap.dedent('''
    """Stand-in Tenexa handler for the client tests: returns the documented shapes, no ComfyUI."""
    import base64, hashlib, os, time
    from pathlib import Path

    import runpod

    MP4 = Path(os.environ["STUB_MP4"]).read_bytes()
    MARKER = Path(os.environ["STUB_MARKER"])


    def handler(job):
        data = job["input"]
        if data.get("test"):
            return {"status": "completed", "ok": True, "comfyui_up": True, "disk_free_gb": 41.5,
                    "volume_mounted": False, "handler_version": "stub-1"}
        if data.get("diagnose"):
            report = {
                "status": "completed", "comfyui_reachable": True,
                "system": {"comfyui_version": "0.8.0", "pytorch_version": "2.9.1+cu128",
                           "devices": [{"name": "cuda:0 NVIDIA H100 80GB HBM3", "type": "cuda",
                                        "vram_total": 85045821440, "vram_free": 84300000000}]},
                "disk": {"path": "/", "free_gb": 41.5, "total_gb": 100.0}, "volume_mounted": False,
                "models": {"diffusion_models": {"local": ["Wan2_2-I2V-A14B-HIGH.safetensors", "Wan2_2-I2V-A14B-LOW.safetensors"],
                                                "volume": []}},
                "manifest": {"present": ["wan22_high", "wan22_low", "umt5", "vae"], "missing": []},
                "node_check": {"required_available": ["WanVideoModelLoader", "WanVideoSampler"], "required_missing": []},
                "workflow_checks": {"new_Wan22_api.json": {"exists": True, "nodes": 28, "missing_nodes": [],
                                                           "missing_models": {"diffusion_models": []}, "valid": True, "errors": []}},
                "settings": {"attention_mode": "sdpa", "base_precision": "bf16", "quantization": "fp8_e4m3fn",
                             "blocks_to_swap": 0, "vae_precision": "bf16"},
                "healthy": True,
            }
            if data.get("selftest"):
                report["selftest"] = {"ok": False, "error": "GENERATION_ERROR: stub selftest always fails"}
                report["healthy"] = False
            return report
        if data.get("prompt") == "fail":
            return {"error": "MODEL_MISSING: Wan2_2-I2V-A14B-HIGH.safetensors not found", "error_code": "MODEL_MISSING"}
        if data.get("prompt") == "sleep":
            MARKER.write_text("started")
            time.sleep(float(data.get("seconds", 4)))
            return {"status": "completed", "slept": True}
        if not (data.get("image_base64") or data.get("image_url")):
            return {"error": "NO_IMAGE: image_base64 or image_url is required"}
        return {"status": "completed", "video_base64": base64.b64encode(MP4).decode(), "seed": data.get("seed", 7),
                "fps": data.get("fps", 16), "frames": 8, "duration_sec": 0.5, "width": 64, "height": 48,
                "workflow": data.get("workflow", "wan22_i2v"), "prompt_id": "stub",
                "metadata": {"filename": "stub.mp4", "size_mb": len(MP4) / 1e6, "sha256": hashlib.sha256(MP4).hexdigest()},
                "timings": {"upload_s": 0.0, "queue_wait_s": 0.0, "execution_s": 0.1, "encode_s": 0.0, "total_s": 0.1},
                "echo": {k: v for k, v in data.items() if not k.endswith("_base64")}}


    runpod.serverless.start({"handler": handler})
''')


class DevServer:
    def __init__(self, url: str, marker: Path, process: subprocess.Popen):
        self.url, self.marker, self.process = url, marker, process


