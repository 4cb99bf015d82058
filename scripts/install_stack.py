#!/usr/bin/env python3
"""Install the pinned ComfyUI stack into one folder and prove that it boots.

    python3 scripts/install_stack.py                      # ~/.cache/tenexa/ComfyUI + ~/.cache/tenexa/venv
    python3 scripts/install_stack.py --sources DIR        # archives from DIR instead of GitHub
    python3 scripts/install_stack.py check                # pip check + boot proof of an existing install
    python3 scripts/install_stack.py lock --sources DIR   # regenerate requirements-stack.lock (needs uv)

What it does, each step skipped when an earlier run already finished it (so a second run over a complete
install only re-checks, and an interrupted run resumes):
1. reads ``stack.lock``: ComfyUI and the node packs named in ``CUSTOM_NODES``, each at a pinned commit;
2. obtains each repository as GitHub's archive of that commit (``<repo>-<commit>.tar.gz`` with one top folder
   ``<repo>-<commit>``), from GitHub or from ``--sources DIR`` (or ``TENEXA_STACK_SOURCES``), where every
   archive must match ``DIR/SHA256SUMS``;
3. unpacks ComfyUI into the target and each pack into ``custom_nodes/<repo>``;
4. creates a virtual environment with the Python minor of the lock (``PYTHON_VERSION`` in stack.lock);
5. installs ``requirements-stack.lock`` (every package pinned with hashes, ``--no-deps``), then ``pip check``;
6. boots ComfyUI once (``--cpu --quick-test-for-ci``): any ``IMPORT FAILED`` line fails the install.

Standard library only: it runs before any environment exists. Errors are one line on stderr, exit status 1.
The Dockerfile runs this same script with ``--comfy-root /ComfyUI --venv /opt/venv``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_LOCK = REPO_ROOT / "stack.lock"
REQUIREMENTS_LOCK = REPO_ROOT / "requirements-stack.lock"
HANDLER_REQUIREMENTS = REPO_ROOT / "requirements.txt"
DEFAULT_PREFIX = Path("~/.cache/tenexa")
SOURCE_MARKER = ".tenexa-source.json"  # in each unpacked tree: which repository and commit it is
VENV_MARKER = ".tenexa-venv.json"  # in the venv: created completely, and which lock is installed
STAMP = ".tenexa-stack.json"  # in COMFY_ROOT: the whole install (sources, lock, boot proof) finished
BOOT_TIMEOUT = 600
UV_VERSION = "0.13.8"


class InstallError(Exception):
    """A failure with a one-line explanation for the user."""


def say(message: str) -> None:
    print(f"[install_stack] {message}", flush=True)


# ------------------------------------------------------------------------------------------ stack.lock


@dataclass(frozen=True)
class Component:
    key: str  # stack.lock prefix, e.g. KJNODES
    repo: str  # https://github.com/<owner>/<name>
    commit: str
    requirements: str  # requirements file inside the repository that feeds the lock

    @property
    def name(self) -> str:
        return self.repo.rstrip("/").rsplit("/", 1)[-1]

    @property
    def archive(self) -> str:
        return f"{self.name}-{self.commit}.tar.gz"

    @property
    def top_folder(self) -> str:
        return f"{self.name}-{self.commit}"

    @property
    def url(self) -> str:
        return f"{self.repo.rstrip('/')}/archive/{self.commit}.tar.gz"


def read_stack_lock(path: Path = STACK_LOCK) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def components(stack: dict[str, str]) -> list[Component]:
    """ComfyUI first, then the node packs in ``CUSTOM_NODES`` order."""
    keys = ["COMFYUI", *[k for k in stack.get("CUSTOM_NODES", "").split(",") if k]]
    found = []
    for key in keys:
        repo, commit = stack.get(f"{key}_REPO"), stack.get(f"{key}_COMMIT")
        if not repo or not commit or not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise InstallError(f"stack.lock: {key}_REPO and a 40-hex {key}_COMMIT are required")
        found.append(Component(key, repo, commit, stack.get(f"{key}_REQUIREMENTS", "requirements.txt")))
    return found


def lock_python(lock: Path = REQUIREMENTS_LOCK) -> str:
    """The Python minor the requirements lock was resolved for (its ``# python:`` header line)."""
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#\s*python:\s*(\d+\.\d+)", line)
        if match:
            return match.group(1)
        if not line.startswith("#"):
            break
    raise InstallError(f"{lock.name} has no '# python: X.Y' header line")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ sources


def read_checksums(sources: Path) -> dict[str, str]:
    path = sources / "SHA256SUMS"
    if not path.is_file():
        raise InstallError(f"{sources} has no SHA256SUMS; make one with: (cd {sources} && sha256sum *.tar.gz > SHA256SUMS)")
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def local_archive(component: Component, sources: Path, sums: dict[str, str]) -> Path:
    path = sources / component.archive
    if not path.is_file():
        raise InstallError(f"missing archive {component.archive} in {sources} ({component.key} at {component.commit[:8]})")
    expected = sums.get(component.archive)
    if expected is None:
        raise InstallError(f"{sources}/SHA256SUMS has no line for {component.archive}")
    actual = sha256_file(path)
    if actual != expected:
        raise InstallError(f"checksum mismatch for {component.archive}: SHA256SUMS says {expected}, the file is {actual}")
    return path


def download_archive(component: Component, cache: Path, attempts: int = 3) -> Path:
    """GitHub's archive of the commit. Its bytes are not stable across GitHub's re-packs, so the commit in the
    URL and the top folder name are what identify it; ``--sources`` with SHA256SUMS pins exact bytes."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / component.archive
    if path.is_file():
        return path
    partial = path.with_name(path.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(component.url, timeout=60) as resp, open(partial, "wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
            os.replace(partial, path)
            return path
        except (urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            if attempt == attempts:
                raise InstallError(f"could not download {component.url}: {exc}; without GitHub access use --sources DIR") from None
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def obtain_archives(comps: list[Component], sources: Path | None, cache: Path) -> dict[str, Path]:
    if sources is None:
        return {c.key: download_archive(c, cache) for c in comps}
    sums = read_checksums(sources)
    return {c.key: local_archive(c, sources, sums) for c in comps}


# ------------------------------------------------------------------------------------------ unpacking


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def extract(archive: Path, component: Component, dest: Path) -> None:
    """Unpack the archive's single top folder ``<repo>-<commit>`` as ``dest`` (into a ``.partial`` first)."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if not parts or parts[0] != component.top_folder:
                    raise InstallError(f"{archive.name}: entry {member.name!r} is outside the top folder {component.top_folder}/ "
                                       "(not GitHub's archive of that commit)")
                if len(parts) == 1:
                    continue
                member.name = str(PurePosixPath(*parts[1:]))
                members.append(member)
            tar.extractall(partial, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise InstallError(f"{archive.name} is not a readable .tar.gz ({type(exc).__name__}: {exc})") from None
    write_json(partial / SOURCE_MARKER, {"repo": component.repo, "commit": component.commit})
    os.replace(partial, dest)


def unpack_sources(comps: list[Component], archives: dict[str, Path], comfy_root: Path) -> bool:
    """True when something was (re)unpacked."""
    changed = False
    for component in comps:
        dest = comfy_root if component.key == "COMFYUI" else comfy_root / "custom_nodes" / component.name
        marker = read_marker(dest / SOURCE_MARKER)
        if marker == {"repo": component.repo, "commit": component.commit}:
            continue
        if dest.exists():
            if component.key == "COMFYUI":  # holds models/, input/, output/, user/: never replaced silently
                what = f"commit {marker['commit'][:8]}" if marker else "a ComfyUI this installer did not make"
                raise InstallError(f"{dest} holds {what}, not {component.commit[:8]}: remove it or choose another --comfy-root")
            say(f"replacing {dest.name} ({(marker or {}).get('commit', 'unknown')[:8]} -> {component.commit[:8]})")
            shutil.rmtree(dest)
        say(f"unpacking {component.archive} -> {dest}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        extract(archives[component.key], component, dest)
        changed = True
    return changed


# ------------------------------------------------------------------------------------------ environment


def _python_minor(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(minor: str, explicit: str | None) -> str:
    """An interpreter of the lock's minor: --python, this one, pythonX.Y on PATH, then pyenv's installs."""
    if explicit:
        if _python_minor(explicit) != minor:
            raise InstallError(f"--python {explicit} is not Python {minor} (the minor requirements-stack.lock was resolved for)")
        return explicit
    candidates = [sys.executable, shutil.which(f"python{minor}")]
    # pyenv's installs: $PYENV_ROOT (pyenv's own variable) first, then its default ~/.pyenv
    for root in dict.fromkeys(filter(None, (os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")))):
        candidates += sorted(glob.glob(os.path.join(root, "versions", f"{minor}.*", "bin", f"python{minor}")), reverse=True)
    for candidate in filter(None, candidates):
        if _python_minor(candidate) == minor:
            return candidate
    raise InstallError(f"no Python {minor} found (tried this interpreter, python{minor} on PATH, $PYENV_ROOT, ~/.pyenv); pass --python")


def ensure_venv(venv: Path, minor: str, python_arg: str | None) -> Path:
    python = venv / "bin" / "python"
    marker = read_marker(venv / VENV_MARKER)
    if marker and python.is_file():
        if marker.get("python") != minor:
            raise InstallError(f"{venv} is a Python {marker.get('python')} environment; the lock needs {minor}: remove it or choose another --venv")
        return python
    if venv.exists():
        say(f"{venv} is incomplete (an interrupted run?): recreating it")
        shutil.rmtree(venv)
    base = find_python(minor, python_arg)
    say(f"creating {venv} with {base}")
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"python -m venv failed: {(exc.stderr or exc.stdout).strip().splitlines()[-1:]}") from None
    write_json(venv / VENV_MARKER, {"python": minor})
    return python


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:400]


def install_requirements(python: Path, venv: Path, lock: Path, log: Path) -> bool:
    """pip install the lock unless this venv already holds exactly this lock. True when pip ran."""
    marker = read_marker(venv / VENV_MARKER) or {}
    lock_sha = sha256_file(lock)
    if marker.get("lock_sha256") == lock_sha:
        return False
    say(f"installing {lock.name} into {venv} (log: {log})")
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
           "--require-hashes", "--no-deps", "-r", str(lock)]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise InstallError(f"pip could not install {lock.name}: {_last_error(log.read_text(encoding='utf-8', errors='replace'))}")
    write_json(venv / VENV_MARKER, {**marker, "lock_sha256": lock_sha})
    return True


def pip_check(python: Path) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "check", "--disable-pip-version-check"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"pip check failed: {_last_error(proc.stdout + proc.stderr)}")


def boot_check(python: Path, comfy_root: Path, log: Path) -> float:
    """Boot ComfyUI once on CPU with every custom node; fail on any IMPORT FAILED. Returns seconds."""
    say("boot check: python main.py --cpu --quick-test-for-ci")
    started = time.monotonic()
    cmd = [str(python), "main.py", "--cpu", "--quick-test-for-ci", "--disable-auto-launch"]
    try:
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.run(cmd, cwd=comfy_root, stdout=fh, stderr=subprocess.STDOUT, timeout=BOOT_TIMEOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise InstallError(f"ComfyUI boot check did not finish within {BOOT_TIMEOUT} s (log: {log})") from None
    text = log.read_text(encoding="utf-8", errors="replace")
    failed = [line.strip() for line in text.splitlines() if "IMPORT FAILED" in line]
    if failed:
        raise InstallError(f"ComfyUI boot check: {'; '.join(failed)} (log: {log})")
    if proc.returncode != 0:
        raise InstallError(f"ComfyUI boot check exited with {proc.returncode}: {_last_error(text)} (log: {log})")
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Target:
    comfy_root: Path
    venv: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Target:
        prefix = Path(args.prefix).expanduser()
        root = Path(args.comfy_root).expanduser() if args.comfy_root else prefix / "ComfyUI"
        venv = Path(args.venv).expanduser() if args.venv else prefix / "venv"
        return cls(root.absolute(), venv.absolute())


def stamp_for(comps: list[Component], lock: Path, minor: str) -> dict:
    return {"commits": {c.key: c.commit for c in comps}, "lock_sha256": sha256_file(lock), "python": minor}


def install(args: argparse.Namespace) -> int:
    started = time.monotonic()
    target = Target.from_args(args)
    comps = components(read_stack_lock(Path(args.stack)))
    lock = Path(args.lock)
    minor = lock_python(lock)
    expected = stamp_for(comps, lock, minor)
    stamp = read_marker(target.comfy_root / STAMP) or {}
    complete = {k: stamp.get(k) for k in expected} == expected

    if not complete:
        sources = Path(args.sources).expanduser() if args.sources else None
        archives = obtain_archives(comps, sources, Path(args.prefix).expanduser() / "downloads")
        unpack_sources(comps, archives, target.comfy_root)
    python = ensure_venv(target.venv, minor, args.python)
    install_requirements(python, target.venv, lock, target.venv / "tenexa-pip-install.log")
    pip_check(python)
    if not complete:
        boot_s = boot_check(python, target.comfy_root, target.comfy_root / "tenexa-boot-check.log")
        write_json(target.comfy_root / STAMP, {**expected, "boot_check_s": round(boot_s, 1)})
        say(f"boot check passed in {boot_s:.1f} s")
    else:
        say("already complete: sources, environment and boot check match stack.lock and the lock")
    say(f"ready in {time.monotonic() - started:.1f} s: COMFY_ROOT={target.comfy_root} COMFY_PYTHON={python}")
    return 0


def check(args: argparse.Namespace) -> int:
    target = Target.from_args(args)
    python = target.venv / "bin" / "python"
    if not (target.comfy_root / "main.py").is_file() or not python.is_file():
        raise InstallError(f"no install at {target.comfy_root} with {python}")
    pip_check(python)
    seconds = boot_check(python, target.comfy_root, Path(tempfile.gettempdir()) / "tenexa-boot-check.log")
    say(f"pip check and boot check passed ({seconds:.1f} s)")
    return 0


LOCK_HEADER = """\
# requirements-stack.lock: every package of the interpreter that runs ComfyUI (and the handler, in the image),
# pinned with hashes. The Dockerfile, scripts/install_stack.py and CI all install exactly this file with
#   pip install --require-hashes --no-deps -r requirements-stack.lock
# python: {python}
# platform: Linux x86_64 (manylinux_2_28); Python {python} is the image's Ubuntu {ubuntu} python3.
# torch {torch} comes from PyPI: its Linux x86_64 wheel is the CUDA {cuda_tag} build (it pulls the nvidia-*-cu12
# wheels), so one lock serves the GPU image and a CPU machine alike (without a GPU it runs on the CPU).
# Inputs: the torch pins of stack.lock, the requirements file of ComfyUI and of each pack in CUSTOM_NODES
# ({inputs}), and requirements.txt (the handler){excluded}.
# Regenerate (uv {uv} on PATH): python3 scripts/install_stack.py lock [--sources DIR]
"""


def lock_inputs(comps: list[Component], archives: dict[str, Path], work: Path, excluded: set[str]) -> list[str]:
    """Copy each repository's requirements file into ``work`` (as <repo>/<file>), dropping excluded packages."""
    paths = []
    for component in comps:
        with tarfile.open(archives[component.key], "r:gz") as tar:
            member = tar.extractfile(f"{component.top_folder}/{component.requirements}")
            if member is None:
                raise InstallError(f"{component.archive} has no {component.requirements}")
            lines = member.read().decode("utf-8").splitlines()
        kept = [line for line in lines if re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower() not in excluded]
        dest = work / component.name / component.requirements
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n".join(kept) + "\n", encoding="utf-8")
        paths.append(str(dest.relative_to(work)))
    return paths


def make_lock(args: argparse.Namespace) -> int:
    stack = read_stack_lock(Path(args.stack))
    comps = components(stack)
    uv = shutil.which("uv")
    if uv is None:
        raise InstallError(f"uv is not on PATH: pip install uv=={UV_VERSION}")
    sources = Path(args.sources).expanduser() if args.sources else None
    archives = obtain_archives(comps, sources, Path(args.prefix).expanduser() / "downloads")
    excluded = {name.lower() for name in stack.get("LOCK_EXCLUDE", "").split(",") if name}
    python = stack["PYTHON_VERSION"]
    with tempfile.TemporaryDirectory(prefix="tenexa-lock-") as tmp:
        work = Path(tmp)
        inputs = lock_inputs(comps, archives, work, excluded)
        (work / "torch.txt").write_text("".join(f"{name}=={stack[key]}\n" for name, key in (
            ("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION"), ("torchaudio", "TORCHAUDIO_VERSION"))), encoding="utf-8")
        shutil.copy(HANDLER_REQUIREMENTS, work / "requirements.txt")
        cmd = [uv, "pip", "compile", "--python-version", python, "--python-platform", "x86_64-manylinux_2_28",
               "--generate-hashes", "--no-header", "--annotation-style", "line", "torch.txt", *inputs, "requirements.txt",
               "-o", "out.txt"]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError(f"uv pip compile failed: {_last_error(proc.stderr)}")
        body = (work / "out.txt").read_text(encoding="utf-8")
    excluded_note = f"; left out: {', '.join(sorted(excluded))} (see LOCK_EXCLUDE in stack.lock)" if excluded else ""
    header = LOCK_HEADER.format(python=python, ubuntu=stack.get("UBUNTU_VERSION", "?"), torch=stack["TORCH_VERSION"],
                                cuda_tag=stack.get("TORCH_CUDA_TAG", "?"), inputs=", ".join(inputs), excluded=excluded_note, uv=UV_VERSION)
    Path(args.lock).write_text(header + body, encoding="utf-8")
    say(f"wrote {args.lock}: {sum(1 for line in body.splitlines() if '==' in line and not line.startswith(' '))} packages")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Default target: ~/.cache/tenexa/ComfyUI and ~/.cache/tenexa/venv (the tests and entrypoint.sh look there).")
    parser.add_argument("command", nargs="?", choices=("install", "check", "lock"), default="install")
    parser.add_argument("--prefix", default=str(DEFAULT_PREFIX), help="folder for ComfyUI/, venv/ and downloads/ (default ~/.cache/tenexa)")
    parser.add_argument("--comfy-root", help="where ComfyUI goes (default PREFIX/ComfyUI)")
    parser.add_argument("--venv", help="where the virtual environment goes (default PREFIX/venv)")
    parser.add_argument("--sources", default=os.environ.get("TENEXA_STACK_SOURCES") or None,
                        help="folder of <repo>-<commit>.tar.gz archives + SHA256SUMS instead of GitHub (default $TENEXA_STACK_SOURCES)")
    parser.add_argument("--python", help="interpreter for the venv (default: one of the lock's Python minor)")
    parser.add_argument("--stack", default=str(STACK_LOCK), help="the stack.lock to read (default: the repository's)")
    parser.add_argument("--lock", default=str(REQUIREMENTS_LOCK), help="requirements lock to install or write (default: the repository's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return {"install": install, "check": check, "lock": make_lock}[args.command](args)
    except InstallError as exc:
        print(f"install_stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("install_stack: interrupted; run it again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
