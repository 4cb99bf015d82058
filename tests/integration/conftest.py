"""A real ComfyUI on CPU with tiny random-weight models: session fixtures for the integration tier.

Where ComfyUI comes from: ``COMFY_ROOT`` (a ComfyUI 0.8.0 checkout with the node packs of ``stack.lock``) and
``COMFY_PYTHON`` (its interpreter, with torch); default ``~/.cache/tenexa/ComfyUI`` and
``~/.cache/tenexa/venv/bin/python``, where ``scripts/install_stack.py`` installs the pinned stack.
Without one the integration tests are skipped with that hint as the reason, except under ``CI=true``, where
they fail: CI installs the stack first, so a missing ComfyUI there is a broken CI, not a reason to skip.

Fixtures:
- ``tiny_models``: tiny stand-ins for every model in ``models.json`` under their exact file names, in a
  temporary models folder, plus cached text embeddings for ``INTEGRATION_PROMPTS`` (call
  ``tiny_models.cache_prompts([...])`` for more). The embedding files live inside the ComfyUI tree; only
  the files this session wrote are deleted at the end.
- ``comfy_server``: ComfyUI started with ``--cpu`` on a free loopback port, reading the tiny models through an
  ``extra_model_paths`` file; ``.url``, ``.port``, ``.root``, ``.log_path``, ``.models_dir``.
- ``cpu_settings``: ``Settings`` for that server with the test-only overrides: attention sdpa, VAE fp32
  (bf16 Conv3d on CPU is unusably slow), text encoder ``cache`` (the T5 loader is removed from the graph).
- ``rife_checkpoint``: random weights of the real RIFE 4.7 architecture at the path ComfyUI-Frame-Interpolation
  reads (the manifest's ``pack_path``), so ``interpolator: rife`` runs without a download. Written only when
  no file is there, and then deleted with the folders it created at session end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tenexa.config import Settings, load_settings
from tenexa.interpolation import rife_checkpoint as rife_checkpoint_path
from tenexa.request import DEFAULT_NEGATIVE_PROMPT

HERE = Path(__file__).resolve().parent
TINY_WAN = HERE / "tiny_wan.py"
DEFAULT_ROOT = Path("~/.cache/tenexa/ComfyUI").expanduser()
DEFAULT_PYTHON = Path("~/.cache/tenexa/venv/bin/python").expanduser()
BOOT_TIMEOUT = 180.0

TEST_PROMPT = "a red ball rolls slowly across a wooden table"
# Every prompt the integration tests send: theirs, the request defaults ("" and the default negative prompt).
INTEGRATION_PROMPTS = [TEST_PROMPT, "", DEFAULT_NEGATIVE_PROMPT]


@dataclass(frozen=True)
class ComfyInstall:
    root: Path
    python: Path


@dataclass
class TinyModels:
    install: ComfyInstall
    models_dir: Path
    vae: str
    model_files: list[str]
    embed_files: list[str] = field(default_factory=list)

    def cache_prompts(self, prompts: list[str]) -> None:
        """Cache random embeddings for more prompts (deleted with the others at session end)."""
        report = _run_tiny_wan(self.install, ["--embeds-only", *_prompt_args(prompts)])
        self.embed_files.extend(report["embeds"])


@dataclass(frozen=True)
class ComfyServer:
    url: str
    port: int
    root: Path
    log_path: Path
    models_dir: Path
    process: subprocess.Popen


def _prompt_args(prompts: list[str]) -> list[str]:
    return [arg for p in prompts for arg in ("--prompt", p)]


def _run_tiny_wan(install: ComfyInstall, args: list[str]) -> dict:
    proc = subprocess.run(
        [str(install.python), str(TINY_WAN), "--comfy-root", str(install.root), *args],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tiny_wan.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def comfy_install() -> ComfyInstall:
    root = Path(os.environ.get("COMFY_ROOT") or DEFAULT_ROOT).expanduser()
    python = Path(os.environ.get("COMFY_PYTHON") or DEFAULT_PYTHON).expanduser()
    wrapper = root / "custom_nodes" / "ComfyUI-WanVideoWrapper"
    if not (root / "main.py").is_file() or not wrapper.is_dir() or not python.is_file():
        reason = (
            f"no ComfyUI for the integration tier at {root} (python {python}): run `python3 scripts/install_stack.py` "
            "(add --sources DIR without GitHub access), or set COMFY_ROOT to a ComfyUI checkout with the stack.lock packs "
            "and COMFY_PYTHON to its interpreter"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the integration tier, but there is {reason}", pytrace=False)
        pytest.skip(reason)
    return ComfyInstall(root.resolve(), python)


@pytest.fixture(scope="session")
def tiny_models(comfy_install: ComfyInstall, tmp_path_factory: pytest.TempPathFactory):
    models_dir = tmp_path_factory.mktemp("tiny-wan-models")
    report = _run_tiny_wan(comfy_install, ["--models-dir", str(models_dir), *_prompt_args(INTEGRATION_PROMPTS)])
    models = TinyModels(comfy_install, models_dir, report["vae"], report["models"], list(report["embeds"]))
    yield models
    for path in models.embed_files:  # only the files this session wrote
        Path(path).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def comfy_server(comfy_install: ComfyInstall, tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("comfy-server")
    extra_paths = work / "extra_model_paths.yaml"
    folders = "\n".join(f"    {name}: {name}" for name in ("diffusion_models", "vae", "loras", "text_encoders"))
    extra_paths.write_text(f"tenexa_tiny:\n    base_path: {tiny_models.models_dir}\n{folders}\n", encoding="utf-8")
    port = _free_port()
    log_path = work / "comfyui.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(comfy_install.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch", "--extra-model-paths-config", str(extra_paths)],
        cwd=comfy_install.root, stdout=log, stderr=subprocess.STDOUT,
        # Unbuffered, as entrypoint.sh starts it: a test that reads the log right after a job must see that job's
        # lines (block-buffered, a node's print() could land in the file during the next job).
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    server = ComfyServer(url, port, comfy_install.root, log_path, tiny_models.models_dir, process)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {process.returncode} while booting:\n{_tail(log_path)}")
            try:
                if requests.get(f"{url}/system_stats", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI not ready after {BOOT_TIMEOUT:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()
        shutil.rmtree(comfy_install.root / "input" / "tenexa_it", ignore_errors=True)


@pytest.fixture(scope="session")
def rife_checkpoint(comfy_install: ComfyInstall):
    path = rife_checkpoint_path(comfy_install.root)
    pack = comfy_install.root / "custom_nodes" / "ComfyUI-Frame-Interpolation"
    if not pack.is_dir():
        pytest.fail(f"{pack} is missing: stack.lock pins ComfyUI-Frame-Interpolation; reinstall the stack "
                    "(python3 scripts/install_stack.py)")
    created = [d for d in (path.parent.parent, path.parent) if not d.exists()]
    written = [Path(p) for p in _run_tiny_wan(comfy_install, ["--rife-checkpoint", str(path)])["rife"]]
    yield path
    for file in written:  # only what this session wrote
        file.unlink(missing_ok=True)
    for folder in reversed(created):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


@pytest.fixture(scope="session")
def test_prompt() -> str:
    """A prompt whose embedding ``tiny_models`` cached."""
    return TEST_PROMPT


@pytest.fixture(scope="session")
def cpu_settings(comfy_server: ComfyServer) -> Settings:
    return load_settings({
        "COMFY_ROOT": str(comfy_server.root),
        "COMFY_PORT": str(comfy_server.port),
        "SERVER_ADDRESS": "127.0.0.1",
        "COMFY_LOG": str(comfy_server.log_path),
        "COMFY_EXEC_TIMEOUT": "600",
        "TENEXA_ATTENTION": "sdpa",
        "TENEXA_VAE_PRECISION": "fp32",
        "TENEXA_TEXT_ENCODER": "cache",
    })


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"
