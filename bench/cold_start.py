"""Cold-start timeline of entrypoint.sh with a real ComfyUI on CPU: start -> ComfyUI ready -> handler ready.

Runs ``entrypoint.sh`` with ``ALLOW_CPU=1 MODELS=none SERVE_API_LOCALLY=true`` and records, on this side's
monotonic clock, when the entrypoint logs each phase, when ComfyUI answers ``/system_stats`` and when the
handler's local API first completes ``{"input": {"test": true}}``; then SIGTERM and how long shutdown takes.

ComfyUI: ``COMFY_ROOT`` (default ``~/.cache/tenexa/ComfyUI``) with the pinned packs, run by ``COMFY_PYTHON``
(default ``~/.cache/tenexa/venv/bin/python``); the handler by ``HANDLER_PYTHON`` (default: this interpreter).

    python bench/cold_start.py --runs 2

Prints a table and writes bench/results/cold_start-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common
import requests
from _common import REPO, RESULTS, BenchmarkSkipped, free_port

PHASE = re.compile(r"\[entrypoint\] phase (\S+): ([\d.]+) s")


def one_run(comfy_root: Path, comfy_python: str, handler_python: str, timeout: float) -> dict:
    comfy_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "COMFY_ROOT": str(comfy_root),
        "COMFY_PYTHON": comfy_python,
        "HANDLER_PYTHON": handler_python,
        "ALLOW_CPU": "1",
        "MODELS": "none",
        "SERVE_API_LOCALLY": "true",
        "RP_API_HOST": "127.0.0.1",
        "RP_API_PORT": str(api_port),
        "COMFY_PORT": str(comfy_port),
        "COMFY_READY_TIMEOUT": str(int(timeout)),
        "RUNPOD_LOG_LEVEL": "WARN",
        "UVICORN_LOG_LEVEL": "warning",
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(REPO / "entrypoint.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    events: dict[str, float] = {}
    phases: dict[str, float] = {}
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if m := PHASE.search(line):
                phases[m.group(1)] = float(m.group(2))
                events.setdefault(f"log: {m.group(1)} done", time.monotonic() - t0)
            if "starting handler" in line:
                events.setdefault("log: handler started", time.monotonic() - t0)

    threading.Thread(target=read, daemon=True).start()
    comfy_url = f"http://127.0.0.1:{comfy_port}/system_stats"
    api_url = f"http://127.0.0.1:{api_port}/runsync"
    deadline = t0 + timeout + 60
    test_output = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if "comfyui_ready" not in events:
                try:
                    if requests.get(comfy_url, timeout=1).ok:
                        events["comfyui_ready"] = time.monotonic() - t0
                except requests.RequestException:
                    pass
            else:
                try:
                    resp = requests.post(api_url, json={"input": {"test": True}}, timeout=30)
                    body = resp.json()
                    if body.get("status") == "COMPLETED":
                        events["handler_ready"] = time.monotonic() - t0
                        test_output = body.get("output")
                        break
                except (requests.RequestException, ValueError):
                    pass
            time.sleep(0.1)
        if "handler_ready" not in events:
            raise SystemExit("entrypoint never became ready; its output:\n" + "\n".join(lines[-60:]))
        stop0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        stopped = time.monotonic() - stop0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {
        "events_s": {k: round(v, 2) for k, v in sorted(events.items(), key=lambda kv: kv[1])},
        "phases_s": phases,
        "shutdown_s": round(stopped, 2),
        "exit_code": proc.returncode,
        "test_output": test_output,
    }


def run(runs: int = 2, timeout: float = 180) -> dict:
    """Measure ``runs`` cold starts, print the table, write the JSON; BenchmarkSkipped without a ComfyUI."""
    comfy_root, comfy_python = _common.comfy_install()
    handler_python = os.environ.get("HANDLER_PYTHON") or sys.executable
    measured = [one_run(comfy_root, str(comfy_python), handler_python, timeout) for _ in range(runs)]

    print(f"{'run':>3} {'ComfyUI ready':>14} {'handler ready':>14} {'comfy phase':>12} {'shutdown':>9} {'exit':>5}")
    for i, r in enumerate(measured, 1):
        e = r["events_s"]
        print(
            f"{i:>3} {e['comfyui_ready']:>13.2f}s {e['handler_ready']:>13.2f}s {r['phases_s'].get('comfyui-ready', 0):>11.1f}s "
            f"{r['shutdown_s']:>8.2f}s {r['exit_code']:>5}"
        )
    report = {**_common.report_header("cold_start"), "comfy_root": str(comfy_root), "runs": measured}
    out = _common.write_report(RESULTS / f"cold_start-{_common.utc_stamp()}.json", report)
    print(f"wrote {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="first run is cold (file cache empty or not), later ones warm")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    try:
        run(args.runs, args.timeout)
    except BenchmarkSkipped as skip:
        print(f"SKIPPED: {skip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
