"""LoRAs by URL: fetched through the SSRF-safe fetcher from a real HTTP server on loopback, checked as Wan
LoRAs (header parsed here, no torch), cached content-addressed with LRU eviction, downloaded once per URL
across jobs, threads and processes. Handler-level tests run the real handler coroutine against the ComfyUI
double; the end-to-end run on a real ComfyUI is tests/integration/test_lora_url_cpu.py.

Selected by ``pytest -k "lora and url"``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lora_files import safetensors, wan_lora, wan_lora_tensors
from PIL import Image
from support import settings_for
from url_server import UrlServer

import handler
from tenexa import loras
from tenexa.comfy import ComfyClient
from tenexa.config import REPO_ROOT, load_settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.lora_cache import LoraCache, url_key
from tenexa.request import parse_generate

DIM = 192  # the integration tier's tiny Wan; production checks against 5120


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG = _png()


def cache_settings(tmp_path: Path, **env: str):
    return load_settings({"ALLOW_PRIVATE_URLS": "true", "LORA_MODEL_DIM": str(DIM),
                          "LORA_CACHE_DIR": str(tmp_path / "loras" / "tenexa-url"), **env})


def request_with(*entries: dict):
    return parse_generate({"image_base64": PNG, "loras": list(entries)})


def code_of(fn, *args, **kw) -> TenexaError:
    with pytest.raises(TenexaError) as info:
        fn(*args, **kw)
    return info.value


def slow_body(data: bytes, seconds: float):
    """Send the body in pieces over ``seconds``: keeps a download in flight while other jobs ask for it."""
    def route(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        pieces = 10
        step = -(-len(data) // pieces)
        try:
            for i in range(pieces):
                h.wfile.write(data[i * step:(i + 1) * step])
                h.wfile.flush()
                time.sleep(seconds / pieces)
        except OSError:  # the worker hung up (a deadline test)
            pass
    return route


# ------------------------------------------------------------------------------------ the request field

entry_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                         st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
entries = st.dictionaries(st.sampled_from(["url", "name", "strength", "expert", "scale", "weight"]), entry_values, max_size=4)


@hypothesis.settings(deadline=None, max_examples=300)
@given(st.one_of(entry_values, st.lists(st.one_of(entries, entry_values), max_size=10)))
def test_lora_url_entries_fuzzed_give_refs_or_invalid_input(value):
    try:
        refs = parse_generate({"image_base64": PNG, "loras": value}).loras
    except TenexaError as err:
        assert err.code is ErrorCode.INVALID_INPUT and "\n" not in err.message
        assert err.details["field"] == "loras" or err.details["field"].startswith("loras[")
    else:
        for ref in refs:
            assert (ref.url is None) != (ref.name is None) and ref.expert in ("high", "low", "both")
            assert -10 <= ref.strength <= 10 and (ref.url is None or 0 < len(ref.url) <= 2048)
        for expert in ("high", "low"):
            assert sum(r.applies_to(expert) for r in refs) <= 4


# ------------------------------------------------------------------------------------ the file check


@pytest.mark.parametrize("style", ["peft", "kohya", "lightx2v"])
def test_lora_url_check_accepts_the_spellings_the_loader_reads(style):
    data = wan_lora(DIM, style=style)
    n = struct.unpack("<Q", data[:8])[0]
    tensors = loras.parse_header(data[8:8 + n], "f")
    loras.check_layout(tensors, len(data) - 8 - n, "f")
    summary = loras.check_wan_lora(tensors, DIM, "f")
    assert summary.block_modules == 20 and summary.rank == 4


def test_lora_url_check_uses_the_configured_hidden_size():
    data = wan_lora(5120, blocks=1, rank=2)
    n = struct.unpack("<Q", data[:8])[0]
    tensors = loras.parse_header(data[8:8 + n], "f")
    assert loras.check_wan_lora(tensors, 5120, "f").rank == 2
    err = code_of(loras.check_wan_lora, tensors, DIM, "loras[0].url")
    assert err.code is ErrorCode.INVALID_LORA and "hidden size 192" in err.message


def _impostor(tensors: dict) -> bytes:
    return safetensors(tensors)


def _raw_header(header: dict, data_bytes: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"x" * data_bytes


IMPOSTORS = [
    ("HTML page", b"<!DOCTYPE html><html><body>Not found</body></html>", "not a safetensors file"),
    ("PNG image", base64.b64decode(PNG), "not a safetensors file"),
    ("empty file", b"", "ends before its header"),
    ("header cut short", wan_lora(DIM)[:200], "ends before its header"),
    ("data cut short", wan_lora(DIM)[:-10], "cover"),
    ("extra bytes after the data", wan_lora(DIM) + b"trailing", "cover"),
    ("header not JSON", struct.pack("<Q", 16) + b"{{{{not json}}}}", "not JSON"),
    ("header a JSON list", struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ("deeply nested header", struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000, "not JSON"),
    ("offsets disagree with shape", _raw_header(
        {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": {"dtype": "F32", "shape": [4, 192], "data_offsets": [0, 8]}}, 8), "offsets"),
    ("unknown dtype", _raw_header({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": {"dtype": "F128", "shape": [1],
                                                                                          "data_offsets": [0, 16]}}, 16), "malformed"),
    ("no tensors", safetensors({}), "no tensors"),
    ("a full checkpoint", _impostor({"blocks.0.self_attn.q.weight": ("F16", [DIM, DIM])}), "not a LoRA tensor"),
    ("an SDXL LoRA", _impostor({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ("F16", [4, 320]),
                                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": ("F16", [320, 4])}), "not a LoRA tensor"),
    ("a Flux LoRA", _impostor({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": ("F16", [4, 3072]),
                               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": ("F16", [3072, 4])}), "diffusers"),
    ("a Wan 5B LoRA (dim 3072)", wan_lora(3072, blocks=1, rank=1), "hidden size"),
    ("a diffusers-format Wan LoRA", _impostor({"transformer.blocks.0.attn1.to_q.lora_A.weight": ("F16", [4, DIM]),
                                               "transformer.blocks.0.attn1.to_q.lora_B.weight": ("F16", [DIM, 4])}), "diffusers"),
    ("a LoHa", _impostor({"diffusion_model.blocks.0.self_attn.q.hada_w1_a": ("F16", [DIM, 4])}), "LoHa"),
    ("a DoRA", _impostor({**wan_lora_tensors(DIM, blocks=1), "diffusion_model.blocks.0.self_attn.q.dora_scale": ("F16", [DIM, 1])}), "DoRA"),
    ("block 40", _impostor({"diffusion_model.blocks.40.self_attn.q.lora_A.weight": ("F16", [4, DIM]),
                            "diffusion_model.blocks.40.self_attn.q.lora_B.weight": ("F16", [DIM, 4])}), "block 40"),
    ("up without down", _impostor({"diffusion_model.blocks.0.self_attn.q.lora_B.weight": ("F16", [DIM, 4])}), "without its down"),
    ("rank mismatch", _impostor({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": ("F16", [4, DIM]),
                                 "diffusion_model.blocks.0.self_attn.q.lora_B.weight": ("F16", [DIM, 8])}), "rank"),
    ("integer weights", _impostor({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": ("I32", [4, DIM]),
                                   "diffusion_model.blocks.0.self_attn.q.lora_B.weight": ("I32", [DIM, 4])}), "floating point"),
    ("only norm diffs", _impostor({"diffusion_model.blocks.0.norm3.diff": ("F16", [DIM])}), "no LoRA weights for the transformer blocks"),
    ("LoRA pair on a norm", _impostor({"diffusion_model.blocks.0.norm3.lora_A.weight": ("F16", [4, DIM]),
                                       "diffusion_model.blocks.0.norm3.lora_B.weight": ("F16", [DIM, 4])}), "only diff"),
    ("same weight twice", _impostor({**wan_lora_tensors(DIM, blocks=1),
                                     "diffusion_model.blocks.0.self_attn.q.lora_down.weight": ("F32", [4, DIM])}), "repeats"),
]


@pytest.mark.parametrize(("name", "data", "reason"), IMPOSTORS, ids=[i[0] for i in IMPOSTORS])
def test_lora_url_serving_a_non_lora_file_is_refused_and_leaves_nothing(tmp_path, name, data, reason):
    settings = cache_settings(tmp_path)
    with UrlServer() as srv:
        srv.routes["/file.safetensors"] = srv.body(data)
        req = request_with({"url": srv.url("/file.safetensors")})
        err = code_of(loras.fetch_loras, req, settings)
    assert err.code is ErrorCode.INVALID_LORA, err
    assert reason in err.message and err.message.startswith("loras[0].url: ")
    assert err.details["field"] == "loras[0].url"
    cache = LoraCache.from_settings(settings)
    assert cache.entries() == []
    leftovers = [p for p in cache.root.rglob("*") if p.is_file()]
    assert leftovers == []


def test_lora_url_download_stops_as_soon_as_the_header_is_wrong(tmp_path):
    """A 200 MB page that is not a LoRA is refused after its first bytes, not after 200 MB."""
    sent = []

    def big_page(h):
        h.send_response(200)
        h.send_header("Content-Length", str(200 * 1024 * 1024))
        h.end_headers()
        try:
            for _ in range(3200):
                h.wfile.write(b"<html>" + b"x" * (64 * 1024 - 6))
                sent.append(1)
        except OSError:
            pass

    with UrlServer() as srv:
        srv.routes["/page"] = big_page
        started = time.monotonic()
        err = code_of(loras.fetch_loras, request_with({"url": srv.url("/page")}), cache_settings(tmp_path))
    assert err.code is ErrorCode.INVALID_LORA
    assert time.monotonic() - started < 10
    assert len(sent) < 1600, f"the server wrote {len(sent) * 64} KiB before the worker hung up"


# ------------------------------------------------------------------------------------ fetching and the cache


def test_lora_url_is_fetched_once_for_two_jobs(comfy_double, monkeypatch):
    """Two generate jobs through the handler name the same URL: one download, the same cached file in both graphs."""
    settings = settings_for(comfy_double, ALLOW_PRIVATE_URLS="true", LORA_MODEL_DIM=str(DIM))
    monkeypatch.setattr(handler, "SETTINGS", settings)
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url, crash_grace=2.0))
    data = wan_lora(DIM, seed=7)
    sha = hashlib.sha256(data).hexdigest()
    with UrlServer() as srv:
        srv.routes["/style.safetensors"] = srv.body(data)
        job = {"image_base64": PNG, "frames": 9,
               "loras": [{"url": srv.url("/style.safetensors"), "strength": 0.75, "expert": "high"}]}
        outs = [asyncio.run(handler.handler({"id": f"job-{i}", "input": job})) for i in range(2)]
    assert [o["status"] for o in outs] == ["completed", "completed"], outs
    assert srv.hits("/style.safetensors") == 1
    name = f"tenexa-url/{sha}.safetensors"
    for out, call in zip(outs, comfy_double.calls.prompts[-2:], strict=True):
        assert out["used"]["loras"] == [{"field": "loras[0]", "expert": "high", "slot": 1, "name": name, "strength": 0.75,
                                         "sha256": sha}]
        selects = [n["inputs"] for n in call["prompt"].values() if n["class_type"] == "WanVideoLoraSelectMulti"]
        assert sorted((s["lora_1"], s["strength_1"]) for s in selects) == [("none", 1.0), (name, 0.75)]
    cached = comfy_double.root / "models" / "loras" / name  # no volume: the cache sits in COMFY_ROOT's loras folder
    assert cached.read_bytes() == data


@pytest.mark.parametrize("sender_breaks", [False, True])
def test_lora_url_fetching_is_a_progress_phase_before_the_upload(comfy_double, sender_breaks):
    """Two URL LoRAs: ``fetching_loras`` 0/2, 1/2, 2/2 at 0 %, then the job's own phases; a progress sender that
    raises never fails the job."""
    from tenexa.generate import generate

    settings = settings_for(comfy_double, ALLOW_PRIVATE_URLS="true", LORA_MODEL_DIM=str(DIM), PROGRESS_INTERVAL="0")
    sent: list[dict] = []

    def send(update: dict) -> None:
        sent.append(update)
        if sender_breaks:
            raise RuntimeError("progress endpoint down")

    with UrlServer() as srv:
        srv.routes["/a.safetensors"] = srv.body(wan_lora(DIM, seed=1))
        srv.routes["/b.safetensors"] = srv.body(wan_lora(DIM, seed=2))
        job = {"image_base64": PNG, "frames": 9, "loras": [{"url": srv.url("/a.safetensors"), "expert": "high"},
                                                           {"url": srv.url("/b.safetensors"), "expert": "low"}]}
        out = generate("lora-progress", job, settings=settings, client=ComfyClient(comfy_double.url), send_progress=send)
    assert out["status"] == "completed" and len(out["used"]["loras"]) == 2
    phases = [p["phase"] for p in sent]
    assert [(p["step"], p["total"], p["percent"]) for p in sent[:3]] == [(0, 2, 0.0), (1, 2, 0.0), (2, 2, 0.0)]
    assert phases[:4] == ["fetching_loras"] * 3 + ["uploading"] and phases.count("fetching_loras") == 3


def test_lora_url_concurrent_jobs_download_it_once(tmp_path):
    settings = cache_settings(tmp_path)
    data = wan_lora(DIM, seed=3)
    results, errors = [], []
    with UrlServer() as srv:
        srv.routes["/slow.safetensors"] = slow_body(data, 1.0)
        req = request_with({"url": srv.url("/slow.safetensors")})

        def job():
            try:
                results.append(loras.fetch_loras(req, settings).loras[0].name)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=job) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    assert srv.hits("/slow.safetensors") == 1
    assert results == [f"tenexa-url/{hashlib.sha256(data).hexdigest()}.safetensors"] * 6
    assert not list((tmp_path / "loras" / "tenexa-url" / ".tenexa" / "locks").iterdir())  # lock files go with their download


def test_lora_url_workers_sharing_a_volume_download_it_once(tmp_path):
    """Three worker processes on one cache folder (a shared volume): one download, one file."""
    data = wan_lora(DIM, seed=4)
    script = (
        "import sys; from tenexa import loras; from tenexa.config import load_settings; from tenexa.request import parse_generate\n"
        "s = load_settings({'ALLOW_PRIVATE_URLS': 'true', 'LORA_MODEL_DIM': '192', 'LORA_CACHE_DIR': sys.argv[1]})\n"
        "r = parse_generate({'image_base64': 'x', 'loras': [{'url': sys.argv[2]}]})\n"
        "print(loras.fetch_loras(r, s).loras[0].name)\n"
    )
    with UrlServer() as srv:
        srv.routes["/shared.safetensors"] = slow_body(data, 1.5)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "vol" / "tenexa-url"), srv.url("/shared.safetensors")],
                                  cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {f"tenexa-url/{hashlib.sha256(data).hexdigest()}.safetensors"}
    assert srv.hits("/shared.safetensors") == 1


def test_lora_url_cache_evicts_least_recently_used_at_its_bound(tmp_path):
    files = {name: wan_lora(DIM, seed=seed) for seed, name in enumerate("abc")}
    size = len(files["a"])
    bound_gb = (2 * size + size // 2) / 1e9  # room for two files, not three
    settings = cache_settings(tmp_path, LORA_CACHE_GB=repr(bound_gb), COMFY_EXEC_TIMEOUT="60")
    cache = LoraCache.from_settings(settings)
    with UrlServer() as srv:
        for name, data in files.items():
            srv.routes[f"/{name}"] = srv.body(data)

        def fetch(name):
            return loras.fetch_loras(request_with({"url": srv.url(f"/{name}")}), settings).loras[0].sha256

        sha = {name: fetch(name) for name in "ab"}
        now = time.time()
        os.utime(cache.path(sha["a"]), (now - 600, now - 600))  # a: used 10 min ago
        os.utime(cache.path(sha["b"]), (now - 1200, now - 1200))  # b: used 20 min ago, the least recent
        sha["c"] = fetch("c")
        assert {e.sha256 for e in cache.entries()} == {sha["a"], sha["c"]}
        assert cache.report()["bytes"] == 2 * size <= cache.limit_bytes

        fetch("a")  # a cache hit: no download, and it becomes the most recent
        assert srv.hits("/a") == 1
        fetch("b")  # evicted before: downloaded again, and now a and c are both recent (in use by running jobs)
        assert srv.hits("/b") == 2
        assert len(cache.entries()) == 3 and cache.report()["bytes"] > cache.limit_bytes

        for entry in cache.entries():  # once they age past a job's time budget, the next download trims the cache
            os.utime(entry.path, (now - 3600, now - 3600))
        os.utime(cache.path(sha["b"]), (now - 100, now - 100))
        srv.routes["/d"] = srv.body(wan_lora(DIM, seed=9))
        sha["d"] = fetch("d")
        assert {e.sha256 for e in cache.entries()} == {sha["b"], sha["d"]}
    records = list((cache.root / ".tenexa" / "urls").glob("*.json"))
    assert sorted(r.stem for r in records) == sorted(url_key(srv.url(f"/{n}")) for n in "bd")  # evicted files' records go too


def test_lora_url_larger_than_the_limits_is_refused(tmp_path):
    data = wan_lora(DIM)
    with UrlServer() as srv:
        srv.routes["/big.safetensors"] = srv.body(data)

        def streamed(h):  # no Content-Length: the cap is found while reading
            h.send_response(200)
            h.end_headers()
            h.wfile.write(data)
        srv.routes["/streamed.safetensors"] = streamed
        tight = cache_settings(tmp_path, MAX_LORA_MB=repr(len(data) / 2e6))
        for path in ("/big.safetensors", "/streamed.safetensors"):
            err = code_of(loras.fetch_loras, request_with({"url": srv.url(path)}), tight)
            assert err.code is ErrorCode.LORA_TOO_LARGE and err.details["field"] == "loras[0].url"
        small_cache = cache_settings(tmp_path, LORA_CACHE_GB=repr(len(data) / 2e9))
        assert code_of(loras.fetch_loras, request_with({"url": srv.url("/big.safetensors")}), small_cache).code is ErrorCode.LORA_TOO_LARGE
    assert LoraCache.from_settings(tight).entries() == []


def test_lora_url_http_failures_are_lora_fetch_failed(tmp_path):
    settings = cache_settings(tmp_path, LORA_URL_TIMEOUT="1")
    with UrlServer() as srv:
        srv.routes["/loop"] = srv.redirect("/loop")
        srv.routes["/slow"] = slow_body(wan_lora(DIM), 5.0)
        for path in ("/missing", "/loop", "/slow"):
            err = code_of(loras.fetch_loras, request_with({"url": srv.url(path)}), settings)
            assert err.code is ErrorCode.LORA_FETCH_FAILED, (path, err)
    unresolvable = request_with({"url": "http://no-such-host.invalid/x.safetensors"})
    assert code_of(loras.fetch_loras, unresolvable, settings).code is ErrorCode.LORA_FETCH_FAILED


def test_lora_url_download_stops_when_the_job_is_cancelled(tmp_path):
    settings = cache_settings(tmp_path)
    cancel = threading.Event()
    with UrlServer() as srv:
        srv.routes["/slow.safetensors"] = slow_body(wan_lora(DIM, blocks=8), 10.0)
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        err = code_of(loras.fetch_loras, request_with({"url": srv.url("/slow.safetensors")}), settings, cancel=cancel)
    assert err.code is ErrorCode.CANCELLED and time.monotonic() - started < 5
    assert not [p for p in (tmp_path / "loras").rglob("*") if p.is_file()]


def test_lora_url_with_an_unusable_cache_folder_is_lora_fetch_failed(tmp_path):
    (tmp_path / "loras").write_text("a file where the cache folder should be")
    settings = cache_settings(tmp_path)
    with UrlServer() as srv:
        srv.routes["/a.safetensors"] = srv.body(wan_lora(DIM))
        err = code_of(loras.fetch_loras, request_with({"url": srv.url("/a.safetensors")}), settings)
    assert err.code is ErrorCode.LORA_FETCH_FAILED and "LoRA cache" in err.message and err.details["field"] == "loras[0].url"


def test_lora_url_redirect_is_followed_and_cached_by_the_url_asked_for(tmp_path):
    settings = cache_settings(tmp_path)
    data = wan_lora(DIM, seed=11)
    with UrlServer() as srv:
        srv.routes["/latest"] = srv.redirect("/v2/file.safetensors")
        srv.routes["/v2/file.safetensors"] = srv.body(data)
        for _ in range(2):
            ref = loras.fetch_loras(request_with({"url": srv.url("/latest")}), settings).loras[0]
            assert ref.sha256 == hashlib.sha256(data).hexdigest()
        assert (srv.hits("/latest"), srv.hits("/v2/file.safetensors")) == (1, 1)


def test_lora_url_names_and_urls_mix_in_one_request(tmp_path):
    settings = cache_settings(tmp_path)
    with UrlServer() as srv:
        srv.routes["/x"] = srv.body(wan_lora(DIM, seed=12))
        out = loras.fetch_loras(request_with({"name": "mine.safetensors", "expert": "low"},
                                             {"url": srv.url("/x"), "strength": -0.5}), settings)
    assert out.loras[0].name == "mine.safetensors" and out.loras[0].sha256 is None
    assert out.loras[1].name.startswith("tenexa-url/") and out.loras[1].strength == -0.5 and out.loras[1].expert == "both"
    unchanged = request_with({"name": "mine.safetensors"})
    assert loras.fetch_loras(unchanged, settings) is unchanged


# ------------------------------------------------------------------------------------ through the handler


@pytest.fixture
def worker(comfy_double, monkeypatch):
    """The handler with default URL settings (no private addresses) against the ComfyUI double."""
    monkeypatch.setattr(handler, "SETTINGS", settings_for(comfy_double, LORA_MODEL_DIM=str(DIM)))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url, crash_grace=2.0))
    return comfy_double


def run(job_input: dict) -> dict:
    return asyncio.run(handler.handler({"id": "lora-url", "input": job_input}))


def test_lora_url_to_a_private_address_is_refused_with_default_settings(worker):
    with UrlServer() as srv:
        srv.routes["/private.safetensors"] = srv.body(wan_lora(DIM))
        out = run({"image_base64": PNG, "frames": 9, "loras": [{"url": srv.url("/private.safetensors")}]})
        assert out["status"] == "failed" and out["error_code"] == "URL_BLOCKED", out
        assert out["error_field"] == "loras[0].url" and "ALLOW_PRIVATE_URLS" in out["error"]
        localhost = run({"image_base64": PNG, "frames": 9, "loras": [{"url": srv.url("/private.safetensors", host="localhost")}]})
        assert localhost["error_code"] == "URL_BLOCKED"
        assert srv.hits("/private.safetensors") == 0
    assert worker.calls.prompts == []  # refused before ComfyUI is asked for anything
    assert run({"image_base64": PNG, "frames": 9})["status"] == "completed", "the next job still works"


def test_lora_url_failures_through_the_handler_are_one_line_with_their_field(worker, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(worker, ALLOW_PRIVATE_URLS="true", LORA_MODEL_DIM=str(DIM)))
    with UrlServer() as srv:
        srv.routes["/page.html"] = srv.body(b"<html>hello</html>")
        out = run({"image_base64": PNG, "frames": 9, "loras": [{"name": "x.safetensors"}, {"url": srv.url("/page.html"), "expert": "low"}]})
    assert out["error_code"] == "INVALID_LORA" and out["error_field"] == "loras[1].url", out
    assert out["error"].startswith("INVALID_LORA: loras[1].url: not a safetensors file") and "\n" not in out["error"]
    assert worker.calls.prompts == []
    assert not [p for p in (worker.root / "models").rglob("*") if p.is_file()]


def test_lora_url_cache_is_in_the_diagnose_report(worker, tmp_path, monkeypatch):
    settings = settings_for(worker, ALLOW_PRIVATE_URLS="true", LORA_MODEL_DIM=str(DIM))
    monkeypatch.setattr(handler, "SETTINGS", settings)
    data = wan_lora(DIM, seed=5)
    with UrlServer() as srv:
        srv.routes["/d.safetensors"] = srv.body(data)
        loras.fetch_loras(request_with({"url": srv.url("/d.safetensors")}), settings)
    report = run({"diagnose": True})["lora_cache"]
    assert report == {"dir": str(worker.root / "models" / "loras" / "tenexa-url"), "on_volume": False, "comfy_prefix": "tenexa-url/",
                      "entries": 1, "bytes": len(data), "limit_bytes": 20 * 10**9}


def test_lora_url_cache_goes_to_the_volume_when_one_is_mounted(tmp_path):
    volume = tmp_path / "runpod-volume"
    (volume / "models").mkdir(parents=True)
    settings = load_settings({"VOLUME_ROOT": str(volume), "COMFY_ROOT": str(tmp_path / "ComfyUI")})
    cache = LoraCache.from_settings(settings)
    assert cache.root == volume / "models" / "loras" / "tenexa-url" and cache.on_volume
    assert cache.comfy_name("ab" * 32) == f"tenexa-url/{'ab' * 32}.safetensors"
    local = LoraCache.from_settings(load_settings({"VOLUME_ROOT": str(tmp_path / "none"), "COMFY_ROOT": str(tmp_path / "ComfyUI")}))
    assert local.root == tmp_path / "ComfyUI" / "models" / "loras" / "tenexa-url" and not local.on_volume
