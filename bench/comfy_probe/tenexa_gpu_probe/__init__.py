"""Tenexa GPU-proof probe: measures ComfyUI's own nodes from inside, and changes nothing they compute.

``bench/gpu_proof.py`` loads this folder into ComfyUI as an extra ``custom_nodes`` path (it is never installed into
a ComfyUI tree). It adds no node class. It wraps the functions of the node classes in ``MEASURED``:

- every call: wall seconds (CUDA synchronised before and after), the CUDA allocator's peak during the call
  (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, reset at the start; the sampler resets them
  itself at its end, so the probe's reset first keeps what they held), the process RSS after;
- ``WanVideoModelLoader``: what the pack's loader made of the file: dim, layers, heads, cross-attention type,
  the quantization it settled on (``fp8_e4m3fn`` is upgraded to ``fp8_e4m3fn_scaled`` for a scaled file), how
  many scaled fp8 linears, parameter bytes per dtype, and the file's tensor names against the model's
  parameters (every parameter must come from the file; the file may add only ``scale_weight``s and the marker);
- every call: whether each floating-point tensor it returned is finite (random weights must not overflow).

Reduced depth (``TENEXA_PROBE_REDUCED_DEPTH=1``, the CPU smoke run only): the loader derives the layer count
from ``dim`` alone (5120 -> 40), so a full-width file with 2 blocks cannot load as is. For that one call the
probe has the loader build as many blocks as the file holds, and records both numbers.

Routes: ``GET /tenexa_probe/records?since=N`` (the records, oldest first) and ``GET /tenexa_probe/env`` (torch,
CUDA device, attention backends, and the distributions this process has imported).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import os
import sys
import threading
import time

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

MEASURED = ("WanVideoModelLoader", "WanVideoVAELoader", "WanVideoTextEncode", "WanVideoImageToVideoEncode",
            "WanVideoLoraSelectMulti", "WanVideoSetLoRAs", "WanVideoBlockSwap", "WanVideoSetBlockSwap", "WanVideoSampler",
            "WanVideoDecode", "VHS_VideoCombine", "ImageResizeKJv2", "LoadImage", "CreateCFGScheduleFloatList")
GB = 1e9
RECORDS: list[dict] = []
_LOCK = threading.Lock()
_WRAPPED: set[str] = set()
log = logging.getLogger("tenexa_gpu_probe")


_PEAKS = {"allocated": 0, "reserved": 0}  # peaks seen before a reset inside the node being measured


def _cuda():
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    if not getattr(torch.cuda.reset_peak_memory_stats, "tenexa_probe", False):
        # WanVideoSampler resets CUDA's peak counters itself at its end: keep what they held first, then reset as asked
        original = torch.cuda.reset_peak_memory_stats

        def keep_peaks_then_reset(device=None):
            _PEAKS["allocated"] = max(_PEAKS["allocated"], torch.cuda.max_memory_allocated(device))
            _PEAKS["reserved"] = max(_PEAKS["reserved"], torch.cuda.max_memory_reserved(device))
            return original(device)

        keep_peaks_then_reset.tenexa_probe = True
        keep_peaks_then_reset.original = original
        torch.cuda.reset_peak_memory_stats = keep_peaks_then_reset
    return torch


def _rss_gb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) * 1024 / GB, 3)
    except OSError:
        pass
    return None


def _tensors(value, depth: int = 0):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth + 1)
    elif depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth + 1)


def _finite(output) -> bool | None:
    """Whether every floating-point tensor of a node's output is finite (None when it returned no tensor)."""
    import torch

    checked = [bool(torch.isfinite(t).all().item()) for t in _tensors(output) if t.is_floating_point() and t.numel()]
    return all(checked) if checked else None


def _file_keys(model_name: str) -> list[str]:
    import folder_paths
    from safetensors import safe_open

    with safe_open(folder_paths.get_full_path_or_raise("diffusion_models", model_name), framework="pt") as f:
        return list(f.keys())


def _depth_limited(original: type, blocks: int, facts: dict) -> type:
    class DepthLimitedWanModel(original):
        def __init__(self, *args, **kwargs):
            facts["layers_the_loader_derived"] = kwargs.get("num_layers")
            kwargs["num_layers"] = min(kwargs.get("num_layers", blocks), blocks)
            super().__init__(*args, **kwargs)

    DepthLimitedWanModel.__name__ = original.__name__
    return DepthLimitedWanModel


def _loader_facts(patcher, file_keys: list[str]) -> dict:
    transformer = patcher.model.diffusion_model
    params = {name for name, _ in transformer.named_parameters()}
    extra = {"scale_weight", "scaled_fp8"}
    file_params = {k for k in file_keys if k.rsplit(".", 1)[-1] not in extra}
    return {
        "dim": transformer.dim,
        "layers": len(transformer.blocks),
        "heads": transformer.num_heads,
        "in_dim": getattr(transformer, "in_dim", None),
        "ffn_dim": getattr(transformer, "ffn_dim", None),
        "model_type": getattr(transformer, "model_type", None),
        "quantization": patcher.model["quantization"],
        "scaled_fp8_linears": len(patcher.model["scale_weights"] or {}),
        "file_tensors": len(file_keys),
        "params_missing_from_file": sorted(params - file_params)[:20],
        "file_tensors_not_params": sorted(file_params - params)[:20],
        "file_scale_weights": sum(k.endswith(".scale_weight") for k in file_keys),
        "file_has_scaled_fp8_marker": "scaled_fp8" in file_keys,
    }


def _measure(cls_name: str, func):
    @functools.wraps(func)
    def measured(self, *args, **kwargs):
        torch = _cuda()
        record = {"class": cls_name}
        if torch is not None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats.original()
            _PEAKS.update(allocated=0, reserved=0)
        loader_module = file_keys = None
        if cls_name == "WanVideoModelLoader":
            model_name = kwargs.get("model", args[0] if args else None)
            file_keys = _file_keys(model_name)
            if os.environ.get("TENEXA_PROBE_REDUCED_DEPTH") == "1":
                blocks = len({k.split(".")[1] for k in file_keys if k.startswith("blocks.")})
                record["reduced_depth"] = facts = {"blocks_in_file": blocks}
                loader_module = sys.modules[type(self).__module__]
                original = loader_module.WanModel
                loader_module.WanModel = _depth_limited(original, blocks, facts)
        if cls_name == "WanVideoSampler":
            record["inputs"] = {k: kwargs.get(k) for k in ("steps", "start_step", "end_step", "shift", "scheduler") if not isinstance(kwargs.get(k), list)}
        record["t_start"] = time.time()
        started = time.perf_counter()
        try:
            out = func(self, *args, **kwargs)
        finally:
            if loader_module is not None:
                loader_module.WanModel = original
        if torch is not None:
            torch.cuda.synchronize()
        record["seconds"] = round(time.perf_counter() - started, 4)
        record["t_end"] = time.time()
        if torch is not None:
            record["cuda_peak_allocated_gb"] = round(max(_PEAKS["allocated"], torch.cuda.max_memory_allocated()) / GB, 3)
            record["cuda_peak_reserved_gb"] = round(max(_PEAKS["reserved"], torch.cuda.max_memory_reserved()) / GB, 3)
            record["cuda_allocated_after_gb"] = round(torch.cuda.memory_allocated() / GB, 3)
        record["rss_gb_after"] = _rss_gb()
        try:
            record["output_finite"] = _finite(out)
            if cls_name == "WanVideoModelLoader":
                record["loader"] = _loader_facts(out[0], file_keys)

        except Exception as exc:  # noqa: BLE001 - a probe must never fail the node it measures
            record["probe_error"] = f"{type(exc).__name__}: {exc}"
        with _LOCK:
            RECORDS.append(record)
        return out

    return measured


def install() -> list[str]:
    """Wrap the measured classes' functions (once each); plain methods only, as every class in MEASURED has."""
    import nodes

    for name in MEASURED:
        cls = nodes.NODE_CLASS_MAPPINGS.get(name)
        fn_name = getattr(cls, "FUNCTION", None)
        if cls is None or name in _WRAPPED or fn_name is None:
            continue
        if not inspect.isfunction(inspect.getattr_static(cls, fn_name)):
            log.warning("tenexa probe: %s.%s is not a plain method; not measured", name, fn_name)
            continue
        setattr(cls, fn_name, _measure(name, getattr(cls, fn_name)))
        _WRAPPED.add(name)
    return sorted(_WRAPPED)


def _imported_distributions() -> list[str]:
    by_module = importlib.metadata.packages_distributions()
    tops = {name.partition(".")[0] for name in list(sys.modules)}
    return sorted({dist for top in tops for dist in by_module.get(top, [])})


def _env() -> dict:
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "wrapped": sorted(_WRAPPED), "imported_distributions": _imported_distributions()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            device=props.name, capability=list(torch.cuda.get_device_capability(0)), memory_gb=round(props.total_memory / GB, 1),
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
            sdpa_backends={"flash": torch.backends.cuda.flash_sdp_enabled(), "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                           "cudnn": torch.backends.cuda.cudnn_sdp_enabled(), "math": torch.backends.cuda.math_sdp_enabled()},
        )
    return out


def _register_routes() -> None:
    from aiohttp import web
    from server import PromptServer

    routes = PromptServer.instance.routes

    @routes.get("/tenexa_probe/records")
    async def records(request):
        since = int(request.query.get("since", "0"))
        with _LOCK:
            return web.json_response({"count": len(RECORDS), "records": RECORDS[since:]})

    @routes.get("/tenexa_probe/env")
    async def env(request):
        return web.json_response(_env())

    def on_prompt(json_data):
        install()  # packs load in folder order; by the first prompt every measured class exists
        return json_data

    PromptServer.instance.add_on_prompt_handler(on_prompt)


_register_routes()
install()
