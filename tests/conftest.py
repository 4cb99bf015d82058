"""Shared fixtures and tier marking. Tiers follow file names: tests/integration/ → integration,
test_contract_*.py → contract, test_e2e_*.py and tests/scripts/ → e2e, everything else → unit."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# One private temporary folder per test session, for this process and every worker, local API or script it starts:
# the "nothing left behind" tests compare what jobs leave in the temporary folder, and a shared /tmp also holds the
# files of whatever else runs on the machine (another session, a build), which those tests must not mistake for ours.
SESSION_TMP = tempfile.mkdtemp(prefix="tenexa-tests-")
os.environ["TMPDIR"] = SESSION_TMP
tempfile.tempdir = None  # re-read TMPDIR

from comfy_double import ComfyDouble  # noqa: E402


def _tier(path: Path) -> str:
    parts = path.relative_to(ROOT / "tests").parts
    if parts[0] == "integration":
        return "integration"
    if parts[0] == "scripts" or path.name.startswith("test_e2e_"):
        return "e2e"
    if path.name.startswith("test_contract_"):
        return "contract"
    return "unit"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, _tier(Path(str(item.fspath)))))


@pytest.fixture
def comfy_double(tmp_path):
    double = ComfyDouble(tmp_path / "ComfyUI").start()
    yield double
    double.stop()
