"""Fixtures for the client-script tests (helpers live in client_harness.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))  # client_harness, runpod_standin, also under importlib mode

from client_harness import STUB_HANDLER, DevServer, free_port, make_mp4, script_env  # noqa: E402
from runpod_standin import RunPodStandIn, Scenario  # noqa: E402


@pytest.fixture(scope="session")
def tiny_mp4() -> bytes:
    return make_mp4()


@pytest.fixture(scope="session")
def tiny_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "start.png"
    Image.new("RGB", (32, 32), (200, 100, 50)).save(path)
    return path


@pytest.fixture
def standin() -> Iterator[Callable[[Scenario], RunPodStandIn]]:
    started: list[RunPodStandIn] = []

    def make(scenario: Scenario) -> RunPodStandIn:
        server = RunPodStandIn(scenario).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory, tiny_mp4: bytes) -> Iterator[DevServer]:
    """``stub_handler.py --rp_serve_api`` with the project's runpod: the real local route shapes."""
    folder = tmp_path_factory.mktemp("dev_server")
    (folder / "stub_handler.py").write_text(STUB_HANDLER)
    (folder / "stub.mp4").write_bytes(tiny_mp4)
    port = free_port()
    log = open(folder / "server.log", "w")
    env = script_env(STUB_MP4=str(folder / "stub.mp4"), STUB_MARKER=str(folder / "started"),
                     RUNPOD_LOG_LEVEL="WARN", UVICORN_LOG_LEVEL="warning")
    process = subprocess.Popen([sys.executable, "stub_handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                                "--rp_api_port", str(port)], cwd=str(folder), stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            log.close()
            pytest.fail(f"dev server exited rc {process.returncode}:\n{(folder / 'server.log').read_text()[-3000:]}")
        try:
            if requests.get(url + "/openapi.json", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("dev server did not answer /openapi.json within 60 s")
        time.sleep(0.2)
    yield DevServer(url, folder / "started", process)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()

