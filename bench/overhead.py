"""Worker overhead per job: what the worker adds around ComfyUI's own execution, for self-test-sized videos.

Two cases, each job timed end to end and compared, job by job, with a raw client doing the same protocol
work without the worker (``POST /upload/image``, ``POST /prompt`` of the same graph, follow the WebSocket to
ComfyUI's completion marker, ``GET /history``, ``GET /view``), interleaved so that drift hits both alike:

- **self-test on a real ComfyUI on CPU** (9 frames, 64x64, core + VideoHelperSuite nodes): in process
  (``tenexa.diagnostics.run_selftest``) and through the local API. The local API has no self-test-only mode:
  the self-test runs inside ``{"diagnose": true, "selftest": true}``, whose other work (``/object_info``,
  workflow validation, model listing) is diagnose's, so the API figure is split into transport (wall minus
  the worker's own ``seconds``), diagnose's own work, and the self-test.
- **a generate job against the protocol double** (``tests/comfy_double.py`` in its own process, no node
  delay): in process (``tenexa.generate.generate``) and through the local API (``POST /runsync`` with a
  base64 image, base64 MP4 back).

ComfyUI's execution time is read from its history: ``status.messages`` ``execution_start`` to
``execution_success`` timestamps (milliseconds, written by ComfyUI itself).

    .venv/bin/python bench/overhead.py            # 30 jobs per case
    .venv/bin/python bench/overhead.py --jobs 50

Prints a table and writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import _common
import requests
import websocket
from _common import BENCH_SUBFOLDER, BenchmarkSkipped, ComfyTarget, LocalAPI, summarize

TARGET_OVERHEAD_MS = 50.0
IMAGE = _common.REPO / "example_image.png"
GENERATE_INPUT = {"frames": 9, "width": 64, "height": 64, "steps": 4, "seed": 1, "prompt": "bench"}  # a self-test-sized video


# ------------------------------------------------------------------------------------------- raw client


def comfy_execution_s(history_entry: dict | None) -> float | None:
    """ComfyUI's own execution time: execution_start -> execution_success/error/interrupted, from its history."""
    if not history_entry:
        return None
    stamps = {}
    for name, data in (history_entry.get("status") or {}).get("messages") or []:
        if isinstance(data, dict) and "timestamp" in data:
            stamps[name] = data["timestamp"]
    end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
    if "execution_start" not in stamps or end is None:
        return None
    return (end - stamps["execution_start"]) / 1000.0


@dataclass
class RawJob:
    wall_s: float
    execution_s: float | None
    video_bytes: int


class RawClient:
    """The least a client must do to get a video out of ComfyUI: the baseline the worker is compared with."""

    def __init__(self, target: ComfyTarget):
        self.base = target.url
        self.ws_url = "ws" + target.url[len("http") :] + "/ws"
        self.session = requests.Session()
        self.session.trust_env = False

    def run(self, graph: dict, uploads: dict[str, bytes], subfolder: str) -> RawJob:
        client_id = uuid.uuid4().hex
        started = time.perf_counter()
        ws = websocket.create_connection(f"{self.ws_url}?clientId={client_id}", timeout=30)
        try:
            for name, data in uploads.items():
                resp = self.session.post(
                    self.base + "/upload/image",
                    files={"image": (name, data, "image/png")},
                    data={"overwrite": "true", "type": "input", "subfolder": subfolder},
                    timeout=30,
                )
                resp.raise_for_status()
            resp = self.session.post(self.base + "/prompt", json={"prompt": graph, "client_id": client_id}, timeout=30)
            resp.raise_for_status()
            prompt_id = resp.json()["prompt_id"]
            while True:
                frame = ws.recv()
                if isinstance(frame, str):
                    msg = json.loads(frame)
                    data = msg.get("data") or {}
                    if msg.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                        break
        finally:
            ws.close()
        entry = self.session.get(f"{self.base}/history/{prompt_id}", timeout=30).json()[prompt_id]
        video = next(item for out in entry["outputs"].values() for item in out.get("gifs") or out.get("videos") or [])
        body = self.session.get(self.base + "/view", params={k: video[k] for k in ("filename", "subfolder", "type")}, timeout=30).content
        wall = time.perf_counter() - started
        return RawJob(wall, comfy_execution_s(entry), len(body))

    def history(self, prompt_id: str) -> dict | None:
        return self.session.get(f"{self.base}/history/{prompt_id}", timeout=30).json().get(prompt_id)

    def latest_history(self) -> dict | None:
        """The newest history entry (real ComfyUI: ``/history?max_items=1``); None where the route is missing."""
        try:
            resp = self.session.get(self.base + "/history", params={"max_items": 1}, timeout=30)
            entries = list(resp.json().values()) if resp.ok else []
        except (requests.RequestException, ValueError):
            return None
        return entries[-1] if entries else None


def _bench_subfolder() -> str:
    return f"{BENCH_SUBFOLDER}/{uuid.uuid4().hex[:10]}"


def _cleanup_raw(target: ComfyTarget) -> None:
    import shutil

    for kind in ("input", "output", "temp"):
        shutil.rmtree(target.root / kind / BENCH_SUBFOLDER, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ figures


def _figures(worker: list[float], raw: list[float], execution: list[float | None]) -> dict:
    """Worker and raw wall, ComfyUI execution, and the overhead both ways: worker - raw, worker - execution."""
    paired = [w - r for w, r in zip(worker, raw, strict=True)]
    out = {"worker": summarize(worker), "raw": summarize(raw), "overhead_vs_raw": summarize(paired)}
    known = [(w, e) for w, e in zip(worker, execution, strict=True) if e is not None]
    if known:
        out["comfy_execution"] = summarize([e for _, e in known])
        out["worker_minus_execution"] = summarize([w - e for w, e in known])
    out["overhead_median_ms"] = round(out["worker"]["median_ms"] - out["raw"]["median_ms"], 3)
    return out


def _api_post(session: requests.Session, api: LocalAPI, job_input: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    resp = session.post(api.url + "/runsync", json={"input": job_input}, timeout=120)
    wall = time.perf_counter() - started
    body = resp.json()
    if resp.status_code != 200 or body.get("status") != "COMPLETED":
        raise RuntimeError(f"local API job failed: HTTP {resp.status_code} {str(body)[:500]}")
    return wall, body["output"]


# ----------------------------------------------------------------------------------------------- self-test


def selftest_overhead(target: ComfyTarget, api: LocalAPI | None, jobs: int, api_jobs: int, volume: Path, warmup: int = 2) -> dict:
    """The self-test graph: worker in process vs raw, job by job; then through the local API's diagnose."""
    from tenexa.comfy import ComfyClient
    from tenexa.diagnostics import SELFTEST_IMAGE, run_selftest, selftest_graph
    from tenexa.images import normalize_image

    class RecordingClient(ComfyClient):
        """The worker's own client, keeping the last prompt's history so ComfyUI's execution can be read."""

        last = None

        def run_prompt(self, graph, **kw):
            self.last = super().run_prompt(graph, **kw)
            return self.last

    settings = _common.worker_settings(target, volume)
    client = RecordingClient(settings.comfy_url)
    raw = RawClient(target)
    png = normalize_image(SELFTEST_IMAGE.read_bytes(), "example_image.png", settings.max_image_pixels).png  # what the worker uploads

    def worker_job() -> tuple[float, float | None]:
        started = time.perf_counter()
        report = run_selftest(settings, client, job_id="bench")
        wall = time.perf_counter() - started
        if not report["ok"]:
            raise RuntimeError(f"self-test failed: {report}")
        return wall, comfy_execution_s(client.last.history)

    def raw_job() -> RawJob:
        sub = _bench_subfolder()
        return raw.run(selftest_graph(f"{sub}/selftest.png", f"{sub}/video"), {"selftest.png": png}, sub)

    _common.quiet_heap()
    try:
        for _ in range(warmup):
            worker_job()
            raw_job()
        worker, raws, execution, raw_execution = [], [], [], []
        for _ in range(jobs):
            wall, exec_s = worker_job()
            worker.append(wall)
            execution.append(exec_s)
            job = raw_job()
            raws.append(job.wall_s)
            raw_execution.append(job.execution_s)
    finally:
        gc.unfreeze()
        _cleanup_raw(target)
    result = {"target": target.kind, "jobs": jobs, "in_process": _figures(worker, raws, execution)}
    known_raw = [e for e in raw_execution if e is not None]
    if known_raw:
        result["in_process"]["raw_comfy_execution"] = summarize(known_raw)
        result["in_process"]["raw_minus_execution"] = summarize([r - e for r, e in zip(raws, raw_execution, strict=True) if e is not None])
    if api is not None and api_jobs:
        result["local_api"] = _selftest_through_api(api, raw, api_jobs)
    return result


def _selftest_through_api(api: LocalAPI, raw: RawClient, jobs: int) -> dict:
    session = requests.Session()
    session.trust_env = False
    walls, transport, diagnose_own, selftest, execution = [], [], [], [], []
    _api_post(session, api, {"diagnose": True, "selftest": True})  # warm-up
    for _ in range(jobs):
        wall, out = _api_post(session, api, {"diagnose": True, "selftest": True})
        if not out.get("selftest", {}).get("ok"):
            raise RuntimeError(f"self-test through the local API failed: {out.get('selftest')}")
        walls.append(wall)
        transport.append(wall - out["seconds"])
        diagnose_own.append(out["seconds"] - out["selftest"]["seconds"])
        selftest.append(out["selftest"]["seconds"])
        execution.append(comfy_execution_s(raw.latest_history()))
    out = {
        "jobs": jobs,
        "wall": summarize(walls),
        "transport": summarize(transport),
        "diagnose_own_work": summarize(diagnose_own),
        "selftest_in_worker": summarize(selftest),
    }
    known = [(s, e) for s, e in zip(selftest, execution, strict=True) if e is not None]
    if known:
        out["comfy_execution"] = summarize([e for _, e in known])
        out["selftest_minus_execution"] = summarize([s - e for s, e in known])
    return out


# ------------------------------------------------------------------------------------------------ generate


def generate_overhead(target: ComfyTarget, api: LocalAPI | None, jobs: int, volume: Path, warmup: int = 2) -> dict:
    """A self-test-sized generate job against the double: in process, through the local API, and raw."""
    from tenexa import workflows
    from tenexa.comfy import ComfyClient
    from tenexa.generate import START_IMAGE, generate
    from tenexa.images import prepare_image
    from tenexa.request import parse_generate

    settings = _common.worker_settings(target, volume)
    client = ComfyClient(settings.comfy_url)
    raw = RawClient(target)
    job_input = {"image_base64": base64.b64encode(IMAGE.read_bytes()).decode(), **GENERATE_INPUT}
    request = parse_generate(job_input)
    start = prepare_image(request.image, settings)
    session = requests.Session()
    session.trust_env = False

    def in_process() -> tuple[float, float | None]:
        started = time.perf_counter()
        out = generate("bench", job_input, settings=settings, client=client)
        return time.perf_counter() - started, comfy_execution_s(raw.history(out["prompt_id"]))

    def through_api() -> tuple[float, float | None]:
        wall, out = _api_post(session, api, job_input)
        return wall, comfy_execution_s(raw.history(out["prompt_id"]))

    def raw_job() -> RawJob:
        sub = _bench_subfolder()
        bound = workflows.bind(
            request,
            image_size=(start.width, start.height),
            settings=settings,
            start_image=f"{sub}/{START_IMAGE}",
            end_image=None,
            output_prefix=f"{sub}/video",
        )
        return raw.run(bound.graph, {START_IMAGE: start.png}, sub)

    cases = {"in_process": in_process, **({"local_api": through_api} if api is not None else {})}
    _common.quiet_heap()
    try:
        for _ in range(warmup):
            for fn in (*cases.values(), raw_job):
                fn()
        walls: dict[str, list[float]] = {name: [] for name in cases}
        execs: dict[str, list[float | None]] = {name: [] for name in cases}
        raws = []
        for _ in range(jobs):
            for name, fn in cases.items():
                wall, exec_s = fn()
                walls[name].append(wall)
                execs[name].append(exec_s)
            raws.append(raw_job().wall_s)
    finally:
        gc.unfreeze()
        _cleanup_raw(target)
    return {
        "target": target.kind,
        "jobs": jobs,
        "input": GENERATE_INPUT,
        **{name: _figures(walls[name], raws, execs[name]) for name in cases},
    }


# --------------------------------------------------------------------------------------------------- main


def rows(report: dict) -> list[list[object]]:
    """Table rows: case, worker median/p95, raw median, overhead median/p95, target met."""
    out = []

    def row(label: str, fig: dict, target: bool = True) -> None:
        over = fig["overhead_vs_raw"]
        met = ("yes" if fig["overhead_median_ms"] <= TARGET_OVERHEAD_MS else "NO") if target else "-"
        out.append(
            [
                label,
                f"{fig['worker']['median_ms']:.1f} / {fig['worker']['p95_ms']:.1f}",
                f"{fig['raw']['median_ms']:.1f}",
                f"{fig.get('comfy_execution', {}).get('median_ms', float('nan')):.1f}",
                f"{fig['overhead_median_ms']:.1f} (paired {over['median_ms']:.1f} / {over['p95_ms']:.1f})",
                met,
            ]
        )

    if "selftest" in report:
        st = report["selftest"]
        row("self-test, real ComfyUI, in process", st["in_process"])
        if "local_api" in st:
            api = st["local_api"]
            out.append(
                [
                    "self-test via local API diagnose",
                    f"{api['wall']['median_ms']:.1f} / {api['wall']['p95_ms']:.1f}",
                    "-",
                    f"{api.get('comfy_execution', {}).get('median_ms', float('nan')):.1f}",
                    f"transport {api['transport']['median_ms']:.1f}, diagnose {api['diagnose_own_work']['median_ms']:.1f}",
                    "-",
                ]
            )
    if "generate" in report:
        gen = report["generate"]
        row("generate, double, in process", gen["in_process"])
        if "local_api" in gen:
            row("generate, double, via local API", gen["local_api"])
    return out


def print_rows(report: dict) -> None:
    _common.print_table(
        [
            "case",
            "worker med/p95 ms",
            "raw med ms",
            "ComfyUI exec ms",
            "overhead med ms (paired med/p95)",
            f"<= {TARGET_OVERHEAD_MS:.0f} ms",
        ],
        rows(report),
    )


def run(jobs: int = 30, api_jobs: int = 30, out: Path | None = None) -> dict:
    report = _common.report_header("overhead")
    report["targets"] = {"overhead_median_ms": TARGET_OVERHEAD_MS}
    with tempfile.TemporaryDirectory(prefix="tenexa-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        try:
            real = stack.enter_context(_common.real_comfyui(work))
        except BenchmarkSkipped as skip:
            report["skipped"] = {"selftest": str(skip)}
            print(f"SKIPPED: self-test overhead: {skip}")
        else:
            api = stack.enter_context(_common.local_api(real, work))
            report["selftest"] = selftest_overhead(real, api, jobs, api_jobs, work / "volume")
        (work / "double").mkdir()
        double = stack.enter_context(_common.protocol_double(work / "double" / "ComfyUI"))
        (work / "api2").mkdir()
        api2 = stack.enter_context(_common.local_api(double, work / "api2"))
        report["generate"] = generate_overhead(double, api2, jobs, work / "volume")
    print_rows(report)
    path = _common.write_report(out or _common.RESULTS / "overhead.json", report)
    print(f"wrote {_common.relative(path)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="timed jobs per case (at least 30 for the issue's figures)")
    parser.add_argument("--api-jobs", type=int, default=30, help="timed self-test jobs through the local API (diagnose + self-test)")
    args = parser.parse_args(argv)
    run(args.jobs, args.api_jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
