"""Shared fixtures and tier marking. Tiers follow file names: tests/integration/ → integration,
test_contract_*.py → contract, test_e2e_*.py and tests/scripts/ → e2e, everything else → unit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, _tier(Path(str(item.fspath)))))


@pytest.fixture
def comfy_double(tmp_path):
    double = ComfyDouble(tmp_path / "ComfyUI").start()
    yield double
    double.stop()
