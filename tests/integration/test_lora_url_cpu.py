"""A LoRA by URL on the real ComfyUI: downloaded from a local HTTP server, checked, cached where ComfyUI lists
LoRAs, picked up by the running ComfyUI without a restart, and applied by the HIGH and LOW experts' loaders.

The LoRA is ``tiny_wan.tiny_lora`` (rank 4 on every block's self-attention, dim 192) written by the real
``safetensors`` library in ComfyUI's interpreter, so the header parser is checked against the real writer too.
Selected by ``pytest -k "lora and url"``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import av
import pytest
import requests
from url_server import UrlServer

from tenexa import loras
from tenexa.comfy import ComfyClient
from tenexa.generate import generate
from tenexa.lora_cache import LoraCache

from .test_wan_cpu import FRAMES, SIZE, job_input

HERE = Path(__file__).resolve().parent
WRITE_LORA = """
import json, sys
sys.path.insert(0, sys.argv[1])
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_wan import tiny_lora
save_file({k: v.contiguous() for k, v in tiny_lora(seed=901).items()}, sys.argv[2])
with safe_open(sys.argv[2], "pt") as f:
    print(json.dumps({k: list(f.get_slice(k).get_shape()) for k in f.keys()}))
"""


@pytest.fixture(scope="module")
def url_lora(comfy_install, tmp_path_factory) -> tuple[bytes, dict[str, list[int]]]:
    """(file bytes, {tensor: shape} as the safetensors library reads them)."""
    path = tmp_path_factory.mktemp("url-lora") / "style.safetensors"
    proc = subprocess.run([str(comfy_install.python), "-c", WRITE_LORA, str(HERE), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path.read_bytes(), json.loads(proc.stdout)


def listed_loras(url: str) -> list[str]:
    info = requests.get(f"{url}/object_info/WanVideoLoraSelectMulti", timeout=30).json()
    return info["WanVideoLoraSelectMulti"]["input"]["required"]["lora_0"][0]


def test_header_parser_agrees_with_the_safetensors_library(url_lora):
    data, shapes = url_lora
    length = int.from_bytes(data[:8], "little")
    tensors = loras.parse_header(data[8:8 + length], "lora")
    loras.check_layout(tensors, len(data) - 8 - length, "lora")
    assert {name: list(t.shape) for name, t in tensors.items()} == shapes
    assert loras.check_wan_lora(tensors, 192, "lora").block_modules == 120


def test_generate_with_a_lora_url_on_cpu(comfy_server, cpu_settings, tiny_models, test_prompt, url_lora):
    data, _ = url_lora
    sha = hashlib.sha256(data).hexdigest()
    cache_dir = Path(tiny_models.models_dir) / "loras" / "tenexa-url"  # a folder in the loras path ComfyUI was started with
    settings = replace(cpu_settings, allow_private_urls=True, lora_model_dim=192, lora_cache_dir=cache_dir)
    name = f"tenexa-url/{sha}.safetensors"
    assert name not in listed_loras(comfy_server.url)
    log_start = comfy_server.log_path.stat().st_size

    with UrlServer() as srv:
        srv.routes["/style.safetensors"] = srv.body(data)
        job = {**job_input("wan22_i2v", test_prompt),
               "loras": [{"url": srv.url("/style.safetensors"), "strength": 0.8, "expert": "both"}]}
        response = generate(f"it-lora-url-{uuid.uuid4().hex[:6]}", job, settings=settings, client=ComfyClient(settings.comfy_url))
    assert response["status"] == "completed", response
    assert srv.hits("/style.safetensors") == 1
    assert (response["frames"], response["width"], response["height"]) == (FRAMES, SIZE, SIZE)
    video = base64.b64decode(response["video_base64"])
    with av.open(io.BytesIO(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == FRAMES
    assert [(u["expert"], u["slot"], u["name"], u["strength"]) for u in response["used"]["loras"]] == [
        ("high", 1, name, 0.8), ("low", 1, name, 0.8)]

    # The running ComfyUI lists the new file (no restart), and both experts' LoRA nodes loaded it.
    assert name in listed_loras(comfy_server.url)
    log = comfy_server.log_path.read_bytes()[log_start:].decode("utf-8", errors="replace")  # st_size counts bytes, not characters
    assert log.count(f"Loading LoRA: tenexa-url/{sha} with strength: 0.8") == 2, log[-3000:]
    assert (cache_dir / f"{sha}.safetensors").read_bytes() == data
    assert LoraCache(cache_dir, limit_bytes=10**9, keep_recent_s=60).report()["entries"] == 1
