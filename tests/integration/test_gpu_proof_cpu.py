"""``bench/gpu_proof.py --cpu-smoke``: the GPU proof's whole chain on CPU, so it cannot rot before a GPU runs it.

Full width (dim 5120, ffn 13824), 1 of the 40 blocks, 64x64 x 5 frames, 4 steps, one job with block swap on,
under the rehearsal of the GPU machine's packages. About 1.5 min on 2 cores, ~6 GB RAM (the real ComfyUI holds
both 1-block experts, the full VAE and the unmerged rank-64 LoRAs). What it must show: weights synthesised at the
real files' tensor names, the pack's real loader accepting them, the worker's generate producing an MP4, and every
figure collected. Timings are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_payload  # noqa: E402
import gpu_proof  # noqa: E402
import gpu_weights  # noqa: E402


@pytest.fixture(scope="module")
def smoke(comfy_install, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-proof-smoke")
    env = {**os.environ, "COMFY_ROOT": str(comfy_install.root), "COMFY_PYTHON": str(comfy_install.python)}
    env.pop("OUT", None)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_proof.py"), "--cpu-smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_proof.json").read_text()) if (out / "gpu_proof.json").is_file() else {}
    assert done.returncode == 0 and not report.get("error"), f"{report.get('error')}\n{done.stderr[-4000:]}"
    print(f"\nCPU smoke: {report['total_s']} s in all; " + "; ".join(f"{r['case']}: {r['job']['e2e_s']} s" for r in report["runs"]))
    return report, (out / "gpu_proof.md").read_text(), out


def test_weights_are_written_at_the_real_names_and_sizes(smoke):
    report, _, _ = smoke
    weights = report["setup"]["weights"]
    assert weights["blocks"] == gpu_proof.SMOKE_BLOCKS and weights["layers_real"] == 40 and weights["dim"] == 5120
    files = weights["files"]
    experts = [name for name in files if "_fp8_e4m3fn_scaled_KJ" in name]
    assert sorted(experts) == ["Wan2_2-I2V-A14B-HIGH_fp8_e4m3fn_scaled_KJ.safetensors", "Wan2_2-I2V-A14B-LOW_fp8_e4m3fn_scaled_KJ.safetensors"]
    for name in experts:
        assert files[name]["bytes"] == gpu_weights.planned_size(gpu_weights.expert_spec(gpu_proof.SMOKE_BLOCKS))
    loras = [m["file"] for m in json.loads((ROOT / "models.json").read_text())["models"] if m["folder"] == "loras"]
    assert len(loras) == 2 and all(name in files for name in loras)
    for name in loras:
        assert files[name]["bytes"] == gpu_weights.planned_size(gpu_weights.lora_spec(gpu_proof.SMOKE_BLOCKS))
    assert files["Wan2_1_VAE_bf16.safetensors"]["params_m"] == 126.9
    assert weights["text_encoders_not_written"] == ["umt5-xxl-enc-bf16.safetensors"]
    assert weights["embeds"] and not any(Path(p).exists() for p in weights["embeds"]), "the run deletes the embeddings it cached"


def test_the_packs_loader_accepts_them(smoke):
    report, _, _ = smoke
    run = report["runs"][0]
    loaders = [n for n in run["nodes"] if n["class"] == "WanVideoModelLoader"]
    assert len(loaders) == 2, "both experts loaded (cold)"
    for node in loaders:
        facts = node["loader"]
        assert (facts["dim"], facts["heads"], facts["in_dim"], facts["ffn_dim"], facts["model_type"]) == (5120, 40, 36, 13824, "t2v")
        assert facts["quantization"] == "fp8_e4m3fn_scaled", "the graph asks for fp8_e4m3fn; the loader upgrades a scaled file"
        assert facts["params_missing_from_file"] == [] and facts["file_tensors_not_params"] == []
        assert facts["scaled_fp8_linears"] == facts["file_scale_weights"] == 10 * gpu_proof.SMOKE_BLOCKS and facts["file_has_scaled_fp8_marker"]
        # reduced depth: the loader derived 40 layers from dim 5120; the probe had it build the blocks in the file
        assert node["reduced_depth"] == {"blocks_in_file": gpu_proof.SMOKE_BLOCKS, "layers_the_loader_derived": 40}
        assert facts["layers"] == gpu_proof.SMOKE_BLOCKS
    assert all(n["output_finite"] is not False for n in run["nodes"]), [n["class"] for n in run["nodes"] if n["output_finite"] is False]


def test_the_workers_generate_makes_the_video(smoke):
    report, _, _ = smoke
    case = gpu_proof.SMOKE_CASES[0]
    run = report["runs"][0]
    assert run["job"]["video"]["frames"] == case.frames and (run["job"]["video"]["width"], run["job"]["video"]["height"]) == (case.width, case.height)
    config = run["config"]
    assert config["blocks_to_swap"] == case.blocks_to_swap and config["quantization"] == "fp8_e4m3fn" and config["text_encoder"] == "cache"
    assert config["attention_mode"] == "sdpa" and config["steps"] == case.steps
    assert [n["class"] for n in run["nodes"]].count("WanVideoSampler") == 2 and run["nodes"][-1]["class"] == "VHS_VideoCombine"


def test_every_figure_is_collected(smoke):
    report, md, out = smoke
    run = report["runs"][0]
    split = run["config"]["split"]
    for label, steps in (("high", split), ("low", run["config"]["steps"] - split)):
        expert = run["experts"][label]
        assert expert["steps"] == steps and expert["s_per_step"] > 0 and expert["first_step_s"] > 0
        assert expert["model_load_s"] > 0 and expert["weights_load_s"] is not None and expert["comfy_rss_gb"] > 1
        assert expert["ratio_to_floor"] > 1 and expert["output_finite"] is True
    assert run["vae_decode"]["seconds"] > 0 and run["vae_encode"]["seconds"] > 0
    assert run["job"]["e2e_s"] >= run["job"]["timings"]["total_s"] > run["job"]["timings"]["execution_s"] > 0
    assert run["job"]["worker_overhead_s"] >= 0 and run["resources_job"]["comfy_rss_gb"] > 1 and run["resources_job"]["worker_rss_gb"] > 0
    floor = run["floor"]
    assert floor["layers"] == gpu_proof.SMOKE_BLOCKS and floor["forwards"] == run["config"]["steps"] + 1
    assert floor["pflop_per_forward"] == pytest.approx(gpu_proof.dit_flops(64, 64, 5, layers=gpu_proof.SMOKE_BLOCKS) / 1e15, rel=1e-3)
    assert run["dit"]["samplers_s"] > run["dit"]["sampling_s"] > 0 and run["dit"]["ratio_to_floor"] > 1
    assert gpu_proof.LABEL in md and f"| {run['case']} |" in md and "T5 replaced" in md
    assert (out / "comfyui.log").is_file()


def test_comfyui_ran_with_only_the_gpu_machines_packages(smoke):
    """The rehearsal's point: everything ComfyUI imported, through a whole job, is on the GPU image or carried."""
    report, _, _ = smoke
    imported = {gpu_payload.normalize(d) for d in report["comfy_env"]["imported_distributions"]}
    assert {"torch", "av", "diffusers", "imageio-ffmpeg"} <= imported
    withheld = set(report["setup"]["rehearsal_comfy"]["left_out"])
    assert {"comfy-kitchen", "sqlalchemy", "kornia", "comfyui-frontend-package"} <= withheld, "installed here, absent there"
    assert not imported & withheld
    assert "runpod" in report["setup"]["rehearsal_worker"]["left_out"]
