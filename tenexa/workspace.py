"""Per-job names and cleanup: nothing a job writes outlives it, and concurrent jobs never share a name.

Inputs go to ``COMFY_ROOT/input/tenexa/<token>/``, outputs to ``COMFY_ROOT/output/tenexa/<token>/`` (via the
output node's filename prefix), local scratch to a private temp directory. ``cleanup`` removes all three.
When ComfyUI runs elsewhere (no shared filesystem) the ComfyUI-side folders are simply not there to remove.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path

from tenexa.logs import log

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class JobWorkspace:
    def __init__(self, comfy_root: Path, job_id: str):
        safe_id = _UNSAFE.sub("-", job_id)[:40].strip("-") or "job"
        self.token = f"{safe_id}-{uuid.uuid4().hex[:10]}"
        self.comfy_root = Path(comfy_root)
        self.subfolder = f"tenexa/{self.token}"  # the same name under input/, output/ and temp/
        self.input_subfolder = self.subfolder
        self.output_prefix = f"{self.subfolder}/video"
        self.scratch = Path(tempfile.mkdtemp(prefix="tenexa-job-"))

    def input_name(self, filename: str) -> str:
        """The value a LoadImage node takes for a file uploaded into this job's subfolder."""
        return f"{self.input_subfolder}/{filename}"

    def holds(self, subfolder: str) -> bool:
        """Whether a file ComfyUI reports in ``subfolder`` (of input/, output/ or temp/) is inside this job's folders."""
        parts = subfolder.replace("\\", "/").split("/")
        return "/".join(parts[:2]) == self.subfolder and ".." not in parts

    def _comfy_dirs(self) -> list[Path]:
        return [self.comfy_root / kind / "tenexa" / self.token for kind in ("input", "output", "temp")]

    def cleanup(self) -> None:
        for folder in [*self._comfy_dirs(), self.scratch]:
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cleanup of %s failed: %s", folder, exc)
