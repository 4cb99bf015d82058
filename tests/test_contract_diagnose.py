"""Diagnose through the real handler coroutine against the ComfyUI double: manifest sizes and host RAM."""

from __future__ import annotations

import asyncio

import pytest
from support import settings_for

import handler
from tenexa import manifest
from tenexa.comfy import ComfyClient


@pytest.fixture
def worker(comfy_double, monkeypatch, tmp_path):
    volume = tmp_path / "volume"
    monkeypatch.setattr(handler, "SETTINGS", settings_for(comfy_double, TENEXA_ATTENTION="sdpa", VOLUME_ROOT=str(volume)))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url))
    return comfy_double, volume


def diagnose(**extra):
    return asyncio.run(handler.handler({"id": "diag", "input": {"diagnose": True, **extra}}))


def test_truncated_loras_under_the_right_names_are_not_present(worker):
    """The case of issue 12: 0.7 MB files under the Lightning LoRAs' names used to count as present."""
    _, volume = worker
    for name in (manifest.DEFAULT_LORA_HIGH_ENTRY, manifest.DEFAULT_LORA_LOW_ENTRY):
        path = volume / "models" / manifest.entry(name).relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 700_000)
    report = diagnose()
    assert report["status"] == "completed" and report["healthy"] is False
    wrong = {w["name"]: (w["size"], w["expected"]) for w in report["manifest"]["wrong_size"]}
    assert wrong == {"lightning-i2v-a14b-high": (700_000, 1_226_977_424), "lightning-i2v-a14b-low": (700_000, 1_226_977_424)}
    assert not set(wrong) & set(report["manifest"]["present"])


def test_host_ram_is_compared_with_what_the_settings_need(worker, monkeypatch):
    double, _ = worker
    report = diagnose()
    memory = report["host_memory"]  # the recorded /system_stats: a 25 GB machine
    assert memory["ram_total_gb"] == 25.28 and memory["need_gb"] > 45 and memory["ok"] is False
    assert "is below the" in memory["reason"] and report["healthy"] is False
    monkeypatch.setattr(handler, "SETTINGS", settings_for(double, TENEXA_ATTENTION="sdpa", TENEXA_LOAD_DEVICE="main_device",
                                                          TENEXA_TEXT_ENCODER="cache"))
    lean = diagnose()["host_memory"]
    assert lean["ok"] is True and lean["need_gb"] < 6


def test_verify_hashes_reaches_the_manifest_check(worker):
    report = diagnose(verify_hashes=True)
    assert {"verified", "hash_mismatch", "unverifiable"} <= set(report["manifest"])
    assert "verified" not in diagnose()["manifest"]
