"""The shipped workflows and how a request is bound into them.

Each workflow is an API-format ComfyUI graph at the repo root plus ONE declarative binding table that maps
every API parameter and runtime setting to the node inputs it sets ("node.input"). This module is the only
place in the package that knows node ids; everything else asks ``bind`` for a finished graph and reads the
values it reports in ``BoundWorkflow.used``.

Binding restructures a graph only in these documented ways, each done by one function below:
- ``text_encoder=cache`` (test-only) removes the T5 loader and its link, so the text encoder reads the
  wrapper's embedding disk cache instead (``_remove_node``);
- ``interpolator=rife`` puts a ``RIFE VFI`` node between the decode and the video encode
  (``insert_rife``); with ``ffmpeg`` the video node writes a lossless FFV1 intermediate instead
  (``_write_lossless``) and the worker interpolates and encodes (``tenexa.interpolation``); the video
  node keeps exactly its format's widgets (``_fit_format_widgets``); without
  interpolation no RIFE node is in the graph, so a stack without ComfyUI-Frame-Interpolation runs every
  other job;
- ``return_last_frame`` saves the last frame the video node receives as a PNG (``_add_last_frame``).
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tenexa import formats, interpolation, manifest, wan
from tenexa.config import REPO_ROOT, ConfigError, Settings
from tenexa.errors import invalid
from tenexa.request import MAX_EXTRA_LORAS, GenerateRequest

# ------------------------------------------------------------------------------------------ binding tables

# parameter -> the node inputs it sets. Values come from ``_values`` below, one per parameter.
I2V_BINDINGS: dict[str, tuple[str, ...]] = {
    # request
    "start_image": ("244.image",),
    "prompt": ("135.positive_prompt",),
    "negative_prompt": ("135.negative_prompt",),
    "seed": ("220.seed", "540.seed"),
    "steps": ("569.value",),  # linked into both samplers' steps and the CFG schedule
    "high_steps": ("575.value",),  # linked into HIGH end_step and LOW start_step
    "cfg": ("570.cfg_scale_start", "570.cfg_scale_end"),  # HIGH expert, first step only
    "cfg_low": ("540.cfg",),
    "frames": ("541.num_frames",),
    "width": ("235.value",),  # linked into both resizes and the I2V encode
    "height": ("236.value",),
    "fps": ("131.frame_rate",),  # the rate the video node writes: interpolated, or the generated rate
    "video_format": ("131.format",),
    "pix_fmt": ("131.pix_fmt",),
    "crf": ("131.crf",),
    "shift": ("220.shift", "540.shift"),
    "scheduler": ("220.scheduler", "540.scheduler"),
    "lora_high": ("279.lora_0",),
    "lora_high_strength": ("279.strength_0",),
    "lora_low": ("553.lora_0",),
    "lora_low_strength": ("553.strength_0",),
    # slots 1-4 of each expert's WanVideoLoraSelectMulti: the request's `loras` list, "none" when unused
    **{f"lora_{expert}_{slot}{suffix}": (f"{node}.{kind}_{slot}",)
       for expert, node in (("high", "279"), ("low", "553")) for slot in range(1, MAX_EXTRA_LORAS + 1)
       for suffix, kind in (("", "lora"), ("_strength", "strength"))},
    "output_prefix": ("131.filename_prefix",),
    # runtime settings
    "attention_mode": ("122.attention_mode", "549.attention_mode"),
    "base_precision": ("122.base_precision", "549.base_precision"),
    "quantization": ("122.quantization", "549.quantization"),
    "load_device": ("122.load_device", "549.load_device"),
    "blocks_to_swap": ("525.blocks_to_swap",),
    "vae_precision": ("129.precision",),
    "use_disk_cache": ("135.use_disk_cache",),
}

FLF2V_BINDINGS: dict[str, tuple[str, ...]] = {
    **I2V_BINDINGS,
    "end_image": ("617.image",),
}


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    file: str
    bindings: Mapping[str, tuple[str, ...]]
    high_sampler: str  # runs steps [0, high_steps) on the HIGH expert
    low_sampler: str  # continues from high_steps on the LOW expert
    output_node: str  # VHS_VideoCombine: the MP4
    t5_loader: str  # removed when text_encoder=cache
    uses_end_image: bool
    encode_node: str = "541"  # WanVideoImageToVideoEncode: start (and end) image, frame count
    decode_node: str = "612"  # WanVideoDecode: the generated frames


WORKFLOWS: dict[str, WorkflowSpec] = {
    "wan22_i2v": WorkflowSpec("wan22_i2v", "new_Wan22_api.json", I2V_BINDINGS, "220", "540", "131", "136", False),
    "flf2v": WorkflowSpec("flf2v", "new_Wan22_flf2v_api.json", FLF2V_BINDINGS, "220", "540", "131", "136", True),
}

# Ids of the nodes binding adds; above every id of the shipped graphs.
RIFE_NODE = "700"
LAST_FRAME_PICK, LAST_FRAME_SAVE = "701", "702"
LAST_FRAME_INDEX = 4095  # ImageFromBatch's maximum; it clamps to the batch's last frame
# A clip longer than one window: segment s (2, 3, ...) copies the encode, both samplers and the decode under
# ids s * 1000 + the original id, and adds three join nodes at s * 1000 + these.
SEGMENT_ID_STRIDE = 1000
SEGMENT_PICK_LAST, SEGMENT_TRIM_FIRST, SEGMENT_JOIN = 801, 802, 803
# Classes binding may add (recorded in tenexa/data/object_info.json beside the shipped graphs' classes).
ADDED_CLASSES = (interpolation.RIFE_CLASS, "ImageFromBatch", "SaveImage", "ImageBatch")

# Which inputs name model files, and the ComfyUI model folder they are listed from.
MODEL_INPUTS: dict[str, dict[str, str]] = {
    "WanVideoModelLoader": {"model": "diffusion_models"},
    "WanVideoVAELoader": {"model_name": "vae"},
    "LoadWanVideoT5TextEncoder": {"model_name": "text_encoders"},
    "WanVideoLoraSelectMulti": {f"lora_{i}": "loras" for i in range(5)},
}
NO_LORA = "none"

# Allowed values of the runtime settings (the pinned node schemas' enums).
ATTENTION_MODES = ("sdpa", "flash_attn_2", "flash_attn_3", "sageattn", "sageattn_3", "radial_sage_attention",
                   "sageattn_compiled", "sageattn_ultravico", "comfy")
BASE_PRECISIONS = ("fp32", "bf16", "fp16", "fp16_fast")
QUANTIZATIONS = ("disabled", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e4m3fn_scaled", "fp8_e4m3fn_scaled_fast",
                 "fp8_e5m2", "fp8_e5m2_fast", "fp8_e5m2_scaled", "fp8_e5m2_scaled_fast")
# The modes that keep the shipped fp8_e4m3fn (scaled) weights as they are: "disabled" reads the dtype from the
# file, "fp8_e4m3fn" is upgraded to "_scaled" for a scaled file (nodes_model_loading.py). The e5m2 family casts
# e4m3fn weights without a scale to e5m2 (one mantissa bit fewer); "_fast" needs merged LoRAs (see below).
KEPT_PRECISION_QUANTIZATIONS = ("disabled", "fp8_e4m3fn", "fp8_e4m3fn_scaled")
LOAD_DEVICES = ("main_device", "offload_device")
VAE_PRECISIONS = ("fp16", "fp32", "bf16")
TEXT_ENCODERS = ("t5", "cache")
MAX_BLOCKS_TO_SWAP = 40  # the A14B experts have 40 blocks


@dataclass(frozen=True)
class WorkerFinish:
    """What the worker does to the graph's lossless output: interpolate with ffmpeg and encode once."""

    multiplier: int
    fps: float
    video_format: formats.VideoFormat
    crf: int


@dataclass(frozen=True)
class BoundWorkflow:
    name: str
    graph: dict[str, Any]  # API format, ready for POST /prompt
    used: dict[str, Any]  # the values actually used (after rounding and defaults)
    high_sampler: str
    low_sampler: str
    output_node: str
    last_frame_node: str | None = None  # SaveImage of the last frame, when asked for
    finish: WorkerFinish | None = None  # set when the worker, not the graph, writes the final video
    expert_nodes: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expert_nodes", (self.high_sampler, self.low_sampler))


# ------------------------------------------------------------------------------------------ loading


def spec(name: str) -> WorkflowSpec:
    try:
        return WORKFLOWS[name]
    except KeyError:
        raise ValueError(f"unknown workflow {name!r}; known: {', '.join(WORKFLOWS)}") from None


@lru_cache(maxsize=8)
def _read_graph(path: str, mtime_ns: int) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def workflow_path(name: str, workflow_dir: Path | None = None) -> Path:
    return Path(workflow_dir or REPO_ROOT) / spec(name).file


def load_graph(name: str, workflow_dir: Path | None = None) -> dict[str, Any]:
    """A fresh deep copy of the shipped graph, unbound."""
    path = workflow_path(name, workflow_dir)
    return copy.deepcopy(_read_graph(str(path), path.stat().st_mtime_ns))


# ------------------------------------------------------------------------------------------ runtime settings


# Run with COMFY_PYTHON: the interpreter whose packages matter is ComfyUI's, not the handler's (they differ
# in the README's local set-up). The import is the one WanVideoModelLoader makes for every "sage" mode.
ATTENTION_PROBE = """
import json
report = {"sageattention": False, "cuda": False}
try:
    import torch
    report["torch"] = torch.__version__
    report["cuda"] = bool(torch.cuda.is_available())
except Exception as exc:
    report["error"] = f"torch: {type(exc).__name__}: {exc}"
try:
    from sageattention import sageattn
    report["sageattention"] = True
except Exception as exc:
    report.setdefault("error", f"sageattention: {type(exc).__name__}: {exc}")
print(json.dumps(report))
"""
PROBE_TIMEOUT = 120.0  # importing torch and SageAttention's kernels from a cold disk


@dataclass(frozen=True)
class AttentionProbe:
    usable: bool  # SageAttention imports and CUDA is available in ComfyUI's interpreter
    reason: str
    python: str
    seconds: float


def probe_attention(python: str, timeout: float = PROBE_TIMEOUT) -> AttentionProbe:
    """Ask ``python`` (ComfyUI's interpreter) whether SageAttention can run there. Never raises."""
    started = time.monotonic()

    def result(usable: bool, reason: str) -> AttentionProbe:
        return AttentionProbe(usable, " ".join(reason.split())[:300], python, round(time.monotonic() - started, 3))

    try:
        proc = subprocess.run([python, "-c", ATTENTION_PROBE], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return result(False, f"COMFY_PYTHON={python} not found")
    except subprocess.TimeoutExpired:
        return result(False, f"{python} did not answer the probe within {timeout:g} s")
    except OSError as exc:
        return result(False, f"COMFY_PYTHON={python} cannot run: {exc.strerror or exc}")
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if proc.returncode != 0 or not isinstance(report, dict):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return result(False, f"{python} failed the probe (exit {proc.returncode}): {tail}")
    if not report.get("sageattention"):
        return result(False, f"{report.get('error', 'sageattention is not importable')} (in {python})")
    if not report.get("cuda"):
        return result(False, f"torch.cuda.is_available() is False in {python}")
    return result(True, f"sageattention imports and CUDA is available in {python}")


_probes: dict[str, AttentionProbe] = {}
_probe_lock = threading.Lock()


def attention_probe(settings: Settings) -> AttentionProbe:
    """The probe of COMFY_PYTHON, run once per worker (callers arriving meanwhile wait for that one run)."""
    with _probe_lock:
        if settings.comfy_python not in _probes:
            _probes[settings.comfy_python] = probe_attention(settings.comfy_python)
        return _probes[settings.comfy_python]


def resolve_attention(settings: Settings) -> str:
    """``auto`` -> ``sageattn`` when SageAttention can run in ComfyUI's interpreter, else ``sdpa``; explicit modes pass through."""
    mode = settings.attention_mode
    if mode != "auto":
        return mode
    return "sageattn" if attention_probe(settings).usable else "sdpa"


def settings_problems(settings: Settings) -> list[str]:
    """Runtime settings that no shipped workflow can take, one line each (empty when all are fine)."""
    problems = []
    checks = (
        ("TENEXA_ATTENTION", settings.attention_mode, ("auto", *ATTENTION_MODES)),
        ("TENEXA_BASE_PRECISION", settings.base_precision, BASE_PRECISIONS),
        ("TENEXA_QUANTIZATION", settings.quantization, QUANTIZATIONS),
        ("TENEXA_LOAD_DEVICE", settings.load_device, LOAD_DEVICES),
        ("TENEXA_VAE_PRECISION", settings.vae_precision, VAE_PRECISIONS),
        ("TENEXA_TEXT_ENCODER", settings.text_encoder, TEXT_ENCODERS),
    )
    for env, value, allowed in checks:
        if value not in allowed:
            problems.append(f"{env}={value!r} is not one of {', '.join(allowed)}")
    if not 0 <= settings.blocks_to_swap <= MAX_BLOCKS_TO_SWAP:
        problems.append(f"TENEXA_BLOCKS_TO_SWAP={settings.blocks_to_swap} is outside 0..{MAX_BLOCKS_TO_SWAP}")
    if "_fast" in settings.quantization:
        problems.append(f"TENEXA_QUANTIZATION={settings.quantization}: fp8 _fast matmul does not work with the "
                        "unmerged per-expert LoRAs these workflows use")
    elif settings.quantization.startswith("fp8_e5m2"):
        problems.append(f"TENEXA_QUANTIZATION={settings.quantization}: casts the shipped fp8_e4m3fn weights to e5m2, "
                        f"which loses precision; use one of {', '.join(KEPT_PRECISION_QUANTIZATIONS)}")
    frames = settings.max_window_frames
    if not (wan.MIN_FRAMES <= frames <= wan.MAX_FRAMES and frames % 4 == 1):
        problems.append(f"MAX_WINDOW_FRAMES={frames} is not a 4n+1 frame count between {wan.MIN_FRAMES} and {wan.MAX_FRAMES}")
    if not (wan.MIN_FRAMES <= settings.max_frames <= wan.MAX_CLIP_FRAMES and settings.max_frames % 4 == 1):
        problems.append(f"MAX_FRAMES={settings.max_frames} is not a 4n+1 frame count between {wan.MIN_FRAMES} and "
                        f"{wan.MAX_CLIP_FRAMES}")
    smallest = wan.window_tokens(wan.MIN_FRAMES, wan.MIN_SIDE, wan.MIN_SIDE)
    if settings.max_latent_tokens < smallest:
        problems.append(f"MAX_LATENT_TOKENS={settings.max_latent_tokens} is below the smallest window "
                        f"({smallest} tokens: {wan.MIN_FRAMES} frames at {wan.MIN_SIDE}x{wan.MIN_SIDE})")
    return problems


def _model_settings(settings: Settings) -> dict[str, Any]:
    """The runtime settings written into the graph as configured (attention is resolved separately)."""
    return {
        "base_precision": settings.base_precision,
        "quantization": settings.quantization,
        "load_device": settings.load_device,
        "blocks_to_swap": settings.blocks_to_swap,
        "vae_precision": settings.vae_precision,
        "text_encoder": settings.text_encoder,
    }


def runtime_report(settings: Settings) -> dict[str, Any]:
    """What diagnose shows about the model runtime: each setting as configured and as it will be sent."""
    attention: dict[str, Any] = {"setting": settings.attention_mode, "resolved": resolve_attention(settings)}
    if settings.attention_mode == "auto":
        probe = attention_probe(settings)
        attention.update(sageattention_usable=probe.usable, reason=probe.reason, probed_python=probe.python,
                         probe_seconds=probe.seconds)
    else:
        attention.update(sageattention_usable=None, reason="set explicitly (TENEXA_ATTENTION)")
    return {
        "attention_mode": attention,
        **_model_settings(settings),
        "max_window_frames": settings.max_window_frames,
        "max_latent_tokens": settings.max_latent_tokens,
        "problems": settings_problems(settings),
    }


# ------------------------------------------------------------------------------------------ binding


def _extra_lora_values(request: GenerateRequest) -> dict[str, Any]:
    """The ``loras`` list spread over slots 1-4 of each expert, in request order; unused slots stay "none"."""
    values: dict[str, Any] = {}
    for expert in ("high", "low"):
        refs = [ref for ref in request.loras if ref.applies_to(expert)]
        for slot in range(1, MAX_EXTRA_LORAS + 1):
            ref = refs[slot - 1] if slot <= len(refs) else None
            if ref is not None and ref.name is None:
                raise ValueError(f"{ref.field}: the LoRA URL was not fetched before binding")
            values[f"lora_{expert}_{slot}"] = ref.name if ref else NO_LORA
            values[f"lora_{expert}_{slot}_strength"] = ref.strength if ref else 1.0
    return values


def _used_loras(request: GenerateRequest) -> list[dict[str, Any]]:
    used = []
    for expert in ("high", "low"):
        for slot, ref in enumerate((r for r in request.loras if r.applies_to(expert)), start=1):
            used.append({"field": ref.field, "expert": expert, "slot": slot, "name": ref.name, "strength": ref.strength,
                         **({"sha256": ref.sha256} if ref.sha256 else {})})
    return used


def check_window(request: GenerateRequest, image_size: tuple[int, int], settings: Settings) -> tuple[int, int, int, int]:
    """(frames, width, height, high_steps) of ``request``, after refusing with INVALID_INPUT a window over the
    worker's limits or a split that cannot be predicted. Cheap: generate calls it before any download.

    A clip longer than one window is checked window by window: its longest window must fit.
    """
    problems = settings_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    width, height = wan.output_size(image_size, request.width, request.height, resolution=request.resolution,
                                    aspect_ratio=request.aspect_ratio)
    frames = wan.fit_frames(request.frames)
    windows = wan.plan_segments(frames, settings.max_window_frames)
    try:
        wan.check_window(max(windows), width, height, max_frames=settings.max_window_frames, max_tokens=settings.max_latent_tokens)
        return frames, width, height, wan.expert_split(request.steps, request.shift, request.scheduler)
    except wan.WindowError as exc:
        size_field = ("width" if request.width is not None else "height" if request.height is not None
                      else "resolution" if request.resolution is not None else "frames")
        prefix = f"the clip is made in {len(windows)} windows of up to {max(windows)} frames; " if len(windows) > 1 else ""
        raise invalid(size_field if exc.field == "size" else "frames", prefix + str(exc)) from None
    except wan.SplitError as exc:
        raise invalid("shift", str(exc)) from None


def _values(request: GenerateRequest, image_size: tuple[int, int], settings: Settings, start_image: str,
            end_image: str | None, output_prefix: str, interpolator: str) -> dict[str, Any]:
    """Every bound parameter's final value, after the Wan rules and the defaults are applied."""
    frames, width, height, high_steps = check_window(request, image_size, settings)
    video_format = formats.video_format(request.codec)
    multiplier = request.interpolate if interpolator != interpolation.NONE else 1
    out_fps = interpolation.output_fps(request.fps, multiplier, request.adjust_fps_for_interpolation)
    default_high, default_low = manifest.default_loras()
    lora_high = default_high if request.lora_high is None else request.lora_high
    lora_low = default_low if request.lora_low is None else request.lora_low
    return {
        "start_image": start_image,
        "end_image": end_image,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "steps": request.steps,
        "high_steps": high_steps,
        "low_steps": request.steps - high_steps,
        "cfg": request.cfg,
        "cfg_low": request.cfg_low,
        "frames": frames,
        "width": width,
        "height": height,
        "fps": float(request.fps) if interpolator == interpolation.FFMPEG else out_fps,
        "video_format": video_format.vhs_format,
        "pix_fmt": formats.PIX_FMT,
        "crf": video_format.crf(request.quality),
        "shift": request.shift,
        "scheduler": request.scheduler,
        "lora_high": lora_high,
        "lora_high_strength": request.lora_high_strength,
        "lora_low": lora_low,
        "lora_low_strength": request.lora_low_strength,
        **_extra_lora_values(request),
        "output_prefix": output_prefix,
        "attention_mode": resolve_attention(settings),
        **_model_settings(settings),
        "use_disk_cache": settings.text_encoder == "cache",
    }


def _set(graph: dict[str, Any], target: str, value: Any, workflow: str) -> None:
    node_id, _, input_name = target.partition(".")
    node = graph.get(node_id)
    if node is None or input_name not in node.get("inputs", {}):
        raise KeyError(f"{workflow}: binding target {target} is not in the graph")
    if isinstance(node["inputs"][input_name], list):
        raise KeyError(f"{workflow}: binding target {target} is a link, not a value")
    node["inputs"][input_name] = value


def _remove_node(graph: dict[str, Any], node_id: str) -> None:
    """Drop a node and every input linked to it (only optional inputs link to the removable nodes)."""
    graph.pop(node_id)
    for node in graph.values():
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id:
                del node["inputs"][name]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _chain_segments(graph: dict[str, Any], wf: WorkflowSpec, counts: list[int], seed: int) -> None:
    """Generate ``counts`` frames per window, each window starting on the previous one's last frame, and join them.

    Segment 1 is the shipped graph's own encode/samplers/decode. Each later segment is a copy of those four
    nodes (sharing loaders, LoRAs, text embeddings, steps, CFG and split) whose start image is the previous
    decode's last frame, taken from the decoded batch itself (never re-read from a lossy file), with its own
    seed (seed + segment - 1). The end image (flf2v) conditions only the last segment. The join keeps each
    previous segment's last frame and drops the next segment's first frame (the model's re-rendering of that
    same frame), so no frame is duplicated or lost at a seam; the video node gets the joined batch.
    """
    per_segment = (wf.encode_node, wf.high_sampler, wf.low_sampler, wf.decode_node)
    encode = graph[wf.encode_node]["inputs"]
    end_link = encode.pop("end_image", None)
    end_mode = encode.get("fun_or_fl2v_model")
    if end_link is not None:
        encode["fun_or_fl2v_model"] = False  # segment 1 is plain image-to-video when it is not the last
    joined, previous_decode = [wf.decode_node, 0], wf.decode_node
    for segment, count in enumerate(counts[1:], start=2):
        ids = {old: str(segment * SEGMENT_ID_STRIDE + int(old)) for old in per_segment}
        for old, new in ids.items():
            node = copy.deepcopy(graph[old])
            for name, value in node["inputs"].items():
                if _is_link(value) and value[0] in ids:
                    node["inputs"][name] = [ids[value[0]], value[1]]
            node["_meta"] = {"title": f"{node.get('_meta', {}).get('title', node['class_type'])} (segment {segment})"}
            graph[new] = node
        pick, trim, join = (str(segment * SEGMENT_ID_STRIDE + n) for n in (SEGMENT_PICK_LAST, SEGMENT_TRIM_FIRST, SEGMENT_JOIN))
        graph[pick] = {"class_type": "ImageFromBatch", "inputs": {"image": [previous_decode, 0], "batch_index": LAST_FRAME_INDEX,
                                                                 "length": 1}, "_meta": {"title": f"segment {segment} start"}}
        new_encode = graph[ids[wf.encode_node]]["inputs"]
        new_encode.update(start_image=[pick, 0], num_frames=count)
        if end_link is not None and segment == len(counts):
            new_encode.update(end_image=end_link, fun_or_fl2v_model=end_mode)
        for sampler in (wf.high_sampler, wf.low_sampler):
            graph[ids[sampler]]["inputs"]["seed"] = seed + segment - 1
        graph[trim] = {"class_type": "ImageFromBatch", "inputs": {"image": [ids[wf.decode_node], 0], "batch_index": 1,
                                                                 "length": count - 1}, "_meta": {"title": f"segment {segment} without its first frame"}}
        graph[join] = {"class_type": "ImageBatch", "inputs": {"image1": joined, "image2": [trim, 0]},
                       "_meta": {"title": f"join segment {segment}"}}
        joined, previous_decode = [join, 0], ids[wf.decode_node]
    graph[wf.output_node]["inputs"]["images"] = joined


def insert_rife(graph: dict[str, Any], video_node: str, multiplier: int) -> None:
    """RIFE between whatever feeds the video node and the video node (also used by bench/features.py)."""
    video = graph[video_node]["inputs"]
    graph[RIFE_NODE] = {
        "class_type": interpolation.RIFE_CLASS,
        "inputs": {
            "ckpt_name": manifest.entry(interpolation.RIFE_ENTRY).file,
            "frames": video["images"],
            "clear_cache_after_n_frames": 10,
            "multiplier": multiplier,
            "fast_mode": True,
            "ensemble": True,
            "scale_factor": 1.0,
        },
        "_meta": {"title": "RIFE VFI (tenexa: interpolate)"},
    }
    video["images"] = [RIFE_NODE, 0]


def _write_lossless(graph: dict[str, Any], wf: WorkflowSpec) -> None:
    """The video node writes FFV1/BGRA for the worker to finish."""
    video = graph[wf.output_node]["inputs"]
    video.update(format=formats.LOSSLESS_VHS_FORMAT, pix_fmt=formats.LOSSLESS_PIX_FMT, **formats.LOSSLESS_WIDGETS)


def _fit_format_widgets(graph: dict[str, Any], wf: WorkflowSpec) -> None:
    """Keep only the widgets the chosen VHS format declares (h265-mp4 has no trim_to_audio, ffv1 no crf)."""
    video = graph[wf.output_node]["inputs"]
    chosen = set(formats.VHS_WIDGETS[video["format"]])
    for name in {w for widgets in formats.VHS_WIDGETS.values() for w in widgets} - chosen:
        video.pop(name, None)


def _add_last_frame(graph: dict[str, Any], wf: WorkflowSpec, output_prefix: str) -> str:
    """Save the last frame the video node receives, losslessly (PNG); returns the saving node's id."""
    graph[LAST_FRAME_PICK] = {
        "class_type": "ImageFromBatch",
        "inputs": {"image": graph[wf.output_node]["inputs"]["images"], "batch_index": LAST_FRAME_INDEX, "length": 1},
        "_meta": {"title": "last frame (tenexa)"},
    }
    graph[LAST_FRAME_SAVE] = {
        "class_type": "SaveImage",
        "inputs": {"images": [LAST_FRAME_PICK, 0], "filename_prefix": f"{output_prefix}_last"},
        "_meta": {"title": "save last frame (tenexa)"},
    }
    return LAST_FRAME_SAVE


def bind(request: GenerateRequest, *, image_size: tuple[int, int], settings: Settings, start_image: str,
         end_image: str | None, output_prefix: str, interpolator: str = interpolation.NONE) -> BoundWorkflow:
    """The request's workflow with every parameter and runtime setting written in.

    ``image_size`` is the (width, height) of the start image (it sets the default output size);
    ``start_image``/``end_image`` are names LoadImage can open (uploaded to ComfyUI's input folder);
    ``interpolator`` is what ``interpolation.choose`` picked for this job (``none`` ignores ``interpolate``).
    A clip longer than MAX_WINDOW_FRAMES becomes consecutive windows (``_chain_segments``).
    Raises ``ConfigError`` for runtime settings no workflow can take, and ``TenexaError`` INVALID_INPUT for a
    window over the worker's limits (MAX_WINDOW_FRAMES, MAX_LATENT_TOKENS) or a split that cannot be predicted.
    """
    wf = spec(request.workflow)
    if wf.uses_end_image != (end_image is not None):
        raise ValueError(f"workflow {wf.name} {'needs' if wf.uses_end_image else 'takes no'} end image")
    if interpolator not in (interpolation.NONE, interpolation.RIFE, interpolation.FFMPEG):
        raise ValueError(f"unknown interpolator {interpolator!r}")
    problems = settings_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    values = _values(request, image_size, settings, start_image, end_image, output_prefix, interpolator)
    total_frames = values["frames"]
    segments = wan.plan_segments(total_frames, settings.max_window_frames)
    values["frames"] = segments[0]  # the shipped encode is the first window
    graph = load_graph(wf.name, settings.workflow_dir)
    for param, targets in wf.bindings.items():
        for target in targets:
            _set(graph, target, values[param], wf.name)
    if values["text_encoder"] == "cache":
        _remove_node(graph, wf.t5_loader)
    if len(segments) > 1:
        _chain_segments(graph, wf, segments, request.seed)
    values["frames"] = total_frames
    multiplier = request.interpolate if interpolator != interpolation.NONE else 1
    if interpolator == interpolation.RIFE:
        insert_rife(graph, wf.output_node, multiplier)
    elif interpolator == interpolation.FFMPEG:
        _write_lossless(graph, wf)
    _fit_format_widgets(graph, wf)
    last_frame_node = _add_last_frame(graph, wf, output_prefix) if request.return_last_frame else None

    video_format = formats.video_format(request.codec)
    finish = None
    if interpolator == interpolation.FFMPEG:
        out_fps = interpolation.output_fps(request.fps, multiplier, request.adjust_fps_for_interpolation)
        finish = WorkerFinish(multiplier, out_fps, video_format, values["crf"])

    slots = _extra_lora_values(request)
    hidden = ("prompt", "negative_prompt", "use_disk_cache", "video_format", "pix_fmt", *slots)
    used = {k: v for k, v in values.items() if k not in hidden}
    if request.loras:
        used["loras"] = _used_loras(request)
    used["workflow"] = wf.name
    used["split"] = values["high_steps"]
    used["segments"] = segments
    used.update(_output_report(request, image_size, values, interpolator, multiplier, video_format))
    return BoundWorkflow(wf.name, graph, used, wf.high_sampler, wf.low_sampler, wf.output_node,
                         last_frame_node=last_frame_node, finish=finish)


def _output_report(request: GenerateRequest, image_size: tuple[int, int], values: dict[str, Any], interpolator: str,
                   multiplier: int, video_format: formats.VideoFormat) -> dict[str, Any]:
    """What ``used`` says about size presets, cropping, interpolation and the output format."""
    x, y, crop_w, crop_h = wan.crop_box(image_size, (values["width"], values["height"]))
    return {
        "resolution": request.resolution,
        "aspect_ratio": request.aspect_ratio or wan.AUTO_ASPECT,
        "crop": {"x": x, "y": y, "width": crop_w, "height": crop_h, "of": list(image_size), "mode": "center"},
        "fps": float(request.fps),
        "interpolate": multiplier,
        "interpolator": interpolator,
        "output_fps": interpolation.output_fps(request.fps, multiplier, request.adjust_fps_for_interpolation),
        "output_frames": interpolation.interpolated_frames(values["frames"], multiplier),
        "codec": video_format.codec,
        "container": video_format.container,
        "quality": request.quality,
        "crf": values["crf"],
        "return_last_frame": request.return_last_frame,
    }


# ------------------------------------------------------------------------------------------ inventory


def required_classes(workflow_dir: Path | None = None) -> list[str]:
    """Every class_type the shipped workflows use, sorted."""
    return sorted({n["class_type"] for name in WORKFLOWS for n in load_graph(name, workflow_dir).values()})


def model_references(workflow: str, workflow_dir: Path | None = None) -> dict[str, list[str]]:
    """{model folder: [file names]} the shipped (unbound) workflow references, LoRA "none" aside."""
    refs: dict[str, set[str]] = {}
    for node in load_graph(workflow, workflow_dir).values():
        for input_name, folder in MODEL_INPUTS.get(node["class_type"], {}).items():
            value = node["inputs"].get(input_name)
            if isinstance(value, str) and value != NO_LORA:
                refs.setdefault(folder, set()).add(value)
    return {folder: sorted(files) for folder, files in sorted(refs.items())}
