"""The model manifest: format, defaults, and exact coverage of what the workflows reference."""

from __future__ import annotations

import json
import re

import pytest

from tenexa import manifest, workflows
from tenexa.manifest import ManifestError, parse_manifest

HF_URL = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/\S+$")
GITHUB_RELEASE_URL = re.compile(r"^https://github\.com/[\w.-]+/[\w.-]+/releases/download/[\w.-]+/\S+$")


def raw_manifest() -> dict:
    return json.loads(manifest.MANIFEST_PATH.read_text(encoding="utf-8"))


def test_manifest_loads_with_valid_entries():
    entries = manifest.load_manifest()
    assert entries
    for entry in entries:
        assert entry.folder in manifest.FOLDERS
        assert HF_URL.match(entry.url) or (entry.pack_path and GITHUB_RELEASE_URL.match(entry.url)), entry.url
        upstream_dir, upstream_name = entry.url.rsplit("/", 2)[-2:]
        # the upstream name, or (for generic upstream names) its release folder and name joined by "_"
        assert entry.file in (upstream_name, f"{upstream_dir}_{upstream_name}"), entry.file
        assert set(entry.workflows) <= set(workflows.WORKFLOWS), entry.workflows
        assert entry.workflows or entry.optional, f"{entry.name}: a required entry names the workflows that need it"


def test_rife_interpolation_checkpoint_entry_is_optional_and_linked_into_the_pack():
    entry = manifest.entry("rife47")
    assert entry.optional and entry.workflows == () and entry.folder == "frame_interpolation"
    # ComfyUI-Frame-Interpolation's vfi_utils looks for <pack>/ckpts/<model_type>/<ckpt_name> (config.yaml ckpts_path)
    assert entry.pack_path == "custom_nodes/ComfyUI-Frame-Interpolation/ckpts/rife/rife47.pth"
    # the name the RIFE VFI node takes (CKPT_NAME_VER_DICT: rife47.pth is architecture 4.7)
    assert entry.file == "rife47.pth"


@pytest.mark.parametrize("workflow", sorted(workflows.WORKFLOWS))
def test_workflow_file_references_are_exactly_the_manifest_entries(workflow):
    from_manifest: dict[str, list[str]] = {}
    for entry in manifest.entries_for(workflow):
        from_manifest.setdefault(entry.folder, []).append(entry.file)
    assert workflows.model_references(workflow) == {k: sorted(v) for k, v in sorted(from_manifest.items())}


def test_default_loras_are_the_lightning_seko_files():
    high, low = manifest.default_loras()
    assert (high, low) == ("Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1_high_noise_model.safetensors", "Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1_low_noise_model.safetensors")
    for name in (manifest.DEFAULT_LORA_HIGH_ENTRY, manifest.DEFAULT_LORA_LOW_ENTRY):
        entry = manifest.entry(name)
        assert entry.folder == "loras"
        assert "lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/" in entry.url
        assert entry.size == 1_226_977_424


# File names other releases also use: two different files under one name on a shared volume (the Wan2.2-Lightning
# T2V and I2V releases both ship high_noise_model.safetensors / low_noise_model.safetensors).
GENERIC_NAMES = {"high_noise_model.safetensors", "low_noise_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.safetensors", "adapter_model.safetensors", "pytorch_lora_weights.safetensors"}


def test_file_names_say_what_they_are():
    for entry in manifest.load_manifest():
        assert entry.file not in GENERIC_NAMES, entry.file
    loras = {e.file for e in manifest.load_manifest() if e.folder == "loras"}
    assert all("I2V-A14B" in f for f in loras), "a LoRA's name says which model it is for"
    assert len({f.lower() for f in loras}) == len(loras)


def test_known_sizes_and_no_clip_vision():
    files = {e.file for e in manifest.load_manifest()}
    assert not any("clip_vision" in f for f in files), "Wan2.2 A14B ignores CLIP vision: no 1.26 GB download"


def test_provision_reads_the_same_manifest():
    from tenexa import provision

    theirs = {(e.name, e.folder, e.file, e.url, e.size) for e in provision.load_manifest(manifest.MANIFEST_PATH)}
    ours = {(e.name, e.folder, e.file, e.url, e.size) for e in manifest.load_manifest()}
    assert theirs == ours


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("models"), "models"),
    (lambda d: d["models"][0].pop("url"), "url"),
    (lambda d: d["models"][0].update(folder="checkpoints"), "folder"),
    (lambda d: d["models"][0].update(file="../evil.safetensors"), "file"),
    (lambda d: d["models"][0].update(size=-1), "size"),
    (lambda d: d["models"][0].update(sha256="xyz"), "sha256"),
    (lambda d: d["models"][0].update(url="http://example.com/a"), "url"),
    (lambda d: d["models"].append(dict(d["models"][0])), "duplicate"),
    (lambda d: d["models"][0].update(workflows=[]), "workflows"),
    (lambda d: d["models"][0].update(optional="yes"), "optional"),
    (lambda d: d["models"][-1].update(pack_path="/etc/rife47.pth"), "pack_path"),
    (lambda d: d["models"][-1].update(pack_path="custom_nodes/../../x/rife47.pth"), "pack_path"),
    (lambda d: d["models"][-1].update(pack_path="custom_nodes/P/ckpts/rife/other.pth"), "pack_path"),
])
def test_bad_manifests_are_refused(mutate, message):
    data = raw_manifest()
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


def test_unknown_entry_name():
    with pytest.raises(ManifestError):
        manifest.entry("no-such-model")
