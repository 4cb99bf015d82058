"""scripts/install_stack.py on a throw-away stack: sources, checksums, resume, no-op rerun, pip and boot failures.

The stack here is small but real in every step the installer takes: GitHub-layout .tar.gz archives with a
SHA256SUMS, a real ``python -m venv``, a real ``pip install --require-hashes --no-deps`` of a lock (one local wheel
built by the test), a real ``pip check`` and a boot of the fake ComfyUI's main.py, which imports each custom node the
way ComfyUI does and prints ComfyUI's ``IMPORT FAILED`` line for one that raises. The installer's run over the real
pinned stack is what CI does before the tests (and tests/integration/test_install_cpu.py checks its rerun).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tenexa.config import REPO_ROOT

INSTALLER = REPO_ROOT / "scripts" / "install_stack.py"
MINOR = "{}.{}".format(*sys.version_info[:2])
COMFY_COMMIT, PACK_COMMIT = "a" * 40, "b" * 40

FAKE_MAIN = textwrap.dedent(
    """
    import importlib.util, pathlib, sys, traceback
    assert "--quick-test-for-ci" in sys.argv and "--cpu" in sys.argv, sys.argv
    import tiny_tenexa_probe  # the locked package is installed in this interpreter
    print("Import times for custom nodes:")
    for init in sorted(pathlib.Path("custom_nodes").glob("*/__init__.py")):
        try:
            spec = importlib.util.spec_from_file_location(init.parent.name, init)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            print(f"   0.0 seconds: {init.parent}")
        except Exception:
            traceback.print_exc()
            print(f"   0.0 seconds (IMPORT FAILED): {init.parent}")
    """
)


def _targz(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _wheel(folder: Path) -> Path:
    path = folder / "tiny_tenexa_probe-1.0-py3-none-any.whl"
    dist = "tiny_tenexa_probe-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("tiny_tenexa_probe/__init__.py", "VALUE = 1\n")
        whl.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: tiny-tenexa-probe\nVersion: 1.0\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: tenexa-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")
    return path


@dataclass
class FakeStack:
    root: Path
    sources: Path
    stack: Path
    lock: Path
    prefix: Path

    @property
    def comfy_root(self) -> Path:
        return self.prefix / "ComfyUI"

    @property
    def venv(self) -> Path:
        return self.prefix / "venv"

    def pack_archive(self, files: dict[str, str], top: str | None = None) -> None:
        """(Re)write the pack's archive and its checksum line."""
        _targz(self.sources / f"Pack-{PACK_COMMIT}.tar.gz", {f"{top or f'Pack-{PACK_COMMIT}'}/{k}": v for k, v in files.items()})
        self.write_sums()

    def write_sums(self) -> None:
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(self.sources.glob("*.tar.gz"))]
        (self.sources / "SHA256SUMS").write_text("\n".join(lines) + "\n")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(INSTALLER), *args, "--prefix", str(self.prefix), "--sources", str(self.sources),
               "--stack", str(self.stack), "--lock", str(self.lock), "--python", sys.executable]
        env = {k: v for k, v in os.environ.items() if k != "TENEXA_STACK_SOURCES"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def fake(tmp_path: Path) -> FakeStack:
    sources = tmp_path / "sources"
    sources.mkdir()
    stack = tmp_path / "stack.lock"
    stack.write_text(textwrap.dedent(f"""\
        # a two-repository stack
        COMFYUI_REPO=https://github.com/example/ComfyUI
        COMFYUI_COMMIT={COMFY_COMMIT}
        PACK_REPO=https://github.com/example/Pack
        PACK_COMMIT={PACK_COMMIT}
        CUSTOM_NODES=PACK
        PYTHON_VERSION={MINOR}
        """))
    wheel = _wheel(tmp_path)
    lock = tmp_path / "requirements-stack.lock"
    lock.write_text(f"# python: {MINOR}\n{wheel} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n")
    top = f"ComfyUI-{COMFY_COMMIT}"
    _targz(sources / f"ComfyUI-{COMFY_COMMIT}.tar.gz", {f"{top}/main.py": FAKE_MAIN, f"{top}/custom_nodes/example_node.py.example": ""})
    fake = FakeStack(tmp_path, sources, stack, lock, tmp_path / "prefix")
    fake.pack_archive({"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"})
    return fake


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install_stack: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_installs_resumes_and_a_second_run_changes_nothing(fake: FakeStack):
    first = fake.run()
    assert first.returncode == 0, first.stderr
    assert (fake.comfy_root / "main.py").is_file()
    assert (fake.comfy_root / "custom_nodes" / "Pack" / "__init__.py").is_file()
    assert json.loads((fake.comfy_root / "custom_nodes" / "Pack" / ".tenexa-source.json").read_text())["commit"] == PACK_COMMIT
    probe = subprocess.run([str(fake.venv / "bin" / "python"), "-c", "import tiny_tenexa_probe as p; print(p.VALUE)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "1", probe.stderr
    stamp = json.loads((fake.comfy_root / ".tenexa-stack.json").read_text())
    assert stamp["commits"] == {"COMFYUI": COMFY_COMMIT, "PACK": PACK_COMMIT} and stamp["python"] == MINOR

    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in fake.prefix.rglob("*") if "__pycache__" not in p.parts}

    before = snapshot()
    second = fake.run()
    assert second.returncode == 0, second.stderr
    assert "already complete" in second.stdout and "installing" not in second.stdout and "unpacking" not in second.stdout
    assert snapshot() == before, "a rerun over a complete install must not touch a file"

    # An interrupted run: a pack half unpacked, the stamp not yet written. The rerun redoes only what is missing.
    pack = fake.comfy_root / "custom_nodes" / "Pack"
    for path in sorted(pack.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    pack.rmdir()
    (pack.parent / "Pack.partial").mkdir()
    (pack.parent / "Pack.partial" / "half-written.py").write_text("")
    (fake.comfy_root / ".tenexa-stack.json").unlink()
    pip_log = fake.venv / "tenexa-pip-install.log"
    pip_log_mtime = pip_log.stat().st_mtime_ns
    resumed = fake.run()
    assert resumed.returncode == 0, resumed.stderr
    assert "unpacking Pack-" in resumed.stdout and "unpacking ComfyUI-" not in resumed.stdout
    assert (pack / "__init__.py").is_file() and not (pack.parent / "Pack.partial").exists()
    assert pip_log.stat().st_mtime_ns == pip_log_mtime, "the environment was complete: pip must not run again"
    assert (fake.comfy_root / ".tenexa-stack.json").is_file()


def test_a_new_pack_commit_replaces_the_pack_but_never_comfyui(fake: FakeStack):
    assert fake.run().returncode == 0
    new_commit = "c" * 40
    fake.stack.write_text(fake.stack.read_text().replace(PACK_COMMIT, new_commit))
    _targz(fake.sources / f"Pack-{new_commit}.tar.gz", {f"Pack-{new_commit}/__init__.py": "VERSION = 2\n"})
    fake.write_sums()
    result = fake.run()
    assert result.returncode == 0, result.stderr
    assert "VERSION = 2" in (fake.comfy_root / "custom_nodes" / "Pack" / "__init__.py").read_text()

    fake.stack.write_text(fake.stack.read_text().replace(COMFY_COMMIT, "d" * 40))
    _targz(fake.sources / f"ComfyUI-{'d' * 40}.tar.gz", {f"ComfyUI-{'d' * 40}/main.py": FAKE_MAIN})
    fake.write_sums()
    line = _error_line(fake.run())
    assert "remove it or choose another --comfy-root" in line and "aaaaaaaa" in line


def test_missing_archive_is_one_line(fake: FakeStack):
    (fake.sources / f"Pack-{PACK_COMMIT}.tar.gz").unlink()
    line = _error_line(fake.run())
    assert f"missing archive Pack-{PACK_COMMIT}.tar.gz" in line
    assert not fake.comfy_root.exists(), "nothing is unpacked before every archive is verified"


def test_checksum_mismatch_is_one_line(fake: FakeStack):
    sums = (fake.sources / "SHA256SUMS").read_text()
    good = hashlib.sha256((fake.sources / f"Pack-{PACK_COMMIT}.tar.gz").read_bytes()).hexdigest()
    (fake.sources / "SHA256SUMS").write_text(sums.replace(good, "0" * 64))
    line = _error_line(fake.run())
    assert f"checksum mismatch for Pack-{PACK_COMMIT}.tar.gz" in line and good in line
    assert not fake.comfy_root.exists()


def test_sources_without_checksums_are_refused(fake: FakeStack):
    (fake.sources / "SHA256SUMS").unlink()
    assert "has no SHA256SUMS" in _error_line(fake.run())


@pytest.mark.parametrize("top", ["Pack-wrong", "../escape"])
def test_an_archive_that_is_not_githubs_layout_is_refused(fake: FakeStack, top: str):
    fake.pack_archive({"__init__.py": ""}, top=top)
    line = _error_line(fake.run())
    assert "outside the top folder" in line
    assert not (fake.comfy_root / "custom_nodes" / "Pack").exists() and not (fake.root / "escape").exists()


def test_failed_pip_install_is_one_line_and_resumable(fake: FakeStack):
    lock_text = fake.lock.read_text()
    fake.lock.write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, lock_text))
    line = _error_line(fake.run())
    assert line.startswith("install_stack: error: pip could not install") and "hash" in line.lower()
    fake.lock.write_text(lock_text)
    assert fake.run().returncode == 0, "the next run resumes with the fixed lock"


def test_import_failure_in_the_boot_check_fails_the_install(fake: FakeStack):
    fake.pack_archive({"__init__.py": "raise ImportError('No module named sageattention_x')\n"})
    line = _error_line(fake.run())
    assert "ComfyUI boot check: " in line and "(IMPORT FAILED): custom_nodes/Pack" in line
    assert not (fake.comfy_root / ".tenexa-stack.json").exists(), "a failed boot never marks the install complete"


def test_wrong_python_minor_is_refused(fake: FakeStack):
    fake.lock.write_text(fake.lock.read_text().replace(f"# python: {MINOR}", "# python: 2.7"))
    assert "is not Python 2.7" in _error_line(fake.run())


def test_python_is_found_under_pyenv_root_when_home_is_elsewhere(tmp_path, monkeypatch):
    """CI may run with an empty $HOME while pyenv lives at $PYENV_ROOT (pyenv's own variable)."""
    install_stack = _installer_module()
    pyenv = tmp_path / "pyenv"
    wanted = pyenv / "versions" / "9.9.1" / "bin" / "python9.9"
    wanted.parent.mkdir(parents=True)
    wanted.write_text("")
    monkeypatch.setenv("PYENV_ROOT", str(pyenv))
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr(install_stack.shutil, "which", lambda _name: None)
    monkeypatch.setattr(install_stack, "_python_minor", lambda path: "9.9" if path == str(wanted) else "0.0")
    assert install_stack.find_python("9.9", None) == str(wanted)
    monkeypatch.delenv("PYENV_ROOT")
    with pytest.raises(install_stack.InstallError, match=r"no Python 9.9 found .*\$PYENV_ROOT, ~/.pyenv"):
        install_stack.find_python("9.9", None)


# --- the repository's own stack: one truth read by the installer, the Dockerfile and CI ---------------------------


def _installer_module():
    sys.path.insert(0, str(INSTALLER.parent))
    try:
        import install_stack
    finally:
        sys.path.pop(0)
    return install_stack


def test_stack_lock_names_github_archives_of_each_commit():
    install_stack = _installer_module()
    comps = install_stack.components(install_stack.read_stack_lock())
    assert [c.name for c in comps] == ["ComfyUI", "ComfyUI-WanVideoWrapper", "ComfyUI-VideoHelperSuite", "ComfyUI-KJNodes",
                                       "ComfyUI-Frame-Interpolation"]
    for c in comps:
        assert c.url == f"{c.repo}/archive/{c.commit}.tar.gz" and c.repo.startswith("https://github.com/")
        assert c.archive == f"{c.name}-{c.commit}.tar.gz" and c.top_folder == f"{c.name}-{c.commit}"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+)==([^\s;\\#]+)", line.strip())
        if match:
            pins[re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")] = match.group(2)
    return pins


def test_requirements_lock_matches_its_inputs():
    install_stack = _installer_module()
    stack = install_stack.read_stack_lock()
    lock = REPO_ROOT / "requirements-stack.lock"
    assert install_stack.lock_python(lock) == stack["PYTHON_VERSION"]
    locked = _pins(lock)
    assert {k: locked[k] for k in ("torch", "torchvision", "torchaudio")} == {
        "torch": stack["TORCH_VERSION"], "torchvision": stack["TORCHVISION_VERSION"], "torchaudio": stack["TORCHAUDIO_VERSION"]}
    handler = _pins(REPO_ROOT / "requirements.txt")
    assert {k: locked.get(k) for k in handler} == handler, "the handler's pins are the lock's (one environment in the image)"
    body = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    packages = [line for line in body if not line.startswith(" ")]
    assert packages and all("==" in p and p.endswith("\\") for p in packages), "every package pinned and followed by hashes"
    assert not any(p.startswith(("opencv-contrib-python", "sageattention")) for p in packages)


def test_dockerfile_ci_and_installer_install_the_same_files():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = re.search(r"^COPY stack\.lock requirements-stack\.lock (\S+)$", dockerfile, re.M)
    assert copied, "the builder copies stack.lock and requirements-stack.lock"
    assert re.search(r"^COPY scripts/install_stack\.py \S+$", dockerfile, re.M)
    run = re.search(r"^RUN python3 (\S+)/scripts/install_stack\.py --comfy-root /ComfyUI --venv /opt/venv", dockerfile, re.M)
    assert run and copied.group(1).rstrip("/") == run.group(1), "the installer runs beside the lock files it was copied with"
    assert "install_stack.py check --comfy-root /ComfyUI --venv /opt/venv" in dockerfile
    assert "requirements.txt" not in dockerfile.split("AS runtime")[0].replace("requirements-stack", ""), \
        "the builder installs nothing beside the lock"
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert "python3 scripts/install_stack.py" in ci
    install_stack = _installer_module()
    assert install_stack.STACK_LOCK == REPO_ROOT / "stack.lock"
    assert install_stack.REQUIREMENTS_LOCK == REPO_ROOT / "requirements-stack.lock"
