"""ProgressReporter: the recorded Wan event stream under a fake clock, and the SDK's production loop.

The production-loop test starts a worker process exactly as RunPod does (``RUNPOD_WEBHOOK_GET_JOB`` set), with
the job-take / job-done endpoints served by a small local stand-in, the technique of the SDK's own
``tests/test_serverless/local_sim/``. Without ``close()`` the SDK's progress POST lands after the result in
8 of 8 jobs (runpod-sdk.md §4), so "the result comes last" is the property under test.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tenexa.progress import PHASES, GraphPlan, ProgressReporter

REPO_ROOT = Path(__file__).resolve().parent.parent
COMFY_DATA = REPO_ROOT / "tests" / "fixtures" / "comfyui"
RUN_FILE = COMFY_DATA / "tiny-wan-cpu-run.json"
PROMPT_FILE = COMFY_DATA / "tiny-wan-cpu-prompt.json"

# Phases of the recorded two-expert run, repeats collapsed: the low-noise expert loads between the samplers.
EXPECTED_PHASES = [
    "uploading",
    "queued",
    "loading_models",
    "sampling_high",
    "loading_models",
    "sampling_low",
    "decoding",
    "encoding",
    "delivering",
]


def _load(path: Path):
    assert path.exists(), f"{path} is missing: the recorded ComfyUI stream ships in tests/fixtures/comfyui"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def graph() -> dict:
    return _load(PROMPT_FILE)


@pytest.fixture(scope="module")
def recorded_events() -> list[tuple[float, str, dict]]:
    run = _load(RUN_FILE)
    return [(m["t"], m["type"], m["data"]) for m in run["ws_messages"] if m.get("frame") != "binary"]


class FakeTime:
    """A clock and a timer scheduler that only move when the test says so."""

    def __init__(self):
        self.now = 0.0
        self.timers: list[list] = []  # [due, callback, cancelled]

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, callback):
        entry = [self.now + delay, callback, False]
        self.timers.append(entry)

        class Handle:
            def cancel(self_inner):
                entry[2] = True

        return Handle()

    def advance_to(self, t: float) -> None:
        while True:
            due = [e for e in self.timers if not e[2] and e[0] <= t]
            if not due:
                break
            entry = min(due, key=lambda e: e[0])
            self.timers.remove(entry)
            self.now = max(self.now, entry[0])
            entry[1]()
        self.now = max(self.now, t)

    def pending(self) -> int:
        return sum(1 for e in self.timers if not e[2])


def replay(graph, events, *, interval: float, close: bool = True):
    """Feed a whole job through a reporter: worker phases around the recorded ComfyUI stream."""
    fake = FakeTime()
    sent: list[tuple[float, dict]] = []
    reporter = ProgressReporter(
        lambda p: sent.append((fake.now, p)), graph=graph, interval=interval, clock=fake.clock, schedule=fake.schedule
    )
    reporter.phase("uploading")
    fake.advance_to(0.3)
    reporter.phase("queued")
    offset = 0.5
    for t, event_type, data in events:
        fake.advance_to(t + offset)
        reporter.on_event(event_type, data)
    fake.advance_to(fake.now + 0.2)
    reporter.phase("delivering")
    fake.advance_to(fake.now + 2.0)
    if close:
        reporter.close()
    return reporter, fake, sent


def collapsed_phases(payloads) -> list[str]:
    phases: list[str] = []
    for p in payloads:
        if not phases or phases[-1] != p["phase"]:
            phases.append(p["phase"])
    return phases


# --- graph reading -----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_graph_plan_reads_the_two_expert_graph(graph):
    plan = GraphPlan(graph)
    assert plan.loaders == {"122", "129", "549"}
    assert plan.decoders == {"612", "130"}
    assert plan.encoders == {"131"}
    high, low = plan.samplers["220"], plan.samplers["540"]
    assert (high.phase, low.phase) == ("sampling_high", "sampling_low")
    # steps=4 via INTConstant 569, split at step 2 via INTConstant 575: each expert runs 2 steps.
    assert high.step_counts == low.step_counts == frozenset({2, 4})
    assert high.band == (10.0, 50.0) and low.band == (50.0, 90.0)
    assert plan.is_weight_load_bar("220", 825) and not plan.is_weight_load_bar("220", 2)


@pytest.mark.unit
def test_single_sampler_takes_the_whole_sampling_band():
    graph = {
        "1": {"class_type": "WanVideoModelLoader", "inputs": {}},
        "2": {"class_type": "WanVideoSampler", "inputs": {"steps": 30, "model": ["1", 0]}},
        "3": {"class_type": "WanVideoDecode", "inputs": {"samples": ["2", 0]}},
    }
    plan = GraphPlan(graph)
    assert plan.samplers["2"].band == (10.0, 90.0)
    assert plan.samplers["2"].step_counts == frozenset({30})


@pytest.mark.unit
def test_unresolvable_step_count_falls_back_to_bar_length():
    graph = {
        "2": {"class_type": "WanVideoSampler", "inputs": {"steps": ["9", 0]}},
        "9": {"class_type": "SomeMath", "inputs": {"a": ["8", 0]}},
    }
    plan = GraphPlan(graph)
    assert plan.samplers["2"].step_counts == frozenset()
    assert plan.is_weight_load_bar("2", 825) and not plan.is_weight_load_bar("2", 20)


# --- the recorded stream ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_recorded_stream_phases_in_order(graph, recorded_events):
    _, _, sent = replay(graph, recorded_events, interval=0.0)
    payloads = [p for _, p in sent]
    assert collapsed_phases(payloads) == EXPECTED_PHASES
    assert all(p["phase"] in PHASES for p in payloads)
    assert set(payloads[0]) == {"phase", "step", "total", "percent", "eta_s", "node"}


@pytest.mark.unit
def test_weight_load_bar_is_loading_not_sampling(graph, recorded_events):
    _, _, sent = replay(graph, recorded_events, interval=0.0)
    sampling = [p for _, p in sent if p["phase"].startswith("sampling") and p["step"] is not None]
    assert [(p["phase"], p["step"], p["total"]) for p in sampling] == [
        ("sampling_high", 1, 2),
        ("sampling_high", 2, 2),
        ("sampling_low", 1, 2),
        ("sampling_low", 2, 2),
    ]
    loading_on_sampler = [p for _, p in sent if p["phase"] == "loading_models" and p["node"] in ("220", "540")]
    assert loading_on_sampler, "the 825-tick weight-load bar should show as loading_models"
    assert all(p["step"] is None for p in loading_on_sampler)


@pytest.mark.unit
def test_percent_is_monotonic_and_weighted(graph, recorded_events):
    _, _, sent = replay(graph, recorded_events, interval=0.0)
    percents = [p["percent"] for _, p in sent]
    assert percents == sorted(percents)
    assert percents[0] == 0.0 and 0 < percents[-1] <= 100
    by_step = {(p["phase"], p["step"]): p["percent"] for _, p in sent if p["step"] is not None}
    assert by_step[("sampling_high", 2)] == 50.0
    assert by_step[("sampling_low", 2)] == 90.0
    assert sent[-1][1]["phase"] == "delivering" and sent[-1][1]["percent"] == 98.0


@pytest.mark.unit
def test_eta_appears_once_sampling_runs(graph, recorded_events):
    _, _, sent = replay(graph, recorded_events, interval=0.0)
    first_step = next(i for i, (_, p) in enumerate(sent) if p["step"] is not None and p["phase"].startswith("sampling"))
    assert all(p["eta_s"] is None for _, p in sent[: first_step + 1])
    etas = [p["eta_s"] for _, p in sent[first_step + 1 :]]
    assert etas and all(isinstance(e, float) and e >= 0 for e in etas)


@pytest.mark.unit
def test_rate_limit_spacing_and_deferred_flush(graph, recorded_events):
    reporter, _, sent = replay(graph, recorded_events, interval=1.0)
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 1.0 - 1e-9, gaps
    # ComfyUI sends >100 messages; at most about one update per second of the ~19 s job goes out.
    assert len(sent) <= times[-1] + 1
    phases = collapsed_phases([p for _, p in sent])
    # Decoding is followed by 4 s without events: only the timer flush can report it.
    assert "decoding" in phases
    assert phases[-1] == "delivering"
    assert reporter.sent_count == len(sent)


@pytest.mark.unit
def test_nothing_is_sent_after_close(graph, recorded_events):
    fake = FakeTime()
    sent = []
    reporter = ProgressReporter(lambda p: sent.append(p), graph=graph, interval=1.0, clock=fake.clock, schedule=fake.schedule)
    reporter.phase("uploading")
    fake.advance_to(0.2)
    reporter.phase("queued")  # within the interval: deferred
    assert fake.pending() == 1
    reporter.close()
    assert fake.pending() == 0, "close() must cancel the deferred update"
    for _, event_type, data in recorded_events[:40]:
        reporter.on_event(event_type, data)
    reporter.phase("delivering")
    fake.advance_to(100.0)
    assert [p["phase"] for p in sent] == ["uploading"]


@pytest.mark.unit
def test_close_waits_for_updates_in_flight(graph):
    delivered = []

    def slow_send(payload):  # like progress_update: a thread that POSTs and is not returned
        def post():
            time.sleep(0.3)
            delivered.append(payload["phase"])

        threading.Thread(target=post, daemon=True).start()

    reporter = ProgressReporter(slow_send, graph=graph, interval=0.0)
    reporter.phase("uploading")
    reporter.phase("queued")
    started = time.monotonic()
    reporter.close()
    assert sorted(delivered) == ["queued", "uploading"]
    assert time.monotonic() - started >= 0.2


@pytest.mark.unit
def test_close_gives_up_on_a_stuck_update_and_says_so(graph, caplog):
    release = threading.Event()

    def stuck_send(payload):
        threading.Thread(target=release.wait, daemon=True).start()

    reporter = ProgressReporter(stuck_send, graph=graph, interval=0.0)
    reporter.phase("uploading")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tenexa.progress"):
        reporter.close(timeout=0.3)
    release.set()
    assert time.monotonic() - started < 2.0
    assert "still in flight" in caplog.text


@pytest.mark.unit
def test_timer_flushes_a_deferred_update_with_the_real_clock(graph):
    sent = []
    reporter = ProgressReporter(lambda p: sent.append(p["phase"]), graph=graph, interval=0.1)
    reporter.phase("uploading")
    reporter.phase("queued")  # deferred, and no further event will come
    deadline = time.monotonic() + 2.0
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    reporter.close()
    assert sent == ["uploading", "queued"]


@pytest.mark.unit
def test_reporter_never_raises_into_the_pipeline(graph, caplog):
    def broken_send(payload):
        raise RuntimeError("network down")

    reporter = ProgressReporter(broken_send, graph=graph, interval=0.0)
    with caplog.at_level(logging.WARNING, logger="tenexa.progress"):
        reporter.phase("uploading")
        reporter.phase("no-such-phase")
        reporter.on_event("executing", {"node": "220", "prompt_id": "p"})
        reporter.on_event("progress", {"value": "x", "max": None, "node": "220"})
        reporter.on_event("progress", "not a dict")  # type: ignore[arg-type]
        reporter.on_event("executing", {"node": ["weird"]})
        reporter.close()
        reporter.close()
    assert "sending an update failed" in caplog.text
    assert ProgressReporter(lambda p: None, graph="not a graph", interval=0.0) is not None  # type: ignore[arg-type]


@pytest.mark.unit
def test_events_of_another_prompt_are_ignored(graph):
    sent = []
    reporter = ProgressReporter(lambda p: sent.append(p), graph=graph, interval=0.0)
    reporter.on_event("execution_start", {"prompt_id": "mine"})
    reporter.on_event("executing", {"node": "612", "prompt_id": "theirs"})
    reporter.on_event("executing", {"node": "129", "prompt_id": "mine"})
    reporter.close()
    assert [p["phase"] for p in sent] == ["loading_models", "loading_models"]
    assert sent[-1]["node"] == "129"


# --- the SDK's production loop ------------------------------------------------------------------------------

# The stand-in worker: a RunPod handler that drives the real ProgressReporter through
# runpod.serverless.progress_update. To test the real handler instead, pass its path to run_worker().
STAND_IN_WORKER = textwrap.dedent(
    """
    import asyncio, json, os

    import runpod

    from tenexa.progress import ProgressReporter

    GRAPH = json.loads(open(os.environ["STAND_IN_GRAPH"]).read())
    INTERVAL = float(os.environ["STAND_IN_INTERVAL"])

    # (seconds to wait before, event type, data): one short two-expert job.
    SCRIPT = [
        (0.0, "execution_start", {"prompt_id": "p"}),
        (0.0, "executing", {"node": "129", "prompt_id": "p"}),
        (0.0, "executing", {"node": "122", "prompt_id": "p"}),
        (0.3, "executing", {"node": "220", "prompt_id": "p"}),
        (0.0, "progress", {"value": 400, "max": 825, "node": "220", "prompt_id": "p"}),
        (0.0, "progress", {"value": 0, "max": 825, "node": "220", "prompt_id": "p"}),
        (0.3, "progress", {"value": 1, "max": 2, "node": "220", "prompt_id": "p"}),
        (0.3, "progress", {"value": 2, "max": 2, "node": "220", "prompt_id": "p"}),
        (0.3, "executing", {"node": "549", "prompt_id": "p"}),
        (0.0, "executing", {"node": "540", "prompt_id": "p"}),
        (0.3, "progress", {"value": 1, "max": 2, "node": "540", "prompt_id": "p"}),
        (0.3, "progress", {"value": 2, "max": 2, "node": "540", "prompt_id": "p"}),
        (0.3, "executing", {"node": "612", "prompt_id": "p"}),
        (0.3, "executing", {"node": "131", "prompt_id": "p"}),
        (0.0, "progress", {"value": 9, "max": 9, "node": "131", "prompt_id": "p"}),
        (0.3, "executing", {"node": None, "prompt_id": "p"}),
    ]


    async def handler(job):
        reporter = ProgressReporter(lambda p: runpod.serverless.progress_update(job, p), graph=GRAPH, interval=INTERVAL)
        reporter.phase("uploading")
        await asyncio.sleep(0.3)
        reporter.phase("queued")
        await asyncio.sleep(0.3)
        for wait, event_type, data in SCRIPT:
            await asyncio.sleep(wait)
            reporter.on_event(event_type, data)
        reporter.phase("delivering")
        if job["input"].get("close_reporter", True):
            await asyncio.sleep(0.3)  # the upload
            await reporter.aclose()  # before the result is returned: nothing may follow it
        return {"video_url": "http://example.invalid/" + job["id"] + ".mp4", "job": job["id"]}


    runpod.serverless.start({"handler": handler})
    """
)


class RunPodStandIn:
    """Local job-take / job-done / job-stop endpoints that record what the worker sends, in arrival order."""

    def __init__(self, jobs: list[dict]):
        self.pending = list(jobs)
        self.posts: list[dict] = []  # {"job", "at", "body"}
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: bytes = b"", content_type: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if "/job-take/" in self.path:
                    with stand_in.lock:
                        job = stand_in.pending.pop(0) if stand_in.pending else None
                    if job:
                        return self._reply(200, json.dumps(job).encode())
                time.sleep(0.3)  # long-poll, as the real endpoints do, so the worker does not spin
                self._reply(204)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length).decode())
                job_id = self.path.split("/job-done/", 1)[1].split("?", 1)[0].split("/")[1]
                with stand_in.lock:  # recorded before the reply: a completed POST is always in the list
                    stand_in.posts.append({"job": job_id, "at": time.monotonic(), "body": body})
                self._reply(200, b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def finals(self) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if p["body"].get("status") != "IN_PROGRESS"]

    def posts_for(self, job_id: str) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if p["job"] == job_id]


def run_worker(script: Path, stand_in: RunPodStandIn, *, n_jobs: int, extra_env: dict, timeout: float = 60.0, grace: float = 1.5) -> str:
    """Run ``script`` in the SDK's production loop until ``n_jobs`` results arrived, plus ``grace`` seconds."""
    base = f"http://127.0.0.1:{stand_in.port}/v2/ep"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=TEST",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=TEST",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST",
        "RUNPOD_AI_API_KEY": "stand-in-key",
        "RUNPOD_POD_ID": "stand-in-worker",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "RUNPOD_LOG_LEVEL": "INFO",
        **extra_env,
    }
    env.pop("RUNPOD_WEBHOOK_PING", None)
    worker = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while len(stand_in.finals()) < n_jobs:
            if worker.poll() is not None:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(grace)  # a late progress POST would arrive in this window
    finally:
        worker.terminate()
        try:
            output, _ = worker.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    assert len(stand_in.finals()) == n_jobs, f"worker delivered {len(stand_in.finals())} of {n_jobs} results:\n{output[-4000:]}"
    return output


@pytest.mark.e2e
def test_production_loop_sends_progress_then_the_result_last(tmp_path, graph):
    script = tmp_path / "stand_in_worker.py"
    script.write_text(STAND_IN_WORKER)
    interval = 0.25
    closed = [f"job-{i}" for i in range(3)]
    # Control: the same handler without close(). The stand-in must see the SDK's race there, or it could
    # not see it at all (runpod-sdk.md §4 measured 8 of 8 late updates).
    unclosed = [f"unclosed-{i}" for i in range(2)]
    jobs = [{"id": j, "input": {"close_reporter": True}} for j in closed]
    jobs += [{"id": j, "input": {"close_reporter": False}} for j in unclosed]
    with RunPodStandIn(jobs) as stand_in:
        run_worker(script, stand_in, n_jobs=len(jobs), extra_env={"STAND_IN_GRAPH": str(PROMPT_FILE), "STAND_IN_INTERVAL": str(interval)})

    for job_id in closed:
        posts = stand_in.posts_for(job_id)
        statuses = [p["body"].get("status") for p in posts]
        assert statuses[-1] is None and all(s == "IN_PROGRESS" for s in statuses[:-1]), statuses
        assert posts[-1]["body"] == {"output": {"video_url": f"http://example.invalid/{job_id}.mp4", "job": job_id}}

        updates = [p["body"]["output"] for p in posts[:-1]]
        assert collapsed_phases(updates) == EXPECTED_PHASES, updates
        percents = [u["percent"] for u in updates]
        assert percents == sorted(percents)
        sampling = [(u["phase"], u["step"], u["total"]) for u in updates if u["phase"].startswith("sampling")]
        assert ("sampling_high", 2, 2) in sampling and ("sampling_low", 2, 2) in sampling
        # The worker never sends faster than the interval (arrival adds jitter, hence the slack).
        arrivals = [p["at"] for p in posts[:-1]]
        assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= interval * 0.5

    late = [j for j in unclosed if stand_in.posts_for(j)[-1]["body"].get("status") == "IN_PROGRESS"]
    assert late, "without close() the last update should race past the result; the stand-in did not see the race"
