"""The model manifest (``models.json`` at the repo root): every model file the shipped workflows reference.

One entry per file: which ComfyUI model folder it goes in, its file name there (the name the workflows
use), where to download it, its size and sha256 where known, and which workflows need it. The downloader,
diagnose and the tests all read this file; it is the single truth for model names.

Two optional keys serve files that only some jobs use:
- ``optional: true``: no shipped workflow needs the file (its ``workflows`` may be empty); diagnose lists it
  as ``optional_missing`` when absent without calling the worker unhealthy (e.g. the RIFE checkpoint: without
  it, interpolation falls back to ffmpeg).
- ``pack_path``: for a node pack that reads its weights from its own folder instead of ComfyUI's model
  folders (ComfyUI-Frame-Interpolation reads ``ckpts/<model>/<file>`` and downloads from GitHub at run time
  when the file is not there). The file still lives at ``models/<folder>/<file>`` on the volume or in the
  image; the provisioner links it to ``COMFY_ROOT/<pack_path>``, and the worker checks that path before it
  submits a graph that needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tenexa.config import REPO_ROOT

MANIFEST_PATH = REPO_ROOT / "models.json"
FOLDERS = ("diffusion_models", "vae", "loras", "text_encoders", "frame_interpolation")

# The Lightning (Seko-V1, 4-step) LoRAs a request gets when it names none; one per expert.
DEFAULT_LORA_HIGH_ENTRY = "lightning-i2v-a14b-high"
DEFAULT_LORA_LOW_ENTRY = "lightning-i2v-a14b-low"


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    folder: str
    file: str
    url: str
    size: int | None
    sha256: str | None
    workflows: tuple[str, ...]
    optional: bool = False
    pack_path: str | None = None  # below COMFY_ROOT, where a node pack looks for the file

    @property
    def relative_path(self) -> str:
        """Path below ComfyUI's ``models/`` folder."""
        return f"{self.folder}/{self.file}"


def _entry(raw: Any, index: int, allow_http: bool = False) -> ModelEntry:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be an object")
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise ManifestError(f"{where}.optional: must be true or false")
    for key, kind in (("name", str), ("folder", str), ("file", str), ("url", str), ("workflows", list)):
        if not isinstance(raw.get(key), kind) or (not raw.get(key) and not (key == "workflows" and optional)):
            raise ManifestError(f"{where}.{key}: must be a non-empty {kind.__name__}")
    if raw["folder"] not in FOLDERS:
        raise ManifestError(f"{where}.folder: {raw['folder']!r} is not one of {', '.join(FOLDERS)}")
    if "/" in raw["file"] or "\\" in raw["file"] or raw["file"].startswith("."):
        raise ManifestError(f"{where}.file: must be a plain file name, got {raw['file']!r}")
    if not raw["url"].startswith(("https://", "http://") if allow_http else "https://"):
        raise ManifestError(f"{where}.url: must be an https URL")
    size, sha = raw.get("size"), raw.get("sha256")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ManifestError(f"{where}.size: must be a positive integer or null")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ManifestError(f"{where}.sha256: must be 64 lowercase hex digits or null")
    if not all(isinstance(w, str) and w for w in raw["workflows"]):
        raise ManifestError(f"{where}.workflows: must list workflow names")
    pack_path = raw.get("pack_path")
    if pack_path is not None and (
        not isinstance(pack_path, str) or not pack_path.startswith("custom_nodes/") or ".." in pack_path.split("/")
        or not pack_path.endswith("/" + raw["file"])
    ):
        raise ManifestError(f"{where}.pack_path: must be custom_nodes/<pack>/.../{raw['file']} without '..'")
    return ModelEntry(raw["name"], raw["folder"], raw["file"], raw["url"], size, sha, tuple(raw["workflows"]), optional, pack_path)


def parse_manifest(data: Any, *, allow_http: bool = False) -> tuple[ModelEntry, ...]:
    """``allow_http`` admits plain http URLs: for a provisioner pointed at a local mirror or test server."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ManifestError('manifest must be an object with a "models" list')
    entries = tuple(_entry(raw, i, allow_http) for i, raw in enumerate(data["models"]))
    for attr in ("name", "relative_path"):
        seen: set[str] = set()
        for e in entries:
            value = getattr(e, attr)
            if value in seen:
                raise ManifestError(f"duplicate {attr} {value!r}")
            seen.add(value)
    return entries


@lru_cache(maxsize=4)
def load_manifest(path: Path = MANIFEST_PATH) -> tuple[ModelEntry, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    return parse_manifest(data)


def entries_for(workflow: str, path: Path = MANIFEST_PATH) -> list[ModelEntry]:
    """The model files ``workflow`` needs, in manifest order."""
    return [e for e in load_manifest(path) if workflow in e.workflows]


def entry(name: str, path: Path = MANIFEST_PATH) -> ModelEntry:
    for e in load_manifest(path):
        if e.name == name:
            return e
    raise ManifestError(f"no manifest entry named {name!r}")


def default_loras(path: Path = MANIFEST_PATH) -> tuple[str, str]:
    """(high, low) LoRA file names used when a request names none."""
    return entry(DEFAULT_LORA_HIGH_ENTRY, path).file, entry(DEFAULT_LORA_LOW_ENTRY, path).file
