"""Diagnose's checks that need no ComfyUI: the manifest's sizes and hashes on disk, and the host RAM the settings need."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenexa import diagnostics, manifest
from tenexa.config import load_settings

GB = 10**9


def entry_dict(name, folder, file, size=None, sha256=None):
    return {"name": name, "folder": folder, "file": file, "url": f"https://example.com/{file}", "size": size,
            "sha256": sha256, "workflows": ["wan22_i2v", "flf2v"]}


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A ComfyUI root and a volume, and a small manifest whose entries the tests place on disk."""
    content = {"expert.safetensors": b"e" * 1000, "lora.safetensors": b"l" * 300, "vae.safetensors": b"v" * 50}
    entries = manifest.parse_manifest({"models": [
        entry_dict("expert", "diffusion_models", "expert.safetensors", size=1000,
                   sha256=hashlib.sha256(content["expert.safetensors"]).hexdigest()),
        entry_dict("lora", "loras", "lora.safetensors", size=300),
        entry_dict("vae", "vae", "vae.safetensors"),
        entry_dict("t5", "text_encoders", "t5.safetensors", size=7000),
    ]})
    monkeypatch.setattr(manifest, "load_manifest", lambda path=None: entries)
    comfy, volume = tmp_path / "comfy", tmp_path / "volume"

    def place(where: Path, folder: str, name: str, data: bytes | None = None) -> Path:
        path = where / "models" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.get(name, b"") if data is None else data)
        return path

    settings = load_settings({"COMFY_ROOT": str(comfy), "VOLUME_ROOT": str(volume)})
    return settings, comfy, volume, place


def test_manifest_report_present_missing_and_wrong_size(roots):
    settings, comfy, volume, place = roots
    place(comfy, "diffusion_models", "expert.safetensors")
    place(volume, "loras", "lora.safetensors", b"x" * 7)  # a truncated copy under the right name
    place(volume, "vae", "vae.safetensors")  # no size in the manifest: any size is accepted
    report = diagnostics._manifest_report(settings)
    assert report["present"] == ["expert", "vae"]
    assert report["missing"] == [{"name": "t5", "folder": "text_encoders", "file": "t5.safetensors"}]
    assert report["wrong_size"] == [{"name": "lora", "path": str(volume / "models/loras/lora.safetensors"), "size": 7, "expected": 300}]
    assert report["ok"] is False and "verified" not in report


def test_the_copy_comfyui_loads_is_the_one_checked(roots):
    settings, comfy, volume, place = roots
    place(volume, "loras", "lora.safetensors")  # right size on the volume ...
    place(comfy, "loras", "lora.safetensors", b"short")  # ... but ComfyUI's own folder comes first
    assert diagnostics.model_file(settings, manifest.load_manifest()[1]) == comfy / "models/loras/lora.safetensors"
    assert [w["name"] for w in diagnostics._manifest_report(settings)["wrong_size"]] == ["lora"]


def test_hashes_only_on_request(roots, monkeypatch):
    settings, comfy, volume, place = roots
    for folder, name in (("diffusion_models", "expert.safetensors"), ("loras", "lora.safetensors"), ("vae", "vae.safetensors")):
        place(comfy, folder, name)
    place(comfy, "text_encoders", "t5.safetensors", b"t" * 7000)
    hashed = []
    real = diagnostics.sha256_file
    monkeypatch.setattr(diagnostics, "sha256_file", lambda path, chunk: hashed.append(path.name) or real(path, chunk))
    assert diagnostics._manifest_report(settings)["ok"] is True and hashed == []
    report = diagnostics._manifest_report(settings, verify_hashes=True)
    assert hashed == ["expert.safetensors"]  # the only file whose sha256 the manifest knows
    assert (report["verified"], report["hash_mismatch"], report["unverifiable"]) == (["expert"], [], ["lora", "vae", "t5"])
    place(comfy, "diffusion_models", "expert.safetensors", b"E" * 1000)  # same size, other content
    report = diagnostics._manifest_report(settings, verify_hashes=True)
    assert report["ok"] is False and [m["name"] for m in report["hash_mismatch"]] == ["expert"]


def test_host_memory_need_follows_the_settings(roots):
    settings, comfy, volume, place = roots
    place(comfy, "diffusion_models", "expert.safetensors")
    overhead = diagnostics.HOST_OVERHEAD_BYTES
    need = diagnostics.host_memory_need(settings)  # offload_device + t5: everything in host RAM
    assert need["parts"] == {"diffusion_models": 1000, "loras": 300, "vae": diagnostics.ESTIMATED_BYTES["vae"],
                             "text_encoders": 7000, "comfyui_overhead": overhead}
    assert need["sizes_from"] == {"expert": "file", "lora": "manifest", "vae": "estimate", "t5": "manifest"}
    assert need["need_bytes"] == sum(need["parts"].values())
    lean = diagnostics.host_memory_need(load_settings({"COMFY_ROOT": str(comfy), "TENEXA_LOAD_DEVICE": "main_device",
                                                       "TENEXA_BLOCKS_TO_SWAP": "10", "TENEXA_TEXT_ENCODER": "cache"}))
    assert lean["parts"]["diffusion_models"] == 250 and lean["parts"]["loras"] == 75 and lean["parts"]["text_encoders"] == 0


def test_the_shipped_settings_need_about_45_gb_of_host_ram():
    """The issue's arithmetic with the real manifest and no files on disk: 2 experts + T5 + LoRAs + VAE + ComfyUI."""
    need = diagnostics.host_memory_need(load_settings({"COMFY_ROOT": "/nonexistent", "VOLUME_ROOT": "/nonexistent"}))
    assert 45 * GB < need["need_bytes"] < 50 * GB
    assert need["parts"]["loras"] == 2 * 1_226_977_424  # the manifest's published size


@pytest.mark.parametrize(("ram_total", "ok"), [(64 * GB, True), (32 * GB, False), (None, None)])
def test_host_memory_report(ram_total, ok):
    settings = load_settings({"COMFY_ROOT": "/nonexistent", "VOLUME_ROOT": "/nonexistent"})
    report = diagnostics._host_memory_report(settings, {"system": {"ram_total": ram_total}} if ram_total else {"error": "x"})
    assert report["ok"] is ok
    if ok is False:
        assert report["reason"].startswith(f"host RAM {ram_total / GB:g}.0 GB is below the {report['need_gb']} GB")
        assert "TENEXA_LOAD_DEVICE=offload_device" in report["reason"]
    assert set(report["parts_gb"]) == {"diffusion_models", "text_encoders", "vae", "loras", "comfyui_overhead"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actual=st.integers(0, 5000), expected=st.integers(1, 5000) | st.none())
def test_a_file_counts_as_present_exactly_when_its_size_matches(roots, actual, expected):
    settings, comfy, volume, place = roots
    entries = manifest.parse_manifest({"models": [entry_dict("x", "loras", "x.safetensors", size=expected)]})
    place(volume, "loras", "x.safetensors", b"\0" * actual)
    original = manifest.load_manifest
    manifest.load_manifest = lambda path=None: entries
    try:
        report = diagnostics._manifest_report(settings)
    finally:
        manifest.load_manifest = original
    matches = expected is None or actual == expected
    assert (report["present"] == ["x"]) is matches and bool(report["wrong_size"]) is not matches and report["ok"] is matches


@given(swap=st.integers(0, 40), device=st.sampled_from(["offload_device", "main_device"]), t5=st.sampled_from(["t5", "cache"]))
def test_host_memory_need_is_monotone_in_what_stays_on_the_host(swap, device, t5):
    env = {"COMFY_ROOT": "/nonexistent", "VOLUME_ROOT": "/nonexistent", "TENEXA_BLOCKS_TO_SWAP": str(swap),
           "TENEXA_LOAD_DEVICE": device, "TENEXA_TEXT_ENCODER": t5}
    need = diagnostics.host_memory_need(load_settings(env))["need_bytes"]
    most = diagnostics.host_memory_need(load_settings({**env, "TENEXA_LOAD_DEVICE": "offload_device", "TENEXA_TEXT_ENCODER": "t5"}))
    assert diagnostics.HOST_OVERHEAD_BYTES < need <= most["need_bytes"]
    if device == "main_device" and swap < 40:
        more = diagnostics.host_memory_need(load_settings({**env, "TENEXA_BLOCKS_TO_SWAP": str(swap + 1)}))["need_bytes"]
        assert more > need  # every swapped block is held in host RAM
