"""Warm-up mode on a real CPU ComfyUI with tiny weights: it loads what the next default generate then takes
from ComfyUI's node cache (the experts, the LoRA patches, the VAE), and reports the load time."""

from __future__ import annotations

import base64
import io
import time
import uuid

import requests
from PIL import Image

from tenexa.comfy import ComfyClient
from tenexa.generate import generate
from tenexa.progress import LOADER_CLASSES
from tenexa.warmup import warmup


class CacheRecordingClient(ComfyClient):
    """Remembers each posted graph and the node ids ComfyUI reported as taken from its cache."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs: list[tuple[dict, list[str], object]] = []

    def run_prompt(self, graph, **kwargs):
        cached: list[str] = []
        inner = kwargs.get("on_event")

        def on_event(kind, data):
            if kind == "execution_cached":
                cached.extend(str(n) for n in data.get("nodes") or [])
            if inner is not None:
                inner(kind, data)

        result = super().run_prompt(graph, **{**kwargs, "on_event": on_event})
        self.runs.append((graph, cached, result))
        return result


def free_models(url: str) -> None:
    """Unload models and drop ComfyUI's node cache, so the warm-up starts cold."""
    requests.post(f"{url}/free", json={"unload_models": True, "free_memory": True}, timeout=10).raise_for_status()
    time.sleep(2.0)  # the prompt worker applies the flags between queue polls


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def loader_ids(graph: dict) -> set[str]:
    return {nid for nid, n in graph.items() if n["class_type"] in LOADER_CLASSES | {"WanVideoSetLoRAs"}}


def test_warmup_loads_what_the_next_generate_reuses(comfy_server, cpu_settings, test_prompt, tiny_models):
    free_models(comfy_server.url)
    client = CacheRecordingClient(cpu_settings.comfy_url)
    out = warmup(f"it-warmup-{uuid.uuid4().hex[:6]}", settings=cpu_settings, client=client)
    assert out["status"] == "completed" and out["ok"] is True, out
    warm_graph, warm_cached, _ = client.runs[-1]
    assert loader_ids(warm_graph) and not loader_ids(warm_graph) & set(warm_cached), "a cold warm-up runs every loader"
    assert 0 < out["load_s"] < out["execution_s"]
    print(f"\nwarm-up on CPU: {out['seconds']:.1f} s, loaders {out['load_s']:.1f} s of {out['execution_s']:.1f} s execution")

    job = {"image_base64": base64.b64encode(png()).decode(), "prompt": test_prompt, "frames": 9, "width": 64, "height": 64,
           "steps": 4, "seed": 1}
    response = generate(f"it-after-warmup-{uuid.uuid4().hex[:6]}", job, settings=cpu_settings, client=client)
    assert response["status"] == "completed", response
    graph, cached, _ = client.runs[-1]
    assert loader_ids(graph) <= set(cached), f"loaders not reused: {sorted(loader_ids(graph) - set(cached))}"
