"""Small file helpers shared by the pipeline, delivery, diagnostics, the LoRA cache and the provisioner."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def volume_mounted(volume_root: Path) -> bool:
    """A mount point, or (in containers where the mount is not visible as one) a folder with something in it."""
    return os.path.ismount(volume_root) or (volume_root.is_dir() and any(volume_root.iterdir()))
