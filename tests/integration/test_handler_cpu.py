"""The worker against a real ComfyUI on CPU: test, diagnose, self-test, error paths and an interrupt mid-run."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tenexa import diagnostics, manifest
from tenexa.comfy import ComfyClient
from tenexa.diagnostics import diagnose, health, run_selftest, selftest_graph
from tenexa.errors import ErrorCode, TenexaError
from tenexa.files import sha256_file
from tenexa.pipeline import run_graph
from tenexa.workspace import JobWorkspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_e2e_local_api import start_local_api  # noqa: E402


@pytest.fixture(scope="module")
def volume(tmp_path_factory, tiny_models):
    """A volume whose models/ is the tiny model folder, so diagnose finds every manifest entry there."""
    root = tmp_path_factory.mktemp("volume")
    (root / "models").symlink_to(tiny_models.models_dir, target_is_directory=True)
    return root


@pytest.fixture
def client(comfy_server):
    return ComfyClient(comfy_server.url)


def _leftovers(root: Path, token_prefix: str) -> list[Path]:
    return [p for kind in ("input", "output", "temp") for p in (root / kind / "tenexa").glob(f"{token_prefix}*")]


def test_health_and_selftest_in_process(cpu_settings, client, comfy_server):
    out = health(cpu_settings, client)
    assert out["ok"] is True and out["comfyui_up"] is True
    report = run_selftest(cpu_settings, client, job_id="it-selftest")
    assert report["ok"] is True, report
    assert report["video"] == {"frames": 9, "fps": 8.0, "width": 64, "height": 64, "bytes": report["video"]["bytes"], "codec": "h264"}
    assert _leftovers(comfy_server.root, "it-selftest") == []


def test_diagnose_is_healthy_with_tiny_models(cpu_settings, client, volume, monkeypatch):
    from dataclasses import replace

    settings = replace(cpu_settings, volume_root=volume)
    report = diagnose(settings, client, selftest=True)
    assert report["comfyui_reachable"] and report["system"]["comfyui_version"] == "0.8.0"
    assert report["node_check"]["required_missing"] == []
    assert report["manifest"]["missing"] == []
    for name, check in report["workflow_checks"].items():
        assert check["valid"] is True, (name, check)
        assert check["missing_models"] == {} and check["missing_nodes"] == []
    assert report["selftest"]["ok"] is True
    assert report["settings"]["attention_mode"]["resolved"] == "sdpa"
    assert report["host_memory"]["ok"] is True, report["host_memory"]  # tiny files, embeddings from the cache
    # The tiny LoRAs carry the real LoRAs' names but not their published size: exactly what the size check is for.
    assert {w["name"] for w in report["manifest"]["wrong_size"]} == {"lightning-i2v-a14b-high", "lightning-i2v-a14b-low"}
    assert report["healthy"] is False

    # With a manifest that knows the tiny files' real sizes and hashes, the same worker is healthy.
    # Optional entries (the RIFE checkpoint, absent from this volume) stay as they are: they never make it unhealthy.
    tiny = [e if e.optional else dataclasses.replace(e, size=diagnostics.model_file(settings, e).stat().st_size,
                                                     sha256=sha256_file(diagnostics.model_file(settings, e)))
            for e in manifest.load_manifest()]
    monkeypatch.setattr(manifest, "load_manifest", lambda path=None: tuple(tiny))  # diagnose reads it at call time
    report = diagnose(settings, client, verify_hashes=True)
    assert report["manifest"]["wrong_size"] == [] and report["manifest"]["hash_mismatch"] == []
    assert sorted(report["manifest"]["verified"]) == sorted(e.name for e in tiny if not e.optional)
    assert report["healthy"] is True


def _run(client, root, graph_fn, images, **kw):
    workspace = JobWorkspace(root, "it-error")
    graph = graph_fn(workspace)
    try:
        return run_graph(client, graph, workspace=workspace, images=images, deadline=time.monotonic() + kw.pop("timeout", 120), **kw)
    finally:
        workspace.cleanup()


def _selftest(workspace, **changes):
    graph = selftest_graph(workspace.input_name("in.png"), workspace.output_prefix)
    for node in graph.values():
        for key, value in changes.get(node["class_type"], {}).items():
            if value is None:
                node["inputs"].pop(key, None)
            else:
                node["inputs"][key] = value
    return graph


EXAMPLE_PNG = (Path(__file__).resolve().parents[2] / "example_image.png").read_bytes()


def test_unknown_node_is_queue_failed(client, comfy_server):
    def graph(ws):
        g = _selftest(ws)
        g["2"]["class_type"] = "WanVideoEnhancedBlockSwap"
        return g
    with pytest.raises(TenexaError) as info:
        _run(client, comfy_server.root, graph, {"in.png": EXAMPLE_PNG})
    assert info.value.code is ErrorCode.QUEUE_FAILED
    assert "WanVideoEnhancedBlockSwap does not exist" in info.value.message


def test_missing_input_names_node_and_input(client, comfy_server):
    with pytest.raises(TenexaError) as info:
        _run(client, comfy_server.root, lambda ws: _selftest(ws, RepeatImageBatch={"amount": None}), {"in.png": EXAMPLE_PNG})
    assert info.value.code is ErrorCode.QUEUE_FAILED
    assert "node 3 (RepeatImageBatch) input amount" in info.value.message


def test_corrupt_image_is_generation_error(client, comfy_server):
    with pytest.raises(TenexaError) as info:
        _run(client, comfy_server.root, _selftest, {"in.png": b"this is not an image at all"})
    assert info.value.code is ErrorCode.GENERATION_ERROR
    assert "(LoadImage) failed: UnidentifiedImageError" in info.value.message


def test_cancel_mid_run_interrupts_and_next_job_works(client, comfy_server, cpu_settings):
    """A long VHS encode (2000 frames), cancelled after it started: ComfyUI stops, the queue is empty."""
    cancel = threading.Event()
    events: list[str] = []

    def on_event(kind, data):
        events.append(kind)
        if kind == "progress" and not cancel.is_set():
            cancel.set()

    started = time.monotonic()
    with pytest.raises(TenexaError) as info:
        _run(client, comfy_server.root, lambda ws: _selftest(ws, RepeatImageBatch={"amount": 2000}),
             {"in.png": EXAMPLE_PNG}, cancel=cancel, on_event=on_event)
    assert info.value.code is ErrorCode.CANCELLED
    assert time.monotonic() - started < 60
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queue = requests.get(comfy_server.url + "/queue", timeout=5).json()
        if not queue["queue_running"] and not queue["queue_pending"]:
            break
        time.sleep(0.5)
    assert not queue["queue_running"] and not queue["queue_pending"], queue
    assert run_selftest(cpu_settings, client, job_id="it-after-cancel")["ok"] is True


def test_local_api_against_real_comfyui(comfy_server, tmp_path):
    """What a newcomer does: the worker's local API on a real ComfyUI, test mode and a self-test video."""
    proc, url = start_local_api({
        "COMFY_ROOT": str(comfy_server.root), "COMFY_PORT": str(comfy_server.port), "COMFY_LOG": str(comfy_server.log_path),
        "VOLUME_ROOT": str(tmp_path / "none"),
    }, tmp_path / "handler.log")
    try:
        test = requests.post(url + "/runsync", json={"input": {"test": True}}, timeout=30).json()
        assert test["status"] == "COMPLETED" and test["output"]["comfyui_up"] is True
        diag = requests.post(url + "/runsync", json={"input": {"diagnose": True, "selftest": True}}, timeout=180).json()
        assert diag["status"] == "COMPLETED"
        assert diag["output"]["selftest"]["ok"] is True and diag["output"]["selftest"]["video"]["frames"] == 9
        assert diag["output"]["node_check"]["required_missing"] == []
    finally:
        proc.terminate()
        proc.wait(10)


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def test_twenty_selftests_leave_nothing_behind(cpu_settings, client, comfy_server):
    import tempfile

    def files(kind):
        return sorted(p for p in (comfy_server.root / kind / "tenexa").rglob("*") if p.is_file())

    run_selftest(cpu_settings, client, job_id="soak-warm")
    before = {kind: files(kind) for kind in ("input", "output", "temp")}
    fds, threads = _open_fds(), threading.active_count()
    scratch = sorted(Path(tempfile.gettempdir()).glob("tenexa-job-*"))
    for i in range(20):
        assert run_selftest(cpu_settings, client, job_id=f"soak-{i}")["ok"] is True
    assert {kind: files(kind) for kind in ("input", "output", "temp")} == before
    assert sorted(Path(tempfile.gettempdir()).glob("tenexa-job-*")) == scratch
    assert _open_fds() <= fds + 3 and threading.active_count() <= threads + 2


def test_comfyui_killed_mid_job(comfy_install, tmp_path):
    """A second, model-less ComfyUI is killed (SIGKILL) during a long encode: COMFY_CRASHED within seconds."""
    import subprocess

    from comfy_double import free_port

    port = free_port()
    log = open(tmp_path / "victim.log", "wb")
    proc = subprocess.Popen([str(comfy_install.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch"], cwd=comfy_install.root, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = ComfyClient(f"http://127.0.0.1:{port}", crash_grace=3.0)
        client.wait_until_ready(timeout=180)

        def kill_on_progress(kind, data):
            if kind == "progress" and proc.poll() is None:
                proc.kill()

        started = time.monotonic()
        with pytest.raises(TenexaError) as info:
            _run(client, comfy_install.root, lambda ws: _selftest(ws, RepeatImageBatch={"amount": 3000}),
                 {"in.png": EXAMPLE_PNG}, on_event=kill_on_progress)
        assert info.value.code is ErrorCode.COMFY_CRASHED and info.value.refresh_worker
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()
