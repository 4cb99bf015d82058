"""Latency of the cheap modes and the worker's start-up cost, each beside a baseline measured in the same run.

- **test mode** (``{"test": true}``): in process (``tenexa.diagnostics.health``, and ``handler.handler`` on an
  event loop as runpod calls it, and through ``asyncio.run``), with ComfyUI up and down; through the local API
  (``POST /runsync``). Baselines: a bare ``GET /system_stats`` to ComfyUI on a kept-alive session, a refused
  connection, and a bare round trip to the local API (``GET /openapi.json``).
- **diagnose** with and without the self-test, in process and through the local API. Baseline: a bare
  ``GET /object_info`` (diagnose's largest single request).
- **import** of ``handler`` in a fresh interpreter (timed inside the child, so interpreter start-up is not
  counted), ``import runpod`` separately (``handler.py`` imports it only under ``__main__`` and for progress);
  baselines: importing only the third-party modules handler needs (asyncio, requests, websocket, PIL, av) and
  ``python -c pass`` wall time. Also the top-level packages that cost most (``-X importtime``).
- **idle memory**: RSS of a fresh interpreter after ``import handler`` (baseline: after nothing), and of the
  local API server idle, before its first job and again after the jobs of this run.

ComfyUI: a real one on CPU (``COMFY_ROOT``/``COMFY_PYTHON`` or ``~/.cache/tenexa``), else the protocol double,
named in the report.

    .venv/bin/python bench/latency.py
    .venv/bin/python bench/latency.py --test-jobs 50 --diagnose-jobs 5 --import-runs 5

Prints a table and writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import _common
import requests
from _common import BenchmarkSkipped, ComfyTarget, LocalAPI, sample, summarize

# The third-party modules handler.py needs at import: importing only these is the floor the worker's own code sits on.
DEPENDENCY_FLOOR = "asyncio,requests,websocket,PIL.Image,av"
TARGETS = {"test_in_process_ms": 20.0, "test_local_api_ms": 100.0, "import_ms": 300.0}

_IMPORT_CHILD = textwrap.dedent(
    """
    import sys, time
    started = time.perf_counter()
    for name in sys.argv[1].split(","):
        if name != "-":
            __import__(name)
    elapsed = time.perf_counter() - started
    rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    print(elapsed, rss)
    """
)


# ------------------------------------------------------------------------------------------- import/memory


def _child_import(module: str | None) -> tuple[float, float, int]:
    """(wall seconds of the whole child, seconds of the import inside it, RSS after it)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHILD, module or "-"], cwd=_common.REPO, capture_output=True, text=True, timeout=120
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} failed:\n{done.stderr[-2000:]}")
    seconds, rss = done.stdout.split()
    return wall, float(seconds), int(rss)


def _bare_wall() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def top_imports(module: str = "handler", top: int = 10) -> list[dict]:
    """Top-level packages by cumulative import time (``-X importtime``), where each is first imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=_common.REPO, capture_output=True, text=True, timeout=120
    )
    found: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        name = name.strip()
        if "." not in name or name.startswith("tenexa."):
            found[name] = max(found.get(name, 0), int(cumulative))
    ranked = sorted(found.items(), key=lambda kv: -kv[1])
    return [{"module": name, "cumulative_ms": round(us / 1000, 1)} for name, us in ranked if name != module][:top]


def startup(runs: int, runpod_runs: int) -> dict:
    """Import time and idle memory of a fresh interpreter: handler, runpod, and nothing (the baseline)."""
    _child_import("handler")  # warm the file cache and __pycache__, as a deployed image has them
    bare_walls, handler_walls, handler_imports, handler_rss, bare_rss, floor = [], [], [], [], [], []
    for _ in range(runs):
        bare_walls.append(_bare_wall())
        wall, seconds, rss = _child_import("handler")
        handler_walls.append(wall)
        handler_imports.append(seconds)
        handler_rss.append(rss)
        bare_rss.append(_child_import(None)[2])
        floor.append(_child_import(DEPENDENCY_FLOOR)[1])
    runpod = [_child_import("runpod") for _ in range(runpod_runs)]
    return {
        "runs": runs,
        "import_handler": summarize(handler_imports),
        "python_c_import_handler_wall": summarize(handler_walls),
        "python_c_pass_wall": summarize(bare_walls),
        "import_dependency_floor": summarize(floor),
        "dependency_floor_modules": DEPENDENCY_FLOOR.split(","),
        "import_handler_wall_minus_bare_ms": round(summarize(handler_walls)["median_ms"] - summarize(bare_walls)["median_ms"], 3),
        "import_runpod": summarize([r[1] for r in runpod]) if runpod else None,
        "rss_after_import_handler_mb": round(sorted(handler_rss)[len(handler_rss) // 2] / 1e6, 1),
        "rss_bare_interpreter_mb": round(sorted(bare_rss)[len(bare_rss) // 2] / 1e6, 1),
        "rss_after_import_runpod_mb": round(sorted(r[2] for r in runpod)[len(runpod) // 2] / 1e6, 1) if runpod else None,
        "top_imports": top_imports("handler"),
    }


# ---------------------------------------------------------------------------------------------- test mode


@contextmanager
def _in_process_worker(target: ComfyTarget, volume: Path) -> Iterator:
    """``handler`` imported here and pointed at ``target`` (its module globals are what ``handler()`` reads),
    put back as it was afterwards."""
    import handler as worker
    from tenexa.comfy import ComfyClient

    saved = worker.SETTINGS, worker.CLIENT
    worker.SETTINGS = _common.worker_settings(target, volume)
    worker.CLIENT = ComfyClient(worker.SETTINGS.comfy_url)
    try:
        yield worker
    finally:
        worker.SETTINGS, worker.CLIENT = saved


def test_mode(target: ComfyTarget, api: LocalAPI | None, jobs: int, volume: Path) -> dict:
    from tenexa.comfy import ComfyClient
    from tenexa.diagnostics import health

    stack = ExitStack()
    worker = stack.enter_context(_in_process_worker(target, volume))
    settings = worker.SETTINGS
    job = {"id": "bench", "input": {"test": True}}
    loop = asyncio.new_event_loop()
    stack.callback(loop.close)

    def check(out: dict, up: bool) -> None:
        if out.get("comfyui_up") is not up:
            raise RuntimeError(f"test mode said comfyui_up={out.get('comfyui_up')}, expected {up}: {out}")

    session = requests.Session()
    session.trust_env = False
    result: dict = {"target": target.kind, "jobs": jobs}
    try:
        result["health_in_process"] = summarize(sample(lambda: check(health(settings, worker.CLIENT), True), jobs, warmup=3))
        result["handler_on_event_loop"] = summarize(
            sample(lambda: check(loop.run_until_complete(worker.handler(job)), True), jobs, warmup=3)
        )
        result["handler_asyncio_run"] = summarize(sample(lambda: check(asyncio.run(worker.handler(job)), True), jobs, warmup=3))
        result["baseline_get_system_stats"] = summarize(
            sample(lambda: session.get(target.url + "/system_stats", timeout=5).raise_for_status(), jobs, warmup=3)
        )

        down_url = f"http://127.0.0.1:{_common.free_port()}"  # nothing listens there
        down_client = ComfyClient(down_url)
        result["health_in_process_comfy_down"] = summarize(sample(lambda: check(health(settings, down_client), False), jobs, warmup=3))

        def refused() -> None:
            try:
                session.get(down_url + "/system_stats", timeout=5)
            except requests.ConnectionError:
                return
            raise RuntimeError("expected a refused connection")

        result["baseline_refused_connection"] = summarize(sample(refused, jobs, warmup=3))
    finally:
        stack.close()
    if api is not None:

        def runsync() -> None:
            body = session.post(api.url + "/runsync", json={"input": {"test": True}}, timeout=30).json()
            if body.get("status") != "COMPLETED":
                raise RuntimeError(f"test mode through the local API: {body}")
            check(body["output"], True)

        result["local_api_runsync"] = summarize(sample(runsync, jobs, warmup=3))
        result["baseline_local_api_openapi"] = summarize(
            sample(lambda: session.get(api.url + "/openapi.json", timeout=30).raise_for_status(), jobs, warmup=3)
        )
    return result


# ----------------------------------------------------------------------------------------------- diagnose


def diagnose_latency(target: ComfyTarget, api: LocalAPI | None, jobs: int, volume: Path) -> dict:
    session = requests.Session()
    session.trust_env = False
    result: dict = {"target": target.kind, "jobs": jobs}
    with _in_process_worker(target, volume) as worker:
        _diagnose_cases(worker, api, session, jobs, result)
    result["baseline_get_object_info"] = summarize(
        sample(lambda: session.get(target.url + "/object_info", timeout=60).raise_for_status(), jobs, warmup=1)
    )
    return result


def _diagnose_cases(worker, api: LocalAPI | None, session: requests.Session, jobs: int, result: dict) -> None:
    from tenexa.diagnostics import diagnose

    for selftest in (False, True):
        key = "with_selftest" if selftest else "without_selftest"

        def in_process(selftest: bool = selftest) -> None:
            report = diagnose(worker.SETTINGS, worker.CLIENT, selftest=selftest)
            if not report["comfyui_reachable"] or (selftest and not report["selftest"]["ok"]):
                raise RuntimeError(f"diagnose failed: {json.dumps(report)[:1000]}")

        result[f"in_process_{key}"] = summarize(sample(in_process, jobs, warmup=1))
        if api is not None:

            def runsync(selftest: bool = selftest) -> None:
                body = session.post(api.url + "/runsync", json={"input": {"diagnose": True, "selftest": selftest}}, timeout=120).json()
                if body.get("status") != "COMPLETED" or not body["output"].get("comfyui_reachable"):
                    raise RuntimeError(f"diagnose through the local API: {str(body)[:1000]}")

            result[f"local_api_{key}"] = summarize(sample(runsync, jobs, warmup=1))


# --------------------------------------------------------------------------------------------------- table


def rows(report: dict) -> list[list[object]]:
    out: list[list[object]] = []

    def med(fig: dict | None) -> str:
        return "-" if not fig else f"{fig['median_ms']:.1f}"

    def p95(fig: dict | None) -> str:
        return "-" if not fig else f"{fig['p95_ms']:.1f}"

    def met(fig: dict | None, target: float | None) -> str:
        if target is None or not fig:
            return "-"
        return "yes" if fig["median_ms"] <= target else "NO"

    if "startup" in report:
        s = report["startup"]
        out.append(
            [
                "import handler (in child)",
                med(s["import_handler"]),
                p95(s["import_handler"]),
                f"deps only {med(s['import_dependency_floor'])}",
                f"<= {TARGETS['import_ms']:.0f}",
                met(s["import_handler"], TARGETS["import_ms"]),
            ]
        )
        out.append(
            [
                "python -c 'import handler' wall",
                med(s["python_c_import_handler_wall"]),
                p95(s["python_c_import_handler_wall"]),
                f"python -c pass {med(s['python_c_pass_wall'])}",
                "-",
                "-",
            ]
        )
        if s.get("import_runpod"):
            out.append(["import runpod (lazy in handler)", med(s["import_runpod"]), p95(s["import_runpod"]), "-", "-", "-"])
        out.append(
            ["RSS after import handler (MB)", s["rss_after_import_handler_mb"], "-", f"bare {s['rss_bare_interpreter_mb']}", "-", "-"]
        )
    if "test_mode" in report:
        t = report["test_mode"]
        tgt = TARGETS["test_in_process_ms"]
        base = f"GET /system_stats {med(t['baseline_get_system_stats'])}"
        out.append(
            [
                "test mode: health() in process",
                med(t["health_in_process"]),
                p95(t["health_in_process"]),
                base,
                f"<= {tgt:.0f}",
                met(t["health_in_process"], tgt),
            ]
        )
        out.append(
            [
                "test mode: handler() on a loop",
                med(t["handler_on_event_loop"]),
                p95(t["handler_on_event_loop"]),
                base,
                f"<= {tgt:.0f}",
                met(t["handler_on_event_loop"], tgt),
            ]
        )
        out.append(["test mode: asyncio.run(handler())", med(t["handler_asyncio_run"]), p95(t["handler_asyncio_run"]), base, "-", "-"])
        out.append(
            [
                "test mode: ComfyUI down",
                med(t["health_in_process_comfy_down"]),
                p95(t["health_in_process_comfy_down"]),
                f"refused {med(t['baseline_refused_connection'])}",
                f"<= {tgt:.0f}",
                met(t["health_in_process_comfy_down"], tgt),
            ]
        )
        if "local_api_runsync" in t:
            tgt = TARGETS["test_local_api_ms"]
            out.append(
                [
                    "test mode: local API /runsync",
                    med(t["local_api_runsync"]),
                    p95(t["local_api_runsync"]),
                    f"GET /openapi.json {med(t['baseline_local_api_openapi'])}",
                    f"<= {tgt:.0f}",
                    met(t["local_api_runsync"], tgt),
                ]
            )
    if "diagnose" in report:
        d = report["diagnose"]
        base = f"GET /object_info {med(d['baseline_get_object_info'])}"
        for key, label in (
            ("in_process_without_selftest", "diagnose in process"),
            ("in_process_with_selftest", "diagnose+selftest in process"),
            ("local_api_without_selftest", "diagnose via local API"),
            ("local_api_with_selftest", "diagnose+selftest via local API"),
        ):
            if key in d:
                out.append([label, med(d[key]), p95(d[key]), base, "-", "-"])
    if "local_api_rss_mb" in report:
        m = report["local_api_rss_mb"]
        out.append(["local API server RSS (MB)", f"idle {m['idle']}", "-", f"after jobs {m.get('after_jobs', '-')}", "-", "-"])
    return out


def print_rows(report: dict) -> None:
    _common.print_table(["figure", "median ms", "p95 ms", "baseline (median ms)", "target ms", "met"], rows(report))


# ---------------------------------------------------------------------------------------------------- main


def run(test_jobs: int = 100, diagnose_jobs: int = 10, import_runs: int = 10, runpod_runs: int = 5, out: Path | None = None) -> dict:
    report = _common.report_header("latency")
    report["targets"] = TARGETS
    report["startup"] = startup(import_runs, runpod_runs)
    with tempfile.TemporaryDirectory(prefix="tenexa-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        try:
            target = stack.enter_context(_common.real_comfyui(work))
        except BenchmarkSkipped as skip:
            print(f"note: {skip}; measuring against the protocol double instead")
            report["comfyui_note"] = f"no real ComfyUI ({skip}); measured against the protocol double"
            target = stack.enter_context(_common.protocol_double(work / "ComfyUI"))
        api = stack.enter_context(_common.local_api(target, work))
        report["test_mode"] = test_mode(target, api, test_jobs, work / "volume")
        report["diagnose"] = diagnose_latency(target, api, diagnose_jobs, work / "volume")
        report["local_api_rss_mb"] = {"idle": round(api.idle_rss_bytes / 1e6, 1), "after_jobs": round(_common.rss_bytes(api.pid) / 1e6, 1)}
    print_rows(report)
    path = _common.write_report(out or _common.RESULTS / "latency.json", report)
    print(f"wrote {_common.relative(path)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-jobs", type=int, default=100, help="timed test-mode calls per case")
    parser.add_argument("--diagnose-jobs", type=int, default=10, help="timed diagnose calls per case")
    parser.add_argument("--import-runs", type=int, default=10, help="fresh interpreters importing handler")
    parser.add_argument("--runpod-runs", type=int, default=5, help="fresh interpreters importing runpod (about 2 s each)")
    args = parser.parse_args(argv)
    run(args.test_jobs, args.diagnose_jobs, args.import_runs, args.runpod_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
