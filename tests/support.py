"""Helpers shared by test modules (conftest.py holds only fixtures; its module name is not unique)."""

from __future__ import annotations

from comfy_double import ComfyDouble

from tenexa.config import load_settings


def settings_for(double: ComfyDouble, **env: str):
    base = {
        "COMFY_ROOT": str(double.root),
        "COMFY_PORT": str(double.port),
        "SERVER_ADDRESS": "127.0.0.1",
        "COMFY_READY_TIMEOUT": "2",
        "COMFY_EXEC_TIMEOUT": "20",
        "VOLUME_ROOT": str(double.root / "no-volume"),
    }
    base.update(env)
    return load_settings(base)
