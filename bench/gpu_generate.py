"""Real Wan2.2-I2V-A14B generations on an NVIDIA GPU: seconds per step of each expert, peak VRAM, model load, total.

Needs a machine with an NVIDIA GPU (``nvidia-smi``), the real weights, and a running ComfyUI with the node
packs (the worker's image: ``entrypoint.sh`` starts it on 127.0.0.1:8188). Without a GPU it exits with
status 2 and says so; ``bench/run_all.py`` records that as skipped with the same reason.

Each case binds the shipped workflow exactly as the worker does (``tenexa.workflows.bind``, runtime settings
from the environment: ``TENEXA_ATTENTION``, ``TENEXA_LOAD_DEVICE``, ...), submits it to ComfyUI directly and
follows the WebSocket, because only the event stream shows where the time goes:

- **s/step per expert**: ``progress`` events of the two ``WanVideoSampler`` nodes (``WORKFLOWS[...].high_sampler``
  and ``.low_sampler``); the median gap between consecutive steps, so the first step's set-up (moving the
  expert to the GPU) is reported apart as ``first_step_s``.
- **model load**: the loader nodes' time (``executing`` of the loader to the next ``executing``); 0 when
  ComfyUI served them from its cache (a warm worker).
- **peak VRAM**: ``nvidia-smi --query-gpu=memory.used`` polled every 0.2 s during the run (whole GPU).
- **total**: submit to ComfyUI's completion marker; ComfyUI's own execution from its history timestamps.

Cases: 480p (832x480) and 720p (1280x720), 81 frames, 10 steps (the default) and 4 steps (Lightning), seed 42.
The first run of a fresh ComfyUI also loads the models; it is reported as the cold run and the cases then
run warm. ``--worker-url`` also sends each case once through the worker's own API (``/run`` + ``/status``)
for the end-to-end figure a client sees.

    python bench/gpu_generate.py                                   # ComfyUI at http://127.0.0.1:8188
    python bench/gpu_generate.py --cases 480p --steps 4 --repeat 3
    python bench/gpu_generate.py --worker-url http://127.0.0.1:8000

Expected figures (``shared/reference/wan-facts.md`` §6, estimates for an H100) are printed beside the
measured ones. Prints a table and writes bench/results/gpu_generate.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import _common
import requests
import websocket
from _common import BenchmarkSkipped

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}
FRAMES = 81
SEED = 42
PROMPT = "the camera slowly pushes in while the subject turns toward the light"
LOADER_WORDS = ("Loader", "LoadWanVideo")  # WanVideoModelLoader, WanVideoVAELoader, LoadWanVideoT5TextEncoder

# wan-facts.md §6.3: DiT FLOPs per forward at 81 frames, and seconds per forward at 800 TF/s (floor) and at
# the "realistic" 650 TF/s linear + 600 TF/s attention; §6.3 non-DiT estimates; §6.4 VRAM; §6.1 official table.
EXPECTED = {
    "480p": {
        "pflop_per_forward": 1.68,
        "s_per_forward_floor": 2.10,
        "s_per_forward_realistic": 2.70,
        "non_dit_s": (6.0, 12.0),
        "warm_e2e_lightning_4step_s": (20, 30),
        "vram_gb_one_expert": (20, 25),
        "vram_gb_both_experts": (45, 50),
        "official_1gpu_h100_40steps_cfg": "327.8 s / 41.0 GB",
    },
    "720p": {
        "pflop_per_forward": 6.52,
        "s_per_forward_floor": 8.15,
        "s_per_forward_realistic": 10.64,
        "non_dit_s": (10.0, 20.0),
        "warm_e2e_lightning_4step_s": (55, 75),
        "vram_gb_one_expert": (25, 32),
        "vram_gb_both_experts": (55, 60),
        "official_1gpu_h100_40steps_cfg": "1055.9 s / 59.7 GB",
    },
}


# ------------------------------------------------------------------------------------------------- the GPU


def gpu_info() -> dict:
    """The first NVIDIA GPU as nvidia-smi lists it; skipped (with the reason) when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise BenchmarkSkipped(
            "no NVIDIA GPU: nvidia-smi is not on PATH. This benchmark needs an NVIDIA GPU, the real "
            "Wan2.2 weights and a running ComfyUI or worker (see docs/PERFORMANCE.md)"
        )
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchmarkSkipped(f"no NVIDIA GPU: nvidia-smi failed to run ({type(exc).__name__})") from None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise BenchmarkSkipped(f"no NVIDIA GPU: nvidia-smi exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
    name, total, driver = (part.strip() for part in lines[0].split(","))
    return {"name": name, "memory_total_gb": round(float(total) / 1024, 1), "driver": driver, "count": len(lines)}


class VramSampler:
    """Polls nvidia-smi's memory.used (MiB, first GPU) in a thread; ``peak_gb`` after ``stop``."""

    def __init__(self, interval: float = 0.2, enabled: bool = True):
        self.interval, self.enabled = interval, enabled
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return float(out.strip().splitlines()[0]) / 1024
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> VramSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(15)

    def summary(self) -> dict:
        if not self.samples:
            return {"peak_gb": None, "start_gb": None, "samples": 0}
        return {"peak_gb": round(max(self.samples), 2), "start_gb": round(self.samples[0], 2), "samples": len(self.samples)}


# ------------------------------------------------------------------------------------------- one prompt


@dataclass
class Timeline:
    """What ComfyUI said about one prompt, each event stamped with seconds since submit."""

    submitted: float
    events: list[tuple[float, str, dict]] = field(default_factory=list)
    done_at: float | None = None


def follow_prompt(comfy_url: str, graph: dict, timeout: float) -> tuple[str, Timeline, dict]:
    """Submit ``graph`` and record every text event until ComfyUI's completion marker; returns its history entry too."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection("ws" + comfy_url[len("http") :] + f"/ws?clientId={client_id}", timeout=30)
    try:
        ws.settimeout(5)
        submitted = time.monotonic()
        resp = requests.post(comfy_url + "/prompt", json={"prompt": graph, "client_id": client_id}, timeout=60)
        if resp.status_code != 200:
            raise RuntimeError(f"ComfyUI rejected the workflow (HTTP {resp.status_code}): {resp.text[:2000]}")
        prompt_id = resp.json()["prompt_id"]
        timeline = Timeline(submitted)
        deadline = submitted + timeout
        while timeline.done_at is None:
            if time.monotonic() > deadline:
                requests.post(comfy_url + "/interrupt", json={"prompt_id": prompt_id}, timeout=10)
                raise RuntimeError(f"the prompt ran longer than {timeout:.0f} s; interrupted")
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if not isinstance(frame, str):
                continue  # binary latent previews
            msg = json.loads(frame)
            kind, data = msg.get("type"), msg.get("data") or {}
            if data.get("prompt_id", prompt_id) != prompt_id:
                continue
            now = time.monotonic() - submitted
            timeline.events.append((now, kind, data))
            if kind == "executing" and data.get("node") is None:
                timeline.done_at = now
            if kind == "execution_error":
                raise RuntimeError(
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: {data.get('exception_message', '')[:1000]}"
                )
    finally:
        ws.close()
    entry = requests.get(f"{comfy_url}/history/{prompt_id}", timeout=60).json().get(prompt_id) or {}
    return prompt_id, timeline, entry


def analyze(timeline: Timeline, graph: dict, high: str, low: str, history_entry: dict | None = None) -> dict:
    """Per-node durations, model load, per-expert step timing and totals from one prompt's event timeline."""
    executing = [(t, d.get("node")) for t, kind, d in timeline.events if kind == "executing"]
    cached = {n for _, kind, d in timeline.events if kind == "execution_cached" for n in d.get("nodes") or []}
    nodes: dict[str, float] = {}
    for (t, node), (t_next, _) in zip(executing, executing[1:], strict=False):
        if node is not None:
            nodes[node] = nodes.get(node, 0.0) + (t_next - t)
    started = {node: t for t, node in executing if node is not None}

    def class_of(node: str) -> str:
        return (graph.get(node) or {}).get("class_type", "?")

    loaders = [n for n in graph if any(word in class_of(n) for word in LOADER_WORDS)]
    experts = {}
    for label, node in (("high", high), ("low", low)):
        ticks = [(t, d.get("value"), d.get("max")) for t, kind, d in timeline.events if kind == "progress" and str(d.get("node")) == node]
        # A WanVideoSampler first reports a weight-loading bar (max = its parameter count), then one tick per step
        # (max = its steps): only the last bar is the steps.
        steps = [tick for tick in ticks if tick[2] == ticks[-1][2]]
        loading = [tick for tick in ticks if tick[2] != ticks[-1][2]]
        gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:], strict=False)]
        experts[label] = {
            "node": node,
            "steps": len(steps),
            "progress_max": steps[-1][2] if steps else None,
            "s_per_step": round(statistics.median(gaps), 3) if gaps else None,
            "first_step_s": round(steps[0][0] - started[node], 3) if steps and node in started else None,
            "step_gaps_s": [round(g, 3) for g in gaps],
            # the weight-loading bar: the expert's weights are read into place here, not in the loader node
            "weights_load_s": round(loading[-1][0] - started[node], 3) if loading and node in started else None,
            "node_s": round(nodes[node], 3) if node in nodes else None,
        }
    by_class: dict[str, float] = {}
    for node, seconds in nodes.items():
        by_class[class_of(node)] = round(by_class.get(class_of(node), 0.0) + seconds, 3)
    stamps = {
        name: d.get("timestamp") for name, d in ((history_entry or {}).get("status") or {}).get("messages") or [] if isinstance(d, dict)
    }
    execution = (
        (stamps["execution_success"] - stamps["execution_start"]) / 1000
        if stamps.get("execution_success") and stamps.get("execution_start")
        else None
    )
    return {
        "total_s": round(timeline.done_at, 3) if timeline.done_at is not None else None,
        "comfy_execution_s": round(execution, 3) if execution is not None else None,
        "model_load_s": round(sum(nodes.get(n, 0.0) for n in loaders), 3),
        "loaders_cached": sorted(n for n in loaders if n in cached),
        "experts": experts,
        "seconds_by_class": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
    }


def expected_for(resolution: str, steps: int, cfg: float, cfg_low: float, high_steps: int) -> dict:
    """wan-facts.md §6 estimates for an H100 for this case: forwards, DiT seconds (floor, realistic), end to end."""
    e = EXPECTED[resolution]
    # cfg > 1 doubles the forward only where it applies: the high expert's first step (the CFG schedule) and every
    # low-expert step when cfg_low > 1.
    forwards = steps + (1 if cfg > 1 else 0) + ((steps - high_steps) if cfg_low > 1 else 0)
    floor, realistic = forwards * e["s_per_forward_floor"], forwards * e["s_per_forward_realistic"]
    out = {
        "forwards": forwards,
        "s_per_step_floor_realistic": [e["s_per_forward_floor"], e["s_per_forward_realistic"]],
        "dit_s_floor_realistic": [round(floor, 1), round(realistic, 1)],
        "e2e_s_estimate": [round(floor + e["non_dit_s"][0], 0), round(realistic + e["non_dit_s"][1], 0)],
        "vram_gb_one_expert_resident": list(e["vram_gb_one_expert"]),
        "vram_gb_both_experts_resident": list(e["vram_gb_both_experts"]),
        "official_h100_1gpu_40steps_cfg": e["official_1gpu_h100_40steps_cfg"],
    }
    if steps == 4:
        out["wan_facts_warm_e2e_lightning_s"] = list(e["warm_e2e_lightning_4step_s"])
    return out


# ---------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    resolution: str
    steps: int
    frames: int = FRAMES

    @property
    def name(self) -> str:
        return f"{self.resolution} {self.frames}f {self.steps} steps"


def job_input(case: Case, image: Path) -> dict:
    width, height = RESOLUTIONS[case.resolution]
    return {
        "image_base64": base64.b64encode(image.read_bytes()).decode(),
        "prompt": PROMPT,
        "seed": SEED,
        "width": width,
        "height": height,
        "frames": case.frames,
        "steps": case.steps,
    }


def run_case(comfy_url: str, settings, case: Case, image: Path, timeout: float, sample_vram: bool) -> dict:
    from tenexa.comfy import ComfyClient
    from tenexa.generate import START_IMAGE, bind_in_workspace
    from tenexa.images import prepare_image
    from tenexa.pipeline import upload_images
    from tenexa.request import parse_generate
    from tenexa.workspace import JobWorkspace

    request = parse_generate(job_input(case, image))
    start = prepare_image(request.image, settings)
    workspace = JobWorkspace(settings.comfy_root, "gpu-bench")
    try:
        bound = bind_in_workspace(request, start, None, workspace, settings=settings)
        upload_images(ComfyClient(comfy_url), workspace, {START_IMAGE: start.png})
        with VramSampler(enabled=sample_vram) as vram:
            prompt_id, timeline, entry = follow_prompt(comfy_url, bound.graph, timeout)
        result = analyze(timeline, bound.graph, bound.high_sampler, bound.low_sampler, entry)
    finally:
        workspace.cleanup()
    used = bound.used
    result.update(
        case=case.name,
        resolution=case.resolution,
        steps=case.steps,
        prompt_id=prompt_id,
        vram=vram.summary(),
        used={
            k: used.get(k)
            for k in (
                "width",
                "height",
                "frames",
                "steps",
                "split",
                "cfg",
                "cfg_low",
                "shift",
                "scheduler",
                "attention_mode",
                "quantization",
                "load_device",
                "blocks_to_swap",
            )
        },
        expected=expected_for(
            case.resolution, case.steps, float(used.get("cfg", 1)), float(used.get("cfg_low", 1)), int(used.get("split", 0))
        ),
    )
    return result


def run_through_worker(worker_url: str, case: Case, image: Path, timeout: float) -> dict:
    """One job through the worker's API (/run + /status), as a client sees it."""
    started = time.monotonic()
    job = requests.post(worker_url.rstrip("/") + "/run", json={"input": job_input(case, image)}, timeout=60).json()
    while True:
        body = requests.post(f"{worker_url.rstrip('/')}/status/{job['id']}", timeout=60).json()
        if body.get("status") in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            break
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"worker job {job['id']} still {body.get('status')} after {timeout:.0f} s")
        time.sleep(1.0)
    wall = time.monotonic() - started
    out = body.get("output") or {}
    if body.get("status") != "COMPLETED":
        raise RuntimeError(f"worker job failed: {str(body)[:1000]}")
    return {
        "case": case.name,
        "wall_s": round(wall, 2),
        "timings": out.get("timings"),
        "size_mb": (out.get("metadata") or {}).get("size_mb"),
    }


def rows(report: dict) -> list[list[object]]:
    out = []

    def rng(pair: list | tuple | None) -> str:
        return "-" if not pair else f"{pair[0]:g}-{pair[1]:g}"

    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for run in report.get("runs", []):
        ex, hi, lo = run["expected"], run["experts"]["high"], run["experts"]["low"]
        label = run["case"] + (" (cold)" if run.get("cold") else "")
        out.append(
            [
                label,
                f"{run['total_s']:.1f}",
                rng(ex.get("wan_facts_warm_e2e_lightning_s") or ex["e2e_s_estimate"]),
                f"{sec(hi['s_per_step'])} / {sec(lo['s_per_step'])}",
                rng(ex["s_per_step_floor_realistic"]),
                f"{run['model_load_s']:.1f}",
                "-" if run["vram"]["peak_gb"] is None else f"{run['vram']['peak_gb']:.1f}",
                f"{rng(ex['vram_gb_one_expert_resident'])} / {rng(ex['vram_gb_both_experts_resident'])}",
            ]
        )
    return out


def print_rows(report: dict) -> None:
    _common.print_table(
        [
            "case",
            "total s",
            "expected s (H100)",
            "s/step high / low",
            "expected s/step",
            "model load s",
            "peak VRAM GB",
            "expected GB (1 / 2 experts)",
        ],
        rows(report),
    )
    for run in report.get("through_worker", []):
        print(f"through the worker: {run['case']}: {run['wall_s']} s wall, timings {run['timings']}")


def run(
    comfy_url: str = "http://127.0.0.1:8188",
    worker_url: str | None = None,
    resolutions: list[str] | None = None,
    steps: list[int] | None = None,
    repeat: int = 1,
    image: Path | None = None,
    timeout: float = 1800.0,
    gpu_check: bool = True,
    frames: int = FRAMES,
    out: Path | None = None,
) -> dict:
    from tenexa.config import load_settings

    gpu = gpu_info() if gpu_check else {"name": "none (gpu check disabled)"}
    try:
        requests.get(comfy_url + "/system_stats", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        raise BenchmarkSkipped(
            f"an NVIDIA GPU is here but no ComfyUI answers at {comfy_url} ({type(exc).__name__}): start the "
            "worker (entrypoint.sh) or ComfyUI with the real weights first, or pass --comfy-url"
        ) from None
    settings = load_settings()
    image = image or _common.REPO / "example_image.png"
    cases = [Case(r, s, frames) for r in (resolutions or list(RESOLUTIONS)) for s in (steps or [10, 4])]
    report = _common.report_header("gpu_generate")
    report.update(
        gpu=gpu, comfy_url=comfy_url, frames=frames, seed=SEED, expected_source="shared/reference/wan-facts.md §6 (estimates, H100)"
    )
    report["runs"] = []
    for i, case in enumerate(cases * repeat):
        result = run_case(comfy_url, settings, case, image, timeout, sample_vram=gpu_check)
        result["cold"] = i == 0
        report["runs"].append(result)
        print(f"  {result['case']}{' (cold)' if i == 0 else ''}: {result['total_s']} s", file=sys.stderr)
    if worker_url:
        report["through_worker"] = [run_through_worker(worker_url, case, image, timeout) for case in cases]
    print_rows(report)
    path = _common.write_report(out or _common.RESULTS / "gpu_generate.json", report)
    print(f"wrote {_common.relative(path)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy-url", default="http://127.0.0.1:8188", help="ComfyUI with the real weights (the worker's own)")
    parser.add_argument("--worker-url", help="also run each case through the worker's API at this URL (/run + /status)")
    parser.add_argument("--cases", default="480p,720p", help="resolutions: 480p,720p")
    parser.add_argument("--steps", default="10,4", help="step counts: 10 is the default, 4 the Lightning setting")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the first run of all is the cold one)")
    parser.add_argument("--image", type=Path, help="start image (default example_image.png)")
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames per video (81 is what the model is tuned for)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument(
        "--no-gpu-check", action="store_true", help="for the benchmark's own tests: run against any ComfyUI (e.g. the protocol double)"
    )
    args = parser.parse_args(argv)
    try:
        run(
            args.comfy_url,
            args.worker_url,
            args.cases.split(","),
            [int(s) for s in args.steps.split(",")],
            args.repeat,
            args.image,
            args.timeout,
            gpu_check=not args.no_gpu_check,
            frames=args.frames,
        )
    except BenchmarkSkipped as skip:
        print(f"SKIPPED: {skip}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
