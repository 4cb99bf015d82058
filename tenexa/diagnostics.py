"""Test mode (a fast health check), diagnose mode (what is installed and what is wrong) and the self-test."""

from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tenexa import custom, files, interpolation, lora_cache, manifest, validator, workflows
from tenexa.comfy import ComfyClient
from tenexa.config import REPO_ROOT, Settings
from tenexa.errors import TenexaError
from tenexa.files import sha256_file
from tenexa.images import normalize_image
from tenexa.pipeline import run_graph
from tenexa.workspace import JobWorkspace

MODEL_FOLDERS = ("diffusion_models", "unet", "text_encoders", "clip", "vae", "loras", "frame_interpolation")
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
SELFTEST_GRAPH = Path(__file__).parent / "data" / "selftest_api.json"
SELFTEST_IMAGE = REPO_ROOT / "example_image.png"
SELFTEST_TIMEOUT = 120.0
HASH_BLOCK_BYTES = 8 * 1024 * 1024


def _disk(path: Path) -> dict:
    probe = path if path.exists() else Path("/")
    usage = shutil.disk_usage(probe)
    return {"path": str(probe), "free_gb": round(usage.free / 1e9, 2), "total_gb": round(usage.total / 1e9, 2)}


def volume_mounted(settings: Settings) -> bool:
    return files.volume_mounted(settings.volume_root)


def health(settings: Settings, client: ComfyClient) -> dict:
    """Test mode: cheap facts only, short timeouts, never touches workflows or models."""
    comfy_up = client.is_up(timeout=0.25)
    return {
        "status": "completed",
        "ok": comfy_up,
        "comfyui_up": comfy_up,
        "disk_free_gb": _disk(settings.comfy_root)["free_gb"],
        "volume_mounted": volume_mounted(settings),
        "handler_version": settings.handler_version,
    }


def list_models(settings: Settings) -> dict[str, dict[str, list[str]]]:
    """Model files per folder, in the image (COMFY_ROOT/models) and on the volume (VOLUME_ROOT/models)."""
    found: dict[str, dict[str, list[str]]] = {}
    for folder in MODEL_FOLDERS:
        entry = {}
        for where, root in (("local", settings.comfy_root / "models" / folder), ("volume", settings.volume_root / "models" / folder)):
            files = []
            if root.is_dir():
                for path in sorted(root.rglob("*")):
                    if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
                        files.append(str(path.relative_to(root)))
            entry[where] = files
        found[folder] = entry
    return found


def model_file(settings: Settings, entry: manifest.ModelEntry) -> Path | None:
    """The copy of a manifest file ComfyUI loads: its own models folder first, then the volume's."""
    for root in (settings.comfy_root, settings.volume_root):
        path = root / "models" / entry.relative_path
        if path.is_file():
            return path
    return None


def _manifest_report(settings: Settings, *, verify_hashes: bool = False) -> dict:
    """Each manifest file: present, missing, or present with the wrong size (a truncated or different file
    under the right name); an ``optional`` entry's absence is ``optional_missing`` and leaves ``ok`` alone. With
    ``verify_hashes`` the files whose sha256 the manifest knows are hashed too
    (minutes for the 30 GB of experts, hence only on request)."""
    report: dict[str, Any] = {"present": [], "missing": [], "wrong_size": [], "optional_missing": []}
    if verify_hashes:
        report.update(verified=[], hash_mismatch=[], unverifiable=[])
    for entry in manifest.load_manifest():
        path = model_file(settings, entry)
        if path is None:
            report["optional_missing" if entry.optional else "missing"].append({"name": entry.name, "folder": entry.folder,
                                                                                 "file": entry.file})
            continue
        size = path.stat().st_size
        if entry.size is not None and size != entry.size:
            report["wrong_size"].append({"name": entry.name, "path": str(path), "size": size, "expected": entry.size})
            continue
        report["present"].append(entry.name)
        if not verify_hashes:
            continue
        if entry.sha256 is None:
            report["unverifiable"].append(entry.name)
        elif sha256_file(path, HASH_BLOCK_BYTES) == entry.sha256:
            report["verified"].append(entry.name)
        else:
            report["hash_mismatch"].append({"name": entry.name, "path": str(path), "expected": entry.sha256})
    report["ok"] = not (report["missing"] or report["wrong_size"] or report.get("hash_mismatch"))
    return report


# What a worker holds in host RAM beyond the model files (est.: the ComfyUI process with torch, the node packs
# and the CUDA runtime's host allocations).
HOST_OVERHEAD_BYTES = 5 * 10**9
# Used when a file is neither on disk nor sized in the manifest (est., docs/DEPLOYMENT.md "Host memory").
ESTIMATED_BYTES = {"diffusion_models": 14_300_000_000, "text_encoders": 11_400_000_000, "vae": 254_000_000,
                   "loras": 1_226_977_424}


def host_memory_need(settings: Settings) -> dict[str, Any]:
    """Host RAM the configured settings need, in bytes, part by part.

    ``offload_device`` parks both experts (with their unmerged LoRAs) in host RAM between the two samplers;
    ``main_device`` keeps them on the GPU except the blocks swapped out (TENEXA_BLOCKS_TO_SWAP of 40). The T5
    encoder waits in host RAM after encoding (its loader's offload device); with ``cache`` it is not loaded.
    Sizes are the files' own (what the loaders read), else the manifest's, else an estimate.
    """
    on_host = 1.0 if settings.load_device == "offload_device" else settings.blocks_to_swap / workflows.MAX_BLOCKS_TO_SWAP
    share = {"diffusion_models": on_host, "loras": on_host, "text_encoders": 1.0 if settings.text_encoder == "t5" else 0.0,
             "vae": 1.0}
    parts: dict[str, int] = {}
    sources: dict[str, str] = {}
    for entry in manifest.entries_for("wan22_i2v"):
        path = model_file(settings, entry)
        size, source = ((path.stat().st_size, "file") if path else (entry.size, "manifest") if entry.size
                        else (ESTIMATED_BYTES[entry.folder], "estimate"))
        parts[entry.folder] = parts.get(entry.folder, 0) + round(size * share[entry.folder])
        sources[entry.name] = source
    parts["comfyui_overhead"] = HOST_OVERHEAD_BYTES
    return {"need_bytes": sum(parts.values()), "parts": parts, "sizes_from": sources}


def _host_memory_report(settings: Settings, stats: dict) -> dict:
    need = host_memory_need(settings)
    total = (stats.get("system") or {}).get("ram_total")
    report: dict[str, Any] = {
        "ram_total_gb": round(total / 1e9, 2) if isinstance(total, (int, float)) else None,
        "need_gb": round(need["need_bytes"] / 1e9, 2),
        "parts_gb": {k: round(v / 1e9, 2) for k, v in need["parts"].items()},
        "sizes_from": need["sizes_from"],
    }
    if report["ram_total_gb"] is None:
        report.update(ok=None, reason="ComfyUI did not report ram_total")
    elif total < need["need_bytes"]:
        report.update(ok=False, reason=f"host RAM {report['ram_total_gb']} GB is below the {report['need_gb']} GB that "
                      f"TENEXA_LOAD_DEVICE={settings.load_device} and TENEXA_TEXT_ENCODER={settings.text_encoder} need; "
                      "use a worker with more RAM (docs/DEPLOYMENT.md, Host memory)")
    else:
        report.update(ok=True)
    return report


def _interpolation_report(settings: Settings, object_info: dict | None) -> dict:
    """Whether jobs with ``interpolate`` get RIFE or the ffmpeg fallback, and why."""
    checkpoint = interpolation.rife_checkpoint(settings.comfy_root)
    node = None if object_info is None else interpolation.RIFE_CLASS in object_info
    ready = checkpoint.is_file() and node is True
    return {"rife_checkpoint": str(checkpoint), "rife_checkpoint_present": checkpoint.is_file(), "rife_node_available": node,
            "auto_uses": interpolation.RIFE if ready else interpolation.FFMPEG}


def _selftest_classes() -> set[str]:
    return {node["class_type"] for node in json.loads(SELFTEST_GRAPH.read_text()).values()}


def _missing_models(graph: dict, object_info: dict) -> dict[str, list[str]]:
    """Model names the graph asks for that ComfyUI's live listing (the loaders' combo options) lacks."""
    missing: dict[str, set[str]] = {}
    for node in graph.values():
        inputs_for = workflows.MODEL_INPUTS.get(node.get("class_type"), {})
        schema = (object_info.get(node.get("class_type")) or {}).get("input", {})
        for input_name, folder in inputs_for.items():
            value = node.get("inputs", {}).get(input_name)
            if not isinstance(value, str) or value == workflows.NO_LORA:
                continue
            spec = (schema.get("required") or {}).get(input_name) or (schema.get("optional") or {}).get(input_name)
            options = spec[0] if isinstance(spec, list) and spec and isinstance(spec[0], list) else []
            if value not in options:
                missing.setdefault(folder, set()).add(value)
    return {folder: sorted(files) for folder, files in sorted(missing.items())}


def _workflow_checks(settings: Settings, object_info: dict | None) -> dict:
    checks = {}
    for name in workflows.WORKFLOWS:
        path = workflows.workflow_path(name, settings.workflow_dir)
        report: dict[str, Any] = {"workflow": name, "exists": path.is_file()}
        if not report["exists"]:
            checks[path.name] = report
            continue
        try:
            graph = json.loads(path.read_text())
        except ValueError as exc:
            checks[path.name] = {**report, "valid": False, "errors": [f"not valid JSON: {exc}"]}
            continue
        classes = {n.get("class_type") for n in graph.values() if isinstance(n, dict)}
        report["nodes"] = len(graph)
        if object_info is None:
            report.update(valid=None, errors=["ComfyUI unreachable: not checked against live /object_info"])
        else:
            report["missing_nodes"] = sorted(c for c in classes if c not in object_info)
            report["missing_models"] = _missing_models(graph, object_info)
            problems = validator.validate(graph, object_info, check_files=True)
            report["errors"] = [str(p) for p in problems]
            report["valid"] = not problems
        checks[path.name] = report
    return checks


def diagnose(settings: Settings, client: ComfyClient, *, selftest: bool = False, verify_hashes: bool = False) -> dict:
    started = time.monotonic()
    try:
        system = client.system_stats(timeout=2.0)
        reachable = True
    except Exception as exc:  # noqa: BLE001 - diagnose reports, it never fails
        system, reachable = {"error": type(exc).__name__}, False
    object_info = None
    if reachable:
        try:
            object_info = client.object_info()
        except Exception as exc:  # noqa: BLE001
            system["object_info_error"] = type(exc).__name__
    models = list_models(settings)
    required = sorted(set(workflows.required_classes(settings.workflow_dir)) | _selftest_classes())
    node_check = (
        {"required_available": [c for c in required if c in object_info], "required_missing": [c for c in required if c not in object_info]}
        if object_info is not None else {"required_available": [], "required_missing": [], "checked": False}
    )
    report: dict[str, Any] = {
        "status": "completed",
        "handler_version": settings.handler_version,
        "comfyui_reachable": reachable,
        "comfyui_url": settings.comfy_url,
        "system": _system_summary(system),
        "disk": {"comfy_root": _disk(settings.comfy_root), "volume": _disk(settings.volume_root)},
        "volume_mounted": volume_mounted(settings),
        "models": models,
        "manifest": _manifest_report(settings, verify_hashes=verify_hashes),
        "host_memory": _host_memory_report(settings, system),
        "node_check": node_check,
        "workflow_checks": _workflow_checks(settings, object_info),
        "interpolation": _interpolation_report(settings, object_info),
        "settings": workflows.runtime_report(settings),
        "lora_cache": lora_cache.LoraCache.from_settings(settings).report(),
        "custom_workflows": custom.settings_report(settings),
    }
    if selftest:
        report["selftest"] = run_selftest(settings, client) if reachable else {"ok": False, "error": "ComfyUI unreachable"}
    report["healthy"] = bool(
        reachable and not node_check["required_missing"] and report["manifest"]["ok"]
        and report["host_memory"]["ok"] is not False
        and all(c.get("valid") for c in report["workflow_checks"].values())
        and report.get("selftest", {"ok": True})["ok"]
    )
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _system_summary(stats: dict) -> dict:
    if "system" not in stats:
        return stats
    system = stats["system"]
    return {
        "comfyui_version": system.get("comfyui_version"),
        "pytorch_version": system.get("pytorch_version"),
        "python_version": system.get("python_version"),
        "ram_total_gb": round((system.get("ram_total") or 0) / 1e9, 2),
        "ram_free_gb": round((system.get("ram_free") or 0) / 1e9, 2),
        "devices": [
            {"name": d.get("name"), "type": d.get("type"), "vram_total_gb": round((d.get("vram_total") or 0) / 1e9, 2),
             "vram_free_gb": round((d.get("vram_free") or 0) / 1e9, 2)}
            for d in stats.get("devices") or []
        ],
    }


def selftest_graph(image_name: str, output_prefix: str) -> dict:
    graph = json.loads(SELFTEST_GRAPH.read_text())
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image_name
        elif "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = output_prefix
    return copy.deepcopy(graph)


def run_selftest(settings: Settings, client: ComfyClient, *, job_id: str = "selftest", cancel: threading.Event | None = None) -> dict:
    """Core + VideoHelperSuite nodes only, through the very path generate uses; proves the plumbing without a 14B model."""
    started = time.monotonic()
    workspace = JobWorkspace(settings.comfy_root, job_id)
    try:
        image = normalize_image(SELFTEST_IMAGE.read_bytes(), "example_image.png", settings.max_image_pixels)
        graph = selftest_graph(workspace.input_name("selftest.png"), workspace.output_prefix)
        result = run_graph(client, graph, workspace=workspace, images={"selftest.png": image.png},
                           deadline=started + min(settings.exec_timeout, SELFTEST_TIMEOUT), cancel=cancel)
        video = result.video
        return {
            "ok": True,
            "seconds": round(time.monotonic() - started, 3),
            "execution_s": result.run.execution_s,
            "video": {"frames": video.frames, "fps": video.fps, "width": video.width, "height": video.height, "bytes": video.size_bytes,
                      "codec": video.codec},
        }
    except TenexaError as err:
        return {"ok": False, "seconds": round(time.monotonic() - started, 3), "error_code": err.code.value, "error": err.message}
    finally:
        workspace.cleanup()
