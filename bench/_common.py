"""What every benchmark shares: timing statistics, the machine, the commit, JSON reports, and the stacks a
benchmark runs against (a real ComfyUI on CPU, the ComfyUI protocol double in its own process, the worker's
local API).

Reports go to ``bench/results/`` (git-ignored). Each one carries ``benchmark``, ``date`` (UTC), ``commit``
and ``machine`` beside its figures, so a number can always be traced to where and what it measured.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TESTS = REPO / "tests"
DEFAULT_COMFY_ROOT = Path("~/.cache/tenexa/ComfyUI").expanduser()
DEFAULT_COMFY_PYTHON = Path("~/.cache/tenexa/venv/bin/python").expanduser()
COMFY_BOOT_TIMEOUT = 180.0

for _path in (REPO, TESTS):  # the worker package and the test helpers (protocol double, local API starter)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


class BenchmarkSkipped(Exception):
    """The benchmark cannot run here (no ComfyUI, no GPU, ...); the message says why and what would fix it."""


# ------------------------------------------------------------------------------------------------ figures


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(seconds: list[float]) -> dict:
    """Median, 95th percentile, min, max and mean of samples given in seconds, reported in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def quiet_heap() -> None:
    """Collect, then freeze what survives, so the garbage collector does not walk the benchmark's own objects
    (the 1 MB /object_info answers of earlier sections, ...) in the middle of a timed call."""
    gc.collect()
    gc.freeze()


def sample(fn: Callable[[], object], n: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``n`` calls of ``fn`` after ``warmup`` untimed ones."""
    quiet_heap()
    try:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        return out
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------------------------- machine and report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def git_commit() -> str:
    """Short commit of the tree measured, with ``-dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def report_header(benchmark: str) -> dict:
    """What every report starts with; the load average says how busy the machine was when it began."""
    return {
        "benchmark": benchmark,
        "date": utc_now(),
        "commit": git_commit(),
        "machine": machine_info(),
        "load_average_1_5_15m": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------ network


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and its children (the local API may fork helpers)."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


# ------------------------------------------------------------------------------------------------- stacks


@dataclass(frozen=True)
class ComfyTarget:
    """A ComfyUI to measure against: its URL and the root whose input/ and output/ folders it uses."""

    url: str
    root: Path
    port: int
    pid: int
    kind: str  # "real ComfyUI (CPU)" or "protocol double"
    log_path: Path | None = None


def comfy_install() -> tuple[Path, Path]:
    """ComfyUI checkout and interpreter, found as the integration tier finds them; skipped without one."""
    root = Path(os.environ.get("COMFY_ROOT") or DEFAULT_COMFY_ROOT).expanduser()
    python = Path(os.environ.get("COMFY_PYTHON") or DEFAULT_COMFY_PYTHON).expanduser()
    if not (root / "main.py").is_file() or not (root / "custom_nodes" / "ComfyUI-VideoHelperSuite").is_dir() or not python.exists():
        raise BenchmarkSkipped(
            f"no ComfyUI at COMFY_ROOT={root} run by COMFY_PYTHON={python}: set both to a ComfyUI checkout with the "
            "stack.lock node packs and its venv (default ~/.cache/tenexa/ComfyUI and ~/.cache/tenexa/venv)"
        )
    return root.resolve(), python


@contextmanager
def real_comfyui(workdir: Path, extra_args: tuple[str, ...] = ()) -> Iterator[ComfyTarget]:
    """A real ComfyUI on CPU (``--cpu``) on a free loopback port, stopped on exit."""
    root, python = comfy_install()
    port = free_port()
    log_path = workdir / "comfyui.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch", *extra_args],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/system_stats", COMFY_BOOT_TIMEOUT, proc, "ComfyUI")
            yield ComfyTarget(f"http://127.0.0.1:{port}", root, port, proc.pid, "real ComfyUI 0.8.0 (CPU)", log_path)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; log tail:\n{log_path.read_text(errors='replace')[-3000:]}") from None
        finally:
            stop_process(proc)
            for kind in ("input", "output", "temp"):
                shutil.rmtree(root / kind / BENCH_SUBFOLDER, ignore_errors=True)


BENCH_SUBFOLDER = "tenexa_bench"  # where raw-baseline jobs put their files inside a real ComfyUI tree

_DOUBLE_CHILD = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [sys.argv[3]]
    from comfy_double import Behaviour, ComfyDouble
    double = ComfyDouble(sys.argv[1], port=int(sys.argv[2])).start()
    double.behaviour = Behaviour("success", node_seconds=float(sys.argv[4]))
    print("ready", flush=True)
    sys.stdin.read()  # runs until the parent closes our stdin
    double.stop()
    """
)


@contextmanager
def protocol_double(root: Path, node_seconds: float = 0.0) -> Iterator[ComfyTarget]:
    """The ComfyUI protocol double in its own process, so it shares no GIL with the client being measured."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DOUBLE_CHILD, str(root), str(port), str(TESTS), str(node_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the protocol double did not start")
        yield ComfyTarget(f"http://127.0.0.1:{port}", Path(root), port, proc.pid, "protocol double (tests/comfy_double.py)")
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@dataclass(frozen=True)
class LocalAPI:
    url: str
    pid: int
    idle_rss_bytes: int  # right after start, before any job


def worker_env(target: ComfyTarget, volume: Path) -> dict[str, str]:
    return {
        "COMFY_ROOT": str(target.root),
        "COMFY_PORT": str(target.port),
        "SERVER_ADDRESS": "127.0.0.1",
        "COMFY_LOG": str(target.log_path or target.root / "comfy.log"),
        "COMFY_READY_TIMEOUT": "10",
        "COMFY_EXEC_TIMEOUT": "120",
        "VOLUME_ROOT": str(volume),
        "HANDLER_VERSION": "bench",
    }


@contextmanager
def local_api(target: ComfyTarget, workdir: Path) -> Iterator[LocalAPI]:
    """``python handler.py --rp_serve_api`` (the runpod SDK's local API) pointed at ``target``."""
    from test_e2e_local_api import start_local_api

    proc, url = start_local_api(worker_env(target, workdir / "volume"), workdir / "local_api.log")
    try:
        time.sleep(0.5)  # let the server settle after its first answer before reading its idle memory
        yield LocalAPI(url, proc.pid, rss_bytes(proc.pid))
    finally:
        stop_process(proc)


def worker_settings(target: ComfyTarget, volume: Path):
    from tenexa.config import load_settings

    return load_settings(worker_env(target, volume))


# ------------------------------------------------------------------------------------------------ tables


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
