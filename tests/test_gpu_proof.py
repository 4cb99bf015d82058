"""The GPU proof kit's parts that need no GPU and no ComfyUI: the real files' layouts, the FLOP floor, the payload,
the rehearsal of the GPU machine's packages, the time budget and the report. The whole chain runs on CPU in
tests/integration/test_gpu_proof_cpu.py."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_generate  # noqa: E402
import gpu_payload  # noqa: E402
import gpu_proof  # noqa: E402
import gpu_weights  # noqa: E402

MANIFEST = json.loads((ROOT / "models.json").read_text())["models"]


# ------------------------------------------------------------------------------------------------ the layouts


def test_lightning_lora_layout_gives_the_real_files_exact_size():
    """models.json records the Seko-V1 files' byte size; names, shapes, dtypes and alphas decide it to the byte."""
    loras = [m for m in MANIFEST if m["folder"] == "loras"]
    assert loras and all(m["size"] for m in loras)
    planned = gpu_weights.planned_size(gpu_weights.lora_spec())
    assert all(planned == m["size"] for m in loras)
    # the alternatives the size rules out
    renamed = [gpu_weights.TensorSpec(t.name.replace("lora_down", "lora_A").replace("lora_up", "lora_B"), t.shape, t.dtype, t.init)
               for t in gpu_weights.lora_spec()]
    assert gpu_weights.planned_size(renamed) != loras[0]["size"]
    no_alpha = [t for t in gpu_weights.lora_spec() if not t.name.endswith(".alpha")]
    assert gpu_weights.planned_size(no_alpha) != loras[0]["size"]


def test_expert_layout_is_what_the_loader_derives_a14b_from():
    spec = {t.name: t for t in gpu_weights.expert_spec()}
    assert len(spec) == len(gpu_weights.expert_spec()), "names are unique"
    # nodes_model_loading.py: dim and in_channels from patch_embedding, ffn from blocks.0.ffn.*, k/v features
    assert spec["patch_embedding.weight"].shape == (5120, 36, 1, 2, 2)
    assert spec["blocks.0.ffn.0.bias"].shape == (13824,) and spec["blocks.0.ffn.2.weight"].shape == (5120, 13824)
    assert spec["blocks.0.self_attn.k.weight"].shape == (5120, 5120)
    assert spec["blocks.0.cross_attn.k.weight"].shape == (5120, 5120), "text is projected to dim first: k/v are [d, d]"
    assert "text_embedding.0.weight" in spec and not any("k_img" in n or "img_emb" in n for n in spec), "cross-attention type t2v"
    assert {n.split(".")[1] for n in spec if n.startswith("blocks.")} == {str(i) for i in range(40)}
    # Kijai's scaled fp8: each block linear is F8_E4M3 with a 0-dim F32 scale_weight, plus the scaled_fp8 marker
    fp8 = [t for t in spec.values() if t.dtype == "F8_E4M3" and t.name != "scaled_fp8"]
    assert len(fp8) == 40 * 10 and all(t.name.startswith("blocks.") for t in fp8)
    assert all(spec[t.name.replace(".weight", ".scale_weight")].shape == () for t in fp8)
    assert spec["scaled_fp8"].dtype == "F8_E4M3"
    # wan-facts.md §7: Kijai's A14B fp8_scaled files are 14.3-14.5 GB (listed sizes, decimal)
    assert 14.3e9 <= gpu_weights.planned_size(gpu_weights.expert_spec()) <= 14.6e9


def test_reduced_depth_keeps_full_width_and_drops_only_blocks():
    full, reduced = gpu_weights.expert_spec(), gpu_weights.expert_spec(1)
    assert {t.name for t in reduced} == {t.name for t in full if not t.name.startswith("blocks.") or t.name.startswith("blocks.0.")}
    assert all(t.shape == {u.name: u for u in full}[t.name].shape for t in reduced)


def test_header_is_safetensors_json_padded_to_eight_bytes():
    spec = gpu_weights.expert_spec(1)
    header = gpu_weights.header_bytes(spec)
    assert len(header) % 8 == 0
    parsed = json.loads(header)
    assert set(parsed) == {t.name for t in spec}
    ends = sorted(v["data_offsets"] for v in parsed.values())
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))
    assert gpu_weights.planned_size(spec) == 8 + len(header) + ends[-1][1]


# ------------------------------------------------------------------------------------------------ the floor


@pytest.mark.parametrize(("size", "frames", "pflop"), [((832, 480), 81, 1.68), ((832, 480), 121, 3.09), ((1280, 720), 81, 6.52),
                                                       ((1280, 704), 81, 6.28)])
def test_flop_floor_matches_wan_facts_table(size, frames, pflop):
    assert gpu_proof.dit_flops(*size, frames) / 1e15 == pytest.approx(pflop, rel=0.01)


def test_forwards_count_the_cfg_passes():
    assert gpu_proof.forwards(10, 5, cfg=2.0, cfg_low=1.0) == 11  # the shipped schedule: cfg 2 on the first high step
    assert gpu_proof.forwards(4, 2, cfg=1.0, cfg_low=1.0) == 4  # Lightning without CFG
    assert gpu_proof.forwards(4, 2, cfg=2.0, cfg_low=3.0) == 7


# ------------------------------------------------------------------------------------------------ the payload


def test_carried_packages_are_exactly_what_the_image_lacks():
    carried = {gpu_payload.normalize(n) for n in gpu_payload.CARRIED}
    assert not carried & gpu_payload.GPU_IMAGE_PACKAGES
    assert {"av", "websocket-client", "imageio-ffmpeg", "torchsde", "diffusers", "pydantic"} <= carried
    cmd = gpu_payload.pip_target_command(Path("/x"))
    assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.12"
    assert all(f"{name}=={version}" in cmd for name, version in gpu_payload.CARRIED.items())


def test_carried_versions_are_the_lock_pins():
    lock = ROOT / "requirements-stack.lock"
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M))
    pins = {gpu_payload.normalize(k): v for k, v in pins.items()}
    for name, version in gpu_payload.CARRIED.items():
        if name != "imageio-ffmpeg":  # deliberately older: see CARRIED
            assert pins.get(gpu_payload.normalize(name)) == version, name


def _archive(path: Path, top: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def vendor(tmp_path):
    """Vendor archives named as stack.lock pins them, with the layout of GitHub's archives and a SHA256SUMS."""
    commits = gpu_payload.stack_commits()
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    sums = []
    for name, key in gpu_payload.STACK_KEYS.items():
        top = f"{name}-{commits[key + '_COMMIT']}"
        _archive(vendor / f"{top}.tar.gz", top, {"main.py" if name == "ComfyUI" else "__init__.py": b"# code\n",
                                                 "example_workflows/big.json": b"{}", "tests/test_x.py": b"", "sub/tests/keep.py": b"kept"})
        sums.append(f"{hashlib.sha256((vendor / f'{top}.tar.gz').read_bytes()).hexdigest()}  {top}.tar.gz")
    (vendor / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return vendor


def test_sources_are_repacked_into_one_comfyui_tree_without_unused_folders(vendor, tmp_path):
    info = gpu_payload.build_sources(vendor, tmp_path / "sources.tar.xz")
    with tarfile.open(tmp_path / "sources.tar.xz", "r:xz") as tar:
        names = set(tar.getnames())
    assert "ComfyUI/main.py" in names
    assert {f"ComfyUI/custom_nodes/{pack}/__init__.py" for pack in gpu_payload.CUSTOM_NODES} <= names
    assert not any("example_workflows" in n or n.endswith("test_x.py") for n in names)
    assert "ComfyUI/sub/tests/keep.py" in names, "only top-level folders are left out"
    assert len(info["archives"]) == 4


def test_an_archive_that_does_not_match_its_sha256_is_refused(vendor, tmp_path):
    archive = next(vendor.glob("ComfyUI-KJNodes-*.tar.gz"))
    archive.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match SHA256SUMS"):
        gpu_payload.build_sources(vendor, tmp_path / "sources.tar.xz")


def test_unpack_extracts_once_per_payload(vendor, tmp_path):
    payload, work = tmp_path / "payload", tmp_path / "work"
    payload.mkdir()
    gpu_payload.build_sources(vendor, payload / "sources.tar.xz")
    with tarfile.open(payload / "site.tar.xz", "w:xz") as tar:
        info = tarfile.TarInfo("site/carried.py")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"#\n"))
    (payload / "payload.json").write_text("{}")
    first = gpu_payload.unpack(payload, work)
    assert (first["comfy_root"] / "main.py").is_file() and (first["site"] / "carried.py").is_file() and not first["reused"]
    assert gpu_payload.unpack(payload, work)["reused"] is True
    (payload / "payload.json").write_text('{"changed": true}')
    assert gpu_payload.unpack(payload, work)["reused"] is False


def test_measure_counts_the_repository_and_each_item(tmp_path):
    (tmp_path / "site.tar.xz").write_bytes(b"x" * (3 << 20))
    carry = gpu_payload.measure(tmp_path)
    assert carry["items_mib"] == {"site.tar.xz": 3.0} and carry["repository_mib"] > 0.5
    assert carry["total_mib"] == pytest.approx(3.0 + carry["repository_mib"], abs=0.01) and carry["fits"] is True


def test_the_rehearsal_hides_what_the_gpu_machine_lacks(tmp_path):
    """runpod and boto3 are installed here but neither on the GPU image nor carried: in the rehearsal they are
    absent to imports and to importlib.util.find_spec alike; the worker's own needs are there."""
    code = f"""
import importlib.util, sys
sys.path.insert(0, {str(ROOT / 'bench')!r})
import gpu_payload
report = gpu_payload.enter_rehearsal(__import__('pathlib').Path({str(tmp_path / 'view')!r}))
assert "runpod" in report["left_out"] and "boto3" in report["left_out"], report
assert importlib.util.find_spec("runpod") is None and importlib.util.find_spec("boto3") is None
try:
    import runpod
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("runpod imported")
import requests, websocket, av, PIL, yaml  # image: requests, pillow, pyyaml; carried: websocket-client, av
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ budget and report


def _run(case: gpu_proof.Case, e2e: float, dit: float, loads: list[float]) -> dict:
    flops = gpu_proof.dit_flops(case.width, case.height, case.frames)
    return {"case": case.name, "config": {"width": case.width, "height": case.height, "frames": case.frames},
            "floor": {"layers": 40, "pflop_per_forward": flops / 1e15, "forwards": case.steps + 1, "s_per_forward_floor": flops / 8e14},
            "dit": {"samplers_s": dit + 4.0, "sampling_s": dit},
            "model_load": {"experts_s": loads, "loader_nodes_s": [x - 2.0 for x in loads], "weights_load_s": [2.0, 2.0]},
            "job": {"e2e_s": e2e}}


def test_time_budget_keeps_room_for_the_required_cases():
    cases = gpu_proof.GPU_CASES
    optional = next(i for i, c in enumerate(cases) if not c.required)
    done = [_run(cases[0], e2e=60.0, dit=14.0, loads=[12.0, 12.0])]
    # 720p costs ~3.9x 480p per forward; the optional case also reserves the swap case after it, which reloads
    alone = gpu_proof.predicted_s(cases[optional], done, models_reload=False)
    assert alone > gpu_proof.predicted_s(cases[1], done, models_reload=False)
    assert gpu_proof.time_needed(cases, optional, done) > alone + gpu_proof.predicted_s(cases[-1], done, models_reload=False)
    assert gpu_proof.predicted_s(cases[-1], done, models_reload=True) > gpu_proof.predicted_s(cases[-1], done, models_reload=False)


def test_step_timing_ignores_the_weight_loading_bar():
    """A WanVideoSampler reports a weight-loading bar (max = parameters) before its step ticks."""
    graph = {"1": {"class_type": "WanVideoSampler"}, "2": {"class_type": "WanVideoSampler"}}
    events = [(0.0, "executing", {"node": "1"})]
    events += [(0.5 + 0.1 * i, "progress", {"node": "1", "value": 100 * (i + 1), "max": 825}) for i in range(8)]
    events += [(5.0 + 2.0 * i, "progress", {"node": "1", "value": i + 1, "max": 3}) for i in range(3)]
    events += [(12.0, "executing", {"node": "2"}), (20.0, "executing", {"node": None})]
    out = gpu_generate.analyze(gpu_generate.Timeline(0.0, events, done_at=20.0), graph, "1", "2")
    high = out["experts"]["high"]
    assert high["steps"] == 3 and high["s_per_step"] == 2.0 and high["progress_max"] == 3
    assert high["weights_load_s"] == 1.2 and high["first_step_s"] == 5.0


def test_report_names_what_it_is_and_every_case():
    case = gpu_proof.GPU_CASES[0]
    run = _run(case, e2e=61.2, dit=14.0, loads=[12.0, 11.0])
    run.update(job={"e2e_s": 61.2, "timings": {"execution_s": 60.1}, "worker_overhead_s": 0.31},
               experts={"high": {"s_per_step": 2.61, "ratio_to_floor": 1.24, "cuda_peak_allocated_gb": 21.3},
                        "low": {"s_per_step": 2.55, "ratio_to_floor": 1.21, "cuda_peak_allocated_gb": 21.1}},
               resources_job={"gpu_memory_used_gb": 24.9, "comfy_rss_gb": 35.2, "worker_rss_gb": 0.21},
               vae_decode={"seconds": 4.4, "cuda_peak_allocated_gb": 9.8})
    report = {"date": "d", "commit": "c", "mode": "gpu", "gpu": {"name": "NVIDIA H200", "driver": "580"}, "machine": {"cpus": 16, "ram_gb": 128},
              "differences": ["T5 replaced"], "runs": [run], "skipped": [{"case": "720p 81f 4 steps", "reason": "needs ~300 s, 100 s left"}],
              "setup": {}, "peak_tflops": 800.0, "error": "RuntimeError: boom"}
    md = gpu_proof.markdown(report)
    assert gpu_proof.LABEL in md and "NVIDIA H200" in md and "T5 replaced" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| {case.name}"))
    assert "| 61.2 |" in row and "12.0 / 11.0" in row and "2.61 / 2.55" in row and "1.24 / 1.21" in row and "| 24.9 |" in row
    assert "| 720p 81f 4 steps | skipped: needs ~300 s" in md and "Stopped early" in md


def test_without_a_gpu_it_says_so_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_proof.shutil, "which", lambda _name: None)
    assert gpu_proof.main(["--out", str(tmp_path)]) == 2
    assert "SKIPPED: no NVIDIA GPU" in capsys.readouterr().err


def test_the_gpu_run_takes_comfyui_and_packages_from_the_payload(vendor, tmp_path, monkeypatch):
    payload, work = tmp_path / "payload", tmp_path / "work"
    payload.mkdir()
    gpu_payload.build_sources(vendor, payload / "sources.tar.xz")
    with tarfile.open(payload / "site.tar.xz", "w:xz") as tar:
        tar.add(payload, arcname="site", recursive=False)  # an empty site folder
    (payload / "payload.json").write_text(json.dumps({"carry": {"total_mib": 57.3}}))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr(sys, "path", list(sys.path))
    args = argparse.Namespace(cpu_smoke=False, payload=str(payload), work=str(work), models_dir=None)
    report = {"setup": {}}
    stack = gpu_proof.prepare_stack(args, report)
    assert stack.mode == "gpu" and stack.blocks == 40 and stack.cases == gpu_proof.GPU_CASES and stack.rehearsal_view is None
    assert stack.comfy_root == work / "ComfyUI" and (stack.comfy_root / "main.py").is_file()
    assert gpu_proof.os.environ["PYTHONPATH"] == f"{work / 'site'}{gpu_proof.os.pathsep}/elsewhere" and sys.path[0] == str(work / "site")
    assert report["setup"]["unpack"]["payload"] == {"total_mib": 57.3} and report["setup"]["models_dir"] == str(stack.models_dir)
    assert stack.script_command(Path("/x/main.py"), "--a")[-2:] == ["/x/main.py", "--a"]


def test_probe_keeps_the_cuda_peak_a_sampler_resets_at_its_end(monkeypatch):
    """WanVideoSampler calls torch.cuda.reset_peak_memory_stats itself before returning; the probe's figure must
    still be the peak during the node. Fake torch and ComfyUI modules stand in (no GPU here)."""
    import importlib.util
    import types

    state = {"now": 0, "peak": 0}
    cuda = types.SimpleNamespace(
        is_available=lambda: True, synchronize=lambda: None, memory_allocated=lambda *a: state["now"],
        max_memory_allocated=lambda *a: state["peak"], max_memory_reserved=lambda *a: state["peak"],
        reset_peak_memory_stats=lambda *a: state.update(peak=state["now"]))
    fake_torch = types.SimpleNamespace(cuda=cuda, Tensor=type("Tensor", (), {}))
    routes = types.SimpleNamespace(get=lambda path: (lambda fn: fn))
    prompt_server = types.SimpleNamespace(instance=types.SimpleNamespace(routes=routes, add_on_prompt_handler=lambda fn: None))
    for name, module in {"torch": fake_torch, "server": types.SimpleNamespace(PromptServer=prompt_server),
                         "nodes": types.SimpleNamespace(NODE_CLASS_MAPPINGS={})}.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("probe_under_test", ROOT / "bench" / "comfy_probe" / "tenexa_gpu_probe" / "__init__.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    def sampler_process(self, **kwargs):
        state.update(now=40e9, peak=max(state["peak"], 40e9))  # the expert moves in: 40 GB
        state.update(now=55e9, peak=max(state["peak"], 55e9))  # activations: 55 GB at the top
        state.update(now=2e9)  # offloaded
        fake_torch.cuda.reset_peak_memory_stats(0)  # what the wrapper does before returning
        return ({"samples": None},)

    probe._measure("WanVideoSampler", sampler_process)(None, steps=4, start_step=0, end_step=2)
    record = probe.RECORDS[-1]
    assert record["cuda_peak_allocated_gb"] == 55.0 and record["cuda_peak_reserved_gb"] == 55.0 and record["cuda_allocated_after_gb"] == 2.0
    assert record["inputs"]["steps"] == 4 and record["seconds"] >= 0
    assert state["peak"] == 2e9, "the wrapper's own reset still happened"
