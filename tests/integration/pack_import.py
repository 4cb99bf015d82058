"""Import the pinned node packs' own modules outside a running ComfyUI (for the scripts that run in
ComfyUI's interpreter: ``tiny_wan.py``, ``pack_schedules.py``)."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

WRAPPER_PACKAGE = "tenexa_wvw"  # the name WanVideoWrapper is imported under: its modules use relative imports


def comfy_on_cpu(comfy_root: Path) -> None:
    """Make ``comfy`` importable from ``comfy_root`` and keep ``comfy.model_management`` from looking for CUDA."""
    if str(comfy_root) not in sys.path:
        sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def wrapper_module(comfy_root: Path, name: str) -> types.ModuleType:
    """WanVideoWrapper's module ``name`` (e.g. ``wanvideo.schedulers``), imported as part of a package."""
    comfy_on_cpu(comfy_root)
    if WRAPPER_PACKAGE not in sys.modules:
        pkg = types.ModuleType(WRAPPER_PACKAGE)
        pkg.__path__ = [str(comfy_root / "custom_nodes" / "ComfyUI-WanVideoWrapper")]
        sys.modules[WRAPPER_PACKAGE] = pkg
    return importlib.import_module(f"{WRAPPER_PACKAGE}.{name}")
