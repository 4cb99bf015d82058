"""The GPU proof: the worker's own Wan2.2 graph at full A14B size on one GPU, in one prepared command.

Random weights of the real shapes: timing, not quality. A diffusion step costs the same whatever the weights'
values, so synthetic files with the real tensor names, shapes and dtypes run the real kernels, memory traffic
and transfers. The chain is the production one: ``handler.handler`` (generate mode) binds the shipped graph,
uploads the image, follows ComfyUI and probes and delivers the MP4; only what the synthetic set-up forces differs
(below).

    python bench/gpu_proof.py --prepare      # here: build .gpu_payload/ (sources + wheels, ~60 MiB) and measure it
    python bench/gpu_proof.py                # on the GPU machine: the proof, <= 8 min, figures under $OUT
    python bench/gpu_proof.py --cpu-smoke    # here: the same chain at reduced depth on CPU (the test suite runs it)

Steps of the GPU run (each writes the report again, so a cut-off still returns what was measured):
1. unpack ``.gpu_payload/`` (ComfyUI + WanVideoWrapper, VideoHelperSuite, KJNodes, and the carried packages) into
   ``--work`` (default ``.gpu_work/``), unless a previous call on this machine already did;
2. write the synthetic weights (``bench/gpu_weights.py``, generated on the GPU, 31.5 GB streamed) to /dev/shm when it
   has 40 GB free (memory speed, whatever the disk), else under ``--work``;
3. start ComfyUI from those sources with the machine's own torch (``--front-end-root`` on an empty folder; the
   probe ``bench/comfy_probe`` measures each node from inside);
4. run the cases through ``handler.handler`` in order, skipping an optional one when the time left would not
   cover it and the required ones after it: 480p x 81 x 4 steps (cold: loads the models), the same again warm,
   480p x 81 x 10 steps, 720p x 81 x 4 (optional), 480p x 81 x 4 with 20 blocks swapped (reloads the experts);
5. write ``gpu_proof.json`` and ``gpu_proof.md`` (and ``comfyui.log``) under ``--out`` (default ``$OUT``).

Differences from production, all forced by the synthetic set-up and all printed in the report: T5 replaced by
the wrapper's text-embedding disk cache (``TENEXA_TEXT_ENCODER=cache``; T5 costs 0.5-1 s per job on a GPU);
attention ``sdpa`` (no SageAttention build for this GPU and torch can be carried); the model files were just
written, so the loaders read them from memory (/dev/shm or the page cache), not from a cold disk; the MP4 is noise
and so larger than a real video (``MAX_RESPONSE_MB`` raised so it is still returned as base64).

``--cpu-smoke`` runs the same steps here with the installed ComfyUI (``COMFY_ROOT``/``COMFY_PYTHON``, else
``~/.cache/tenexa``) under the rehearsal of the GPU machine's packages (``bench/gpu_payload.py``), at full
width (dim 5120, ffn 13824) but 1 of the 40 blocks, 64x64 x 5 frames, 4 steps, one cold job with that block
swapped, computing in fp32 (base precision and VAE: bf16 matmuls and 3-D convolutions run ~100x slower than fp32
on a CPU without bf16 units; the weights stay fp8 scaled as shipped). What it proves: the weight synthesis at the
real names, the pack's real loader accepting them, the worker's generate, and the figure collection; not speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import _common
import gpu_payload

LABEL = "random weights of the real shapes: timing, not quality"
WEIGHTS_SCRIPT = Path(__file__).resolve().parent / "gpu_weights.py"
PROBE_DIR = Path(__file__).resolve().parent / "comfy_probe"
DEFAULT_WORK = _common.REPO / ".gpu_work"
DEFAULT_BUDGET_S = 480.0  # one device call is at most 10 min; the proof must leave room for the machine's start
END_RESERVE_S = 20.0  # writing the report and stopping ComfyUI
PEAK_TFLOPS = 800.0  # wan-facts.md §6.3's floor; an H200 multiplied 8192^3 bf16 at 769-798 TF/s here (KINDS.md)
MODEL = {"layers": 40, "dim": 5120, "ffn": 13824, "text_len": 512}
SHM_NEEDED_BYTES = 40e9  # the 31.5 GB of synthetic files with room to spare


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    frames: int
    steps: int
    blocks_to_swap: int = 0
    required: bool = True


GPU_CASES = (
    Case("480p 81f 4 steps (cold)", 832, 480, 81, 4),
    Case("480p 81f 4 steps", 832, 480, 81, 4),
    Case("480p 81f 10 steps", 832, 480, 81, 10),
    Case("720p 81f 4 steps", 1280, 720, 81, 4, required=False),
    Case("480p 81f 4 steps, 20 blocks swapped", 832, 480, 81, 4, blocks_to_swap=20),
)
SMOKE_BLOCKS = 1
SMOKE_CASES = (Case("64x64 5f 4 steps, 1 block swapped (cold)", 64, 64, 5, 4, blocks_to_swap=1),)


# ------------------------------------------------------------------------------------------------ the floor


def tokens(width: int, height: int, frames: int) -> int:
    """DiT tokens: latent frames x (H/16) x (W/16) (VAE stride 4x8x8, patch 1x2x2)."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def dit_flops(width: int, height: int, frames: int, layers: int = MODEL["layers"], dim: int = MODEL["dim"],
              ffn: int = MODEL["ffn"], text_len: int = MODEL["text_len"]) -> float:
    """FLOPs of one DiT forward (wan-facts.md §6.3): linears (self q,k,v,o + cross q,o + FFN, and the cross k,v on
    the 512 text tokens), self-attention 4*N^2*d and cross-attention 4*N*512*d per layer."""
    n = tokens(width, height, frames)
    linear = 2 * n * (6 * dim**2 + 2 * dim * ffn) * layers + 2 * text_len * 2 * dim**2 * layers
    return linear + 4 * n * n * dim * layers + 4 * n * text_len * dim * layers


def forwards(steps: int, high_steps: int, cfg: float, cfg_low: float) -> int:
    """DiT forwards of a job: one per step, plus the unconditional pass where cfg > 1 (the high expert's first
    step under the shipped CFG schedule; every low step when cfg_low > 1)."""
    return steps + (1 if cfg > 1 else 0) + ((steps - high_steps) if cfg_low > 1 else 0)


def _sig(value: float, digits: int = 4) -> float:
    """Rounded to significant digits: the CPU smoke's floors are microseconds, the GPU's seconds."""
    return float(f"{value:.{digits}g}")


def floor_figures(case: Case, used: dict, layers: int, peak_tflops: float) -> dict:
    per_forward = dit_flops(case.width, case.height, case.frames, layers=layers)
    n_forwards = forwards(int(used["steps"]), int(used["split"]), float(used["cfg"]), float(used["cfg_low"]))
    return {
        "tokens": tokens(case.width, case.height, case.frames),
        "layers": layers,
        "pflop_per_forward": _sig(per_forward / 1e15),
        "forwards": n_forwards,
        "peak_tflops": peak_tflops,
        "s_per_forward_floor": _sig(per_forward / (peak_tflops * 1e12)),
        "dit_s_floor": _sig(n_forwards * per_forward / (peak_tflops * 1e12)),
    }


# ------------------------------------------------------------------------------------------------ sampling


def _rss_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError):
        pass
    return None


def _gpu_memory_reader():
    """A function returning the first GPU's used memory in GB (1e9 bytes, as every figure here) as nvidia-smi reports
    it (NVML, the whole GPU): through nvidia-ml-py when importable (it is on the GPU image; it opens no CUDA context
    and starts no process), else one nvidia-smi call per sample."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 1e9
    except Exception:  # noqa: BLE001 - no NVML binding or no driver: fall back to the command
        def smi() -> float | None:
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=10).stdout
                return float(out.split()[0]) * 2**20 / 1e9  # MiB
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return None

        return smi


class ResourceSampler:
    """Every ``interval`` s: wall time, the GPU's used memory (NVML, whole GPU, as nvidia-smi shows it) and the RSS
    of ComfyUI and of this process (the worker). Windows of it give the peak of a job or of one node."""

    def __init__(self, comfy_pid: int, gpu: bool, interval: float = 0.2):
        self.comfy_pid, self.interval = comfy_pid, interval
        self.read_gpu = _gpu_memory_reader() if gpu else (lambda: None)
        self.samples: list[tuple[float, float | None, float | None, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.read_gpu(), _rss_gb(self.comfy_pid), _rss_gb(os.getpid())))
            self._stop.wait(self.interval)

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def peaks(self, start: float, end: float) -> dict:
        window = [s for s in self.samples if start <= s[0] <= end] or [s for s in self.samples if s[0] <= end][-1:]

        def peak(i: int) -> float | None:
            values = [s[i] for s in window if s[i] is not None]
            return round(max(values), 3) if values else None

        return {"gpu_memory_used_gb": peak(1), "comfy_rss_gb": peak(2), "worker_rss_gb": peak(3), "samples": len(window)}


# ------------------------------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    """What one proof run works with: where ComfyUI is, how it starts, and the settings the worker gets."""

    mode: str  # "gpu" or "cpu-smoke"
    comfy_root: Path
    comfy_python: Path
    work: Path
    models_dir: Path
    blocks: int
    cases: tuple[Case, ...]
    env: dict[str, str] = field(default_factory=dict)  # for ComfyUI and the weight synthesis
    rehearsal_view: Path | None = None
    process: subprocess.Popen | None = None
    port: int = 0

    def script_command(self, script: Path, *args: str) -> list[str]:
        """``python SCRIPT ARGS`` with ComfyUI's interpreter, under the rehearsal in the smoke run."""
        launcher = [str(self.comfy_python), str(Path(gpu_payload.__file__).resolve()), "launch"]
        if self.rehearsal_view is not None:
            launcher += ["--rehearsal-view", str(self.rehearsal_view)]
        return [*launcher, str(script), *args]


def prepare_stack(args: argparse.Namespace, report: dict) -> Stack:
    if args.cpu_smoke:
        root, python = _common.comfy_install()
        work = Path(tempfile.mkdtemp(prefix="tenexa-gpu-proof-smoke-"))
        view = work / "rehearsal-comfy"
        report["setup"]["comfyui"] = {"root": str(root), "python": str(python), "source": "installed (COMFY_ROOT / ~/.cache/tenexa)"}
        return Stack("cpu-smoke", root, python, work, work / "models", SMOKE_BLOCKS, SMOKE_CASES,
                     env={"PYTHONUNBUFFERED": "1", "TENEXA_PROBE_REDUCED_DEPTH": "1"}, rehearsal_view=view)
    payload = Path(args.payload)
    if not (payload / "payload.json").is_file():
        raise _common.BenchmarkSkipped(f"no payload at {payload}: run `python bench/gpu_proof.py --prepare` on a machine that "
                                       "reaches the package registry, then carry .gpu_payload (docs/PERFORMANCE.md)")
    work = Path(args.work)
    unpacked = gpu_payload.unpack(payload, work)
    report["setup"]["unpack"] = {"seconds": unpacked["seconds"], "reused": unpacked["reused"],
                                 "payload": json.loads((payload / "payload.json").read_text()).get("carry")}
    site = str(unpacked["site"])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, site)  # the worker in this process needs the carried websocket-client and av
    report["setup"]["comfyui"] = {"root": str(unpacked["comfy_root"]), "python": sys.executable, "source": "the payload"}
    models = Path(args.models_dir) if args.models_dir else default_models_dir(work)
    report["setup"]["models_dir"] = str(models)
    return Stack("gpu", unpacked["comfy_root"], Path(sys.executable), work, models, MODEL["layers"], GPU_CASES,
                 env={"PYTHONUNBUFFERED": "1"})


def default_models_dir(work: Path) -> Path:
    """Where the GPU run writes its 31.5 GB: /dev/shm when it has room (memory speed, whatever the disk), else the
    work folder. Either way the loaders then read from memory: the report says the loads are a lower bound."""
    try:
        if shutil.disk_usage("/dev/shm").free >= SHM_NEEDED_BYTES:
            return Path("/dev/shm/tenexa-gpu-proof-models")
    except OSError:
        pass
    return work / "models"


def synthesize(stack: Stack, prompts: list[str], device: str) -> dict:
    cmd = stack.script_command(WEIGHTS_SCRIPT, "--comfy-root", str(stack.comfy_root), "--models-dir", str(stack.models_dir),
                               "--blocks", str(stack.blocks), "--device", device, "--report", str(stack.work / "weights.json"),
                               *[a for p in prompts for a in ("--prompt", p)])
    done = subprocess.run(cmd, env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"weight synthesis failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads((stack.work / "weights.json").read_text())


def start_comfyui(stack: Stack, log_path: Path, cpu: bool) -> float:
    """Start ComfyUI on a free port with the synthetic models and the probe; seconds until it answered."""
    frontend = stack.work / "frontend-empty"
    frontend.mkdir(parents=True, exist_ok=True)
    extra = stack.work / "extra_model_paths.yaml"
    folders = "\n".join(f"    {name}: {name}" for name in ("diffusion_models", "vae", "loras", "text_encoders"))
    extra.write_text(f"tenexa_gpu_proof:\n    base_path: {stack.models_dir}\n{folders}\n"
                     f"tenexa_gpu_probe:\n    custom_nodes: {PROBE_DIR}\n", encoding="utf-8")
    stack.port = _common.free_port()
    args = ["--listen", "127.0.0.1", "--port", str(stack.port), "--disable-auto-launch", "--extra-model-paths-config", str(extra),
            "--front-end-root", str(frontend), "--disable-all-custom-nodes", "--whitelist-custom-nodes",
            *gpu_payload.CUSTOM_NODES, "tenexa_gpu_probe", *(["--cpu"] if cpu else [])]
    started = time.monotonic()
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        stack.process = subprocess.Popen(stack.script_command(stack.comfy_root / "main.py", *args), cwd=stack.comfy_root,
                                         env={**os.environ, **stack.env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        _common.wait_http(f"http://127.0.0.1:{stack.port}/system_stats", _common.COMFY_BOOT_TIMEOUT, stack.process, "ComfyUI")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; log tail:\n{log_path.read_text(errors='replace')[-3000:]}") from None
    return round(time.monotonic() - started, 1)


def probe_get(stack: Stack, what: str, **params) -> dict:
    import requests

    return requests.get(f"http://127.0.0.1:{stack.port}/tenexa_probe/{what}", params=params, timeout=30).json()


def worker_settings(stack: Stack, cpu: bool):
    from tenexa.config import load_settings

    return load_settings({
        "COMFY_ROOT": str(stack.comfy_root), "COMFY_PORT": str(stack.port), "SERVER_ADDRESS": "127.0.0.1",
        "COMFY_LOG": str(stack.work / "comfyui.log"), "VOLUME_ROOT": str(stack.work / "no-volume"),
        "HANDLER_VERSION": "gpu-proof", "COMFY_READY_TIMEOUT": "30",
        # forced by the synthetic set-up (said in the report): no T5, no SageAttention build; a noise MP4 is large
        "TENEXA_TEXT_ENCODER": "cache", "TENEXA_ATTENTION": "sdpa", "MAX_RESPONSE_MB": "2000",
        # on a CPU, bf16 matmuls and 3-D convolutions run ~100x slower than fp32 (no bf16 units): compute in fp32
        **({"TENEXA_VAE_PRECISION": "fp32", "TENEXA_BASE_PRECISION": "fp32"} if cpu else {}),
    })


# ------------------------------------------------------------------------------------------------ one case


def _recording_client(url: str):
    """The worker's ComfyClient, keeping every event of each prompt with its time (the handler's own client is
    replaced by one of these; it behaves identically)."""
    from tenexa.comfy import ComfyClient

    class RecordingClient(ComfyClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.events: list[tuple[float, str, dict]] = []
            self.started = self.returned = 0.0

        def run_prompt(self, graph, **kwargs):
            self.events, self.started = [], time.monotonic()
            inner = kwargs.get("on_event")

            def on_event(kind, data):
                self.events.append((time.monotonic() - self.started, kind, data))
                if inner is not None:
                    inner(kind, data)

            kwargs["on_event"] = on_event
            try:
                return super().run_prompt(graph, **kwargs)
            finally:
                self.returned = time.monotonic() - self.started

    return RecordingClient(url)


def job_input(case: Case) -> dict:
    import gpu_generate

    return {"image_base64": base64.b64encode((_common.REPO / "example_image.png").read_bytes()).decode(), "prompt": gpu_generate.PROMPT,
            "seed": gpu_generate.SEED, "width": case.width, "height": case.height, "frames": case.frames, "steps": case.steps}


def run_case(stack: Stack, case: Case, base_settings, sampler: ResourceSampler, deadline: float, layers: int,
             peak_tflops: float) -> dict:
    import gpu_generate

    import handler
    from tenexa import workflows

    since = probe_get(stack, "records")["count"]
    handler.SETTINGS = dataclasses.replace(base_settings, blocks_to_swap=case.blocks_to_swap,
                                           exec_timeout=max(30.0, deadline - time.monotonic()))
    handler.CLIENT = client = _recording_client(base_settings.comfy_url)
    wall_start = time.time()
    started = time.monotonic()
    response = asyncio.run(handler.handler({"id": f"gpu-proof-{uuid.uuid4().hex[:8]}", "input": job_input(case)}))
    wall = time.monotonic() - started
    wall_end = time.time()
    if response.get("status") != "completed":
        raise RuntimeError(f"{case.name}: the worker answered {response.get('error_code')}: {response.get('error')}")
    used = response["used"]
    bound_graph = workflows.load_graph(used["workflow"])
    timeline = gpu_generate.Timeline(0.0, client.events, done_at=client.returned)
    spec = workflows.spec(used["workflow"])
    comfy = gpu_generate.analyze(timeline, bound_graph, spec.high_sampler, spec.low_sampler)
    records = probe_get(stack, "records", since=since)["records"]
    timings = response["timings"]
    floor = floor_figures(case, used, layers, peak_tflops)
    result = {
        "case": case.name,
        "config": {"width": used["width"], "height": used["height"], "frames": used["frames"], "steps": used["steps"],
                   "split": used["split"], "cfg": used["cfg"], "cfg_low": used["cfg_low"], "blocks_to_swap": used["blocks_to_swap"],
                   "attention_mode": used["attention_mode"], "quantization": used["quantization"],
                   "base_precision": used["base_precision"], "load_device": used["load_device"], "vae_precision": used["vae_precision"],
                   "scheduler": used["scheduler"], "text_encoder": used["text_encoder"]},
        "job": {"e2e_s": round(wall, 3), "timings": timings,
                "worker_overhead_s": round(timings["total_s"] - timings["execution_s"], 3),
                "handler_dispatch_s": round(wall - timings["total_s"], 3),
                "video": {"frames": response["frames"], "width": response["width"], "height": response["height"],
                          "size_mb": response["metadata"]["size_mb"]}},
        "comfy": {"ws_total_s": comfy["total_s"], "seconds_by_class": comfy["seconds_by_class"]},
        "resources_job": sampler.peaks(wall_start, wall_end),
        "floor": floor,
        "nodes": records,
    }
    result["experts"] = {}
    samplers, loader_of, pending = [], {}, None
    for record in records:  # ComfyUI runs each expert's loader (unless cached) just before its sampler
        if record["class"] == "WanVideoModelLoader":
            pending = record
        elif record["class"] == "WanVideoSampler":
            loader_of[len(samplers)], pending = pending, None
            samplers.append(record)
    for index, label in enumerate(("high", "low")):
        expert, record = dict(comfy["experts"][label]), samplers[index] if index < len(samplers) else None
        loader = loader_of.get(index)
        # the loader node builds the model; the sampler then reads the weights into place (its first progress bar)
        load = (loader["seconds"] if loader else 0.0) + (expert.get("weights_load_s") or 0.0)
        expert["model_load_s"] = round(load, 3) if loader or expert.get("weights_load_s") else None
        expert["loader"] = loader and loader.get("loader")
        if record:
            expert.update(cuda_peak_allocated_gb=record.get("cuda_peak_allocated_gb"), cuda_peak_reserved_gb=record.get("cuda_peak_reserved_gb"),
                          output_finite=record.get("output_finite"),
                          **sampler.peaks(record["t_start"], record["t_end"]))
        if expert["s_per_step"]:
            expert["ratio_to_floor"] = round(expert["s_per_step"] / floor["s_per_forward_floor"], 2)
        result["experts"][label] = expert
    experts = result["experts"].values()
    result["model_load"] = {"experts_s": [e["model_load_s"] for e in experts if e["model_load_s"] is not None],
                            "loader_nodes_s": [loader["seconds"] for loader in loader_of.values() if loader],
                            "weights_load_s": [e["weights_load_s"] for e in experts if e.get("weights_load_s") is not None],
                            "vae_loader_s": sum(r["seconds"] for r in records if r["class"] == "WanVideoVAELoader")}
    decode = next((r for r in records if r["class"] == "WanVideoDecode"), None)
    result["vae_decode"] = decode and {"seconds": decode["seconds"], "cuda_peak_allocated_gb": decode.get("cuda_peak_allocated_gb"),
                                       "output_finite": decode.get("output_finite"), **sampler.peaks(decode["t_start"], decode["t_end"])}
    encode = next((r for r in records if r["class"] == "WanVideoImageToVideoEncode"), None)
    result["vae_encode"] = encode and {"seconds": encode["seconds"], "output_finite": encode.get("output_finite")}
    samplers_s = sum(r["seconds"] for r in samplers)
    sampling = samplers_s - sum(result["model_load"]["weights_load_s"])  # the samplers' time minus reading weights in
    result["dit"] = {"samplers_s": round(samplers_s, 3), "sampling_s": round(sampling, 3),
                     "ratio_to_floor": round(sampling / floor["dit_s_floor"], 2) if floor["dit_s_floor"] else None}
    return result


def time_needed(cases: tuple[Case, ...], index: int, done: list[dict]) -> float:
    """Seconds to keep free before starting ``cases[index]``: its own prediction, and for an optional case also
    those of the required cases after it (they must not be crowded out)."""

    def reloads(i: int) -> bool:  # the block swap settings feed the loaders: a change reloads both experts
        return i == 0 or cases[i].blocks_to_swap != cases[i - 1].blocks_to_swap

    need = predicted_s(cases[index], done, reloads(index))
    if not cases[index].required:
        need += sum(predicted_s(cases[i], done, True) for i in range(index + 1, len(cases)) if cases[i].required)
    return need


def predicted_s(case: Case, done: list[dict], models_reload: bool) -> float:
    """A pessimistic guess of a case's duration from the last case measured (for the time budget): its sampling
    seconds per PFLOP times this case's FLOPs, everything else (VAE, weights read in, encode, delivery) scaled by
    the pixels when they grow, the loader nodes again on a reload, and 25 % on top."""
    if not done:
        return 240.0
    ref = done[-1]
    per_forward = dit_flops(case.width, case.height, case.frames, layers=ref["floor"]["layers"])
    sampling_per_pflop = ref["dit"]["sampling_s"] / max(ref["floor"]["pflop_per_forward"] * ref["floor"]["forwards"], 1e-12)
    other = max(ref["job"]["e2e_s"] - ref["dit"]["sampling_s"], 0.0)
    pixels = case.width * case.height * case.frames / (ref["config"]["width"] * ref["config"]["height"] * ref["config"]["frames"])
    reload = max((sum(r["model_load"]["loader_nodes_s"]) for r in done), default=0.0) if models_reload else 0.0
    return 1.25 * (sampling_per_pflop * (case.steps + 1) * per_forward / 1e15 + other * max(pixels, 1.0) + reload)


# ------------------------------------------------------------------------------------------------ report


def markdown(report: dict) -> str:
    env, setup = report.get("comfy_env") or {}, report["setup"]
    lines = [
        f"# Tenexa GPU proof: {LABEL}", "",
        f"{report['date']} · commit `{report['commit']}` · mode `{report['mode']}` · "
        f"GPU {report['gpu'].get('name', '-')} (driver {report['gpu'].get('driver', '-')}) · torch {env.get('torch', '-')} "
        f"(CUDA {env.get('cuda', '-')}) · Python {env.get('python', '-')} · {report['machine']['cpus']} CPUs, {report['machine']['ram_gb']} GB RAM",
        "",
        "Synthetic set-up (forced, not chosen): " + "; ".join(report["differences"]) + ".",
        "",
        "| case | e2e s | ComfyUI exec s | worker overhead s | expert load s (high / low) | s/step high / low | floor s/forward | "
        "ratio high / low | VAE decode s | peak VRAM torch GB (high / low / decode) | peak VRAM nvidia-smi GB | host RAM peak GB (ComfyUI / worker) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(value, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def g(value) -> str:  # 3 significant digits: a GPU floor is ~2 s, a CPU smoke's microseconds
        return "-" if value is None else f"{value:.3g}"

    for run in report["runs"]:
        hi, lo, job, res = run["experts"].get("high", {}), run["experts"].get("low", {}), run["job"], run["resources_job"]
        loads = run["model_load"]["experts_s"]
        decode = run.get("vae_decode") or {}
        lines.append(
            f"| {run['case']} | {f(job['e2e_s'], 1)} | {f(job['timings']['execution_s'], 1)} | {f(job['worker_overhead_s'])} | "
            f"{' / '.join(f(x, 1) for x in loads) if loads else 'cached'} | {f(hi.get('s_per_step'))} / {f(lo.get('s_per_step'))} | "
            f"{g(run['floor']['s_per_forward_floor'])} | {g(hi.get('ratio_to_floor'))} / {g(lo.get('ratio_to_floor'))} | "
            f"{f(decode.get('seconds'))} | {f(hi.get('cuda_peak_allocated_gb'), 1)} / {f(lo.get('cuda_peak_allocated_gb'), 1)} / "
            f"{f(decode.get('cuda_peak_allocated_gb'), 1)} | {f(res.get('gpu_memory_used_gb'), 1)} | {f(res.get('comfy_rss_gb'), 1)} / "
            f"{f(res.get('worker_rss_gb'), 2)} |")
    for skipped in report.get("skipped", []):
        lines.append(f"| {skipped['case']} | skipped: {skipped['reason']} |" + " |" * 10)
    weights = setup.get("weights") or {}
    lines += [
        "",
        f"Set-up: payload unpack {f((setup.get('unpack') or {}).get('seconds'), 1)} s; weights "
        f"{f((weights.get('bytes') or 0) / 1e9, 1)} GB in {f(weights.get('seconds'), 1)} s on {weights.get('device', '-')} "
        f"({weights.get('blocks', '-')} of {weights.get('layers_real', '-')} blocks); ComfyUI ready after {f(setup.get('comfyui_boot_s'), 1)} s.",
        "",
        "s/step is the median gap between step ticks of an expert's sampler (its first step, which also moves the "
        "expert to the GPU, is `first_step_s` in the JSON); expert load is the loader node plus the sampler's weight-"
        "loading bar (paid by every job: the wrapper frees unmerged-LoRA experts after each); the floor is one "
        "forward's FLOPs (wan-facts.md §6.3) at "
        f"{report['peak_tflops']:g} TF/s; e2e is `handler.handler` called in process, worker overhead its `total_s` minus "
        "ComfyUI's `execution_s`. Every figure's source is in gpu_proof.json.",
    ]
    if report.get("error"):
        lines += ["", f"**Stopped early**: {report['error']}"]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_proof.json", json.dumps(report, indent=1, default=str) + "\n"), ("gpu_proof.md", markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


# ------------------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> int:
    begun = time.monotonic()
    deadline = begun + args.budget_s - END_RESERVE_S
    out = Path(args.out)
    cpu = args.cpu_smoke
    report = _common.report_header("gpu_proof")
    report.update(mode="cpu-smoke" if cpu else "gpu", label=LABEL, peak_tflops=args.peak_tflops, budget_s=args.budget_s,
                  setup={}, runs=[], skipped=[], differences=[
                      "T5 replaced by the wrapper's text-embedding disk cache (TENEXA_TEXT_ENCODER=cache: random embeddings; "
                      "T5 costs 0.5-1 s per job on a GPU and is in no figure)",
                      "attention sdpa (no SageAttention build carried)",
                      "model files freshly written, so loads read memory (/dev/shm or the page cache): a lower bound of a cold load",
                      "the MP4 is noise, larger than a real video (MAX_RESPONSE_MB raised)",
                  ])
    if cpu:
        small = SMOKE_CASES[0]
        report["differences"] += [f"CPU smoke run: {SMOKE_BLOCKS} of 40 blocks at full width (the probe has the loader build the "
                                  f"blocks the file holds), {small.width}x{small.height} x {small.frames} frames, compute (base "
                                  "precision) and VAE in fp32, ComfyUI --cpu, only the GPU machine's packages (rehearsal)"]
    elif shutil.which("nvidia-smi") is None:
        raise _common.BenchmarkSkipped("no NVIDIA GPU: nvidia-smi is not on PATH (use --cpu-smoke to prove the chain on a CPU)")
    try:
        stack = prepare_stack(args, report)
    except _common.BenchmarkSkipped:
        raise
    except Exception as exc:  # a broken payload still leaves a report saying so
        report["error"] = f"preparing the stack: {type(exc).__name__}: {exc}"[:4000]
        report["gpu"] = {}
        write_outputs(report, out)
        raise
    if stack.rehearsal_view is not None:
        # the worker too (this process) runs with the GPU machine's packages only; a view per interpreter
        report["setup"]["rehearsal_worker"] = gpu_payload.enter_rehearsal(stack.work / "rehearsal-worker")
    import gpu_generate  # only now: it imports websocket-client, which the GPU machine has only from the payload

    from tenexa.request import DEFAULT_NEGATIVE_PROMPT

    report["gpu"] = {"name": "none (CPU smoke run)"} if cpu else gpu_generate.gpu_info()

    written_embeds: list[str] = []
    sampler = None
    try:
        started = time.monotonic()
        report["setup"]["weights"] = weights = synthesize(stack, [gpu_generate.PROMPT, DEFAULT_NEGATIVE_PROMPT], "cpu" if cpu else "cuda")
        written_embeds = weights["embeds"]
        report["setup"]["weights_wall_s"] = round(time.monotonic() - started, 1)
        write_outputs(report, out)
        report["setup"]["comfyui_boot_s"] = start_comfyui(stack, stack.work / "comfyui.log", cpu)
        report["comfy_env"] = probe_get(stack, "env")
        sampler = ResourceSampler(stack.process.pid, gpu=not cpu).start()
        base = worker_settings(stack, cpu)
        write_outputs(report, out)
        for index, case in enumerate(stack.cases):
            need, left = time_needed(stack.cases, index, report["runs"]), deadline - time.monotonic()
            if report["runs"] and need > left:
                report["skipped"].append({"case": case.name, "reason": f"needs ~{need:.0f} s, {left:.0f} s left"})
                continue
            print(f"[gpu proof] {case.name} ({left:.0f} s left)", file=sys.stderr, flush=True)
            report["runs"].append(run_case(stack, case, base, sampler, deadline, stack.blocks, args.peak_tflops))
            write_outputs(report, out)
        report["comfy_env"] = probe_get(stack, "env")  # again: the distributions imported now include the jobs' own
        if stack.rehearsal_view is not None:
            report["setup"]["rehearsal_comfy"] = json.loads((stack.rehearsal_view / ".tenexa-rehearsal.json").read_text())
        status = 0
    except Exception as exc:  # noqa: BLE001 - whatever stops the proof, the figures so far are written with the reason
        report["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        status = 1
    finally:
        if sampler is not None:
            sampler.stop()
        if stack.process is not None:
            _common.stop_process(stack.process)
        log = stack.work / "comfyui.log"
        if log.is_file():
            (out / "comfyui.log").parent.mkdir(parents=True, exist_ok=True)
            (out / "comfyui.log").write_bytes(log.read_bytes()[-4_000_000:])
        for path in written_embeds:  # inside a shared ComfyUI tree in the smoke run: only what this run wrote
            Path(path).unlink(missing_ok=True)
        if cpu and not args.keep_work:
            shutil.rmtree(stack.work, ignore_errors=True)
        report["total_s"] = round(time.monotonic() - begun, 1)
        write_outputs(report, out)
    print(markdown(report))
    print(f"wrote {_common.relative(out / 'gpu_proof.json')} and gpu_proof.md", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", action="store_true", help="build the payload (.gpu_payload/) and measure what a device call carries")
    parser.add_argument("--cpu-smoke", action="store_true", help="the whole chain on CPU at reduced depth (the installed ComfyUI)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(_common.RESULTS / "gpu_proof"), help="where the report goes (default $OUT)")
    parser.add_argument("--payload", default=str(gpu_payload.PAYLOAD_DIR), help="the prepared payload folder")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="where the payload is unpacked and the weights written (GPU run)")
    parser.add_argument("--vendor", default=str(gpu_payload.DEFAULT_VENDOR), help="the vendor archives (--prepare)")
    parser.add_argument("--models-dir", help="where the GPU run writes the weights (default /dev/shm if it has room, else --work)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop starting cases after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="the peak the FLOP floor assumes")
    parser.add_argument("--keep-work", action="store_true", help="keep the smoke run's temporary folder")
    args = parser.parse_args(argv)
    if args.prepare:
        manifest = gpu_payload.prepare(Path(args.vendor), Path(args.payload))
        print(json.dumps(manifest["carry"], indent=1))
        return 0 if manifest["carry"]["fits"] else 1
    try:
        return run(args)
    except _common.BenchmarkSkipped as skip:
        print(f"SKIPPED: {skip}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
