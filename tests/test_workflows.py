"""The shipped workflows and their bindings: registry, binding table, bind() invariants, runtime settings.

Graph facts are found by class_type and links (not node ids), so the invariants hold for any graph that
keeps the same shape.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import string
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tenexa import formats, manifest, wan, workflows
from tenexa.config import REPO_ROOT, ConfigError, load_settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.formats import CODECS, QUALITY_PRESETS
from tenexa.request import ASPECT_RATIOS, DEFAULT_NEGATIVE_PROMPT, RESOLUTIONS, SCHEDULERS, WORKFLOW_NAMES, parse_generate
from tenexa.validator import load_object_info, validate

OBJECT_INFO = load_object_info()
SETTINGS = load_settings({})
CACHE_SETTINGS = load_settings({"TENEXA_TEXT_ENCODER": "cache", "TENEXA_ATTENTION": "sdpa", "TENEXA_VAE_PRECISION": "fp32"})
PNG = "iVBORw0KGgo="  # located only, never decoded by parse_generate

REQUEST_PARAMS = {
    "start_image", "prompt", "negative_prompt", "seed", "steps", "high_steps", "cfg", "cfg_low", "frames", "width",
    "height", "fps", "shift", "scheduler", "lora_high", "lora_high_strength", "lora_low", "lora_low_strength",
    "output_prefix", "video_format", "pix_fmt", "crf",
    *(f"lora_{expert}_{slot}{suffix}" for expert in ("high", "low") for slot in range(1, 5) for suffix in ("", "_strength")),
}
RUNTIME_PARAMS = {"attention_mode", "base_precision", "quantization", "load_device", "blocks_to_swap", "vae_precision",
                  "use_disk_cache"}


def request(workflow: str = "wan22_i2v", **fields):
    data = {"workflow": workflow, "image_base64": PNG, **fields}
    if workflow == "flf2v":
        data.setdefault("end_image_base64", PNG)
    return parse_generate(data)


def bind(req, image_size=(832, 480), settings_=SETTINGS, prefix="job_1"):
    return workflows.bind(req, image_size=image_size, settings=settings_, start_image="in/start.png",
                          end_image="in/end.png" if req.workflow == "flf2v" else None, output_prefix=prefix)


# ---------------------------------------------------------------------------------- graph helpers


def nodes_of(graph: dict, class_type: str) -> dict[str, dict]:
    return {nid: n for nid, n in graph.items() if n["class_type"] == class_type}


def resolve(graph: dict, value):
    """A literal, or the value of the INTConstant a link points at."""
    if isinstance(value, list):
        src = graph[value[0]]
        assert src["class_type"] == "INTConstant", f"link to {src['class_type']} is not a constant"
        return src["inputs"]["value"]
    return value


def upstream(graph: dict, nid: str) -> set[str]:
    seen, stack = set(), [nid]
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        stack.extend(v[0] for v in graph[cur]["inputs"].values() if isinstance(v, list))
    return seen


def samplers(graph: dict) -> tuple[dict, dict, str]:
    """(HIGH sampler, LOW sampler, HIGH id): LOW is the one that continues from the other's samples."""
    found = nodes_of(graph, "WanVideoSampler")
    assert len(found) == 2
    (low_id, low), = [(k, v) for k, v in found.items() if "samples" in v["inputs"]]
    high_id = low["inputs"]["samples"][0]
    assert low["inputs"]["samples"] == [high_id, 0]
    return found[high_id], low, high_id


def cfg_schedule(steps: int, start: float, end: float, start_percent: float, end_percent: float) -> list[float]:
    """CreateCFGScheduleFloatList at the pinned WanVideoWrapper commit (linear)."""
    cfg = [1.0] * steps
    a, b = min(int(steps * start_percent), steps - 1), min(int(steps * end_percent), steps - 1)
    for i in range(a, b + 1):
        t = 0 if a == b else (i - a) / (b - a)
        cfg[i] = start + (end - start) * t
    return cfg


# ---------------------------------------------------------------------------------- registry and tables


def test_registry_covers_the_request_workflows_and_files_exist():
    assert set(workflows.WORKFLOWS) == set(WORKFLOW_NAMES)
    for name in workflows.WORKFLOWS:
        assert workflows.workflow_path(name).is_file()
        assert workflows.workflow_path(name).parent == REPO_ROOT


@pytest.mark.parametrize("name", sorted(workflows.WORKFLOWS))
def test_binding_table_covers_every_parameter_and_targets_literals(name):
    spec = workflows.spec(name)
    expected = REQUEST_PARAMS | RUNTIME_PARAMS | ({"end_image"} if spec.uses_end_image else set())
    assert set(spec.bindings) == expected
    graph = workflows.load_graph(name)
    for param, targets in spec.bindings.items():
        for target in targets:
            node_id, _, input_name = target.partition(".")
            assert node_id in graph, f"{param}: {target}"
            assert input_name in graph[node_id]["inputs"], f"{param}: {target}"
            assert not isinstance(graph[node_id]["inputs"][input_name], list), f"{param}: {target} is a link"
    assert graph[spec.output_node]["class_type"] == "VHS_VideoCombine"
    assert graph[spec.t5_loader]["class_type"] == "LoadWanVideoT5TextEncoder"
    _, _, high_id = samplers(graph)
    assert (spec.high_sampler, spec.low_sampler) == (high_id, spec.low_sampler)
    assert "samples" in graph[spec.low_sampler]["inputs"]


def test_original_node_ids_are_kept():
    graph = workflows.load_graph("flf2v")
    expected = {"244": "LoadImage", "617": "LoadImage", "541": "WanVideoImageToVideoEncode", "220": "WanVideoSampler",
                "540": "WanVideoSampler", "131": "VHS_VideoCombine", "122": "WanVideoModelLoader",
                "549": "WanVideoModelLoader", "569": "INTConstant", "575": "INTConstant",
                "570": "CreateCFGScheduleFloatList", "612": "WanVideoDecode", "525": "WanVideoBlockSwap"}
    assert {k: graph[k]["class_type"] for k in expected} == expected


def test_graphs_drop_the_defects_of_the_original():
    for name in workflows.WORKFLOWS:
        classes = {n["class_type"] for n in workflows.load_graph(name).values()}
        assert not classes & {"WanVideoEnhancedBlockSwap", "CLIPVisionLoader", "WanVideoClipVisionEncode",
                              "WanVideoContextOptions"}
        for node in nodes_of(workflows.load_graph(name), "WanVideoLoraSelectMulti").values():
            assert node["inputs"]["merge_loras"] is False  # WanVideoSetLoRAs raises on merged LoRAs


def test_fun_or_fl2v_model_is_explicit():
    (i2v,) = nodes_of(workflows.load_graph("wan22_i2v"), "WanVideoImageToVideoEncode").values()
    (flf,) = nodes_of(workflows.load_graph("flf2v"), "WanVideoImageToVideoEncode").values()
    assert i2v["inputs"]["fun_or_fl2v_model"] is False and "end_image" not in i2v["inputs"]
    assert flf["inputs"]["fun_or_fl2v_model"] is True and isinstance(flf["inputs"]["end_image"], list)


def test_required_classes_are_all_recorded():
    classes = workflows.required_classes()
    assert "WanVideoSampler" in classes and "VHS_VideoCombine" in classes
    assert set(classes) <= set(OBJECT_INFO)


# ---------------------------------------------------------------------------------- bind


def test_bind_writes_the_request_into_the_graph():
    req = request("flf2v", prompt="a cat", seed=7, steps=8, frames=33, cfg=3.0, cfg_low=1.5, fps=24, shift=5.0,
                  scheduler="euler", lora_high="mine.safetensors", lora_high_strength=0.5, lora_low="none")
    bound = bind(req, image_size=(1920, 1080), prefix="job_x")
    g, used = bound.graph, bound.used
    assert used["width"] == 848 and used["height"] == 480 and used["frames"] == 33
    assert used["steps"] == 8 and used["high_steps"] == used["split"] == 3 and used["low_steps"] == 5
    assert used["lora_high"] == "mine.safetensors" and used["lora_low"] == "none"
    (text,) = nodes_of(g, "WanVideoTextEncode").values()
    assert text["inputs"]["positive_prompt"] == "a cat" and text["inputs"]["negative_prompt"] == DEFAULT_NEGATIVE_PROMPT
    high, low, _ = samplers(g)
    assert high["inputs"]["seed"] == low["inputs"]["seed"] == 7
    assert high["inputs"]["scheduler"] == low["inputs"]["scheduler"] == "euler"
    assert low["inputs"]["cfg"] == 1.5
    (vhs,) = nodes_of(g, "VHS_VideoCombine").values()
    assert vhs["inputs"]["frame_rate"] == 24.0 and vhs["inputs"]["filename_prefix"] == "job_x"
    loras = {n["inputs"]["lora_0"]: n["inputs"]["strength_0"] for n in nodes_of(g, "WanVideoLoraSelectMulti").values()}
    assert loras == {"mine.safetensors": 0.5, "none": 1.0}
    assert "prompt" not in used and "negative_prompt" not in used


def test_bind_uses_the_manifest_loras_by_default():
    used = bind(request()).used
    assert (used["lora_high"], used["lora_low"]) == ("Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1_high_noise_model.safetensors", "Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1_low_noise_model.safetensors")


def test_lora_name_binds_one_lora_to_both_experts():
    g = bind(request(lora_name="style.safetensors", lora_strength=0.5)).graph
    loras = [(n["inputs"]["lora_0"], n["inputs"]["strength_0"]) for n in nodes_of(g, "WanVideoLoraSelectMulti").values()]
    assert loras == [("style.safetensors", 0.5)] * 2


def expert_lora_slots(graph: dict) -> dict[str, list[tuple[str, float]]]:
    """{"high"|"low": [(lora_i, strength_i) for slots 0-4]} of the LoRA select feeding each expert's sampler."""
    _, low, high_id = samplers(graph)
    low_id = next(nid for nid, n in graph.items() if n is low)
    found = {}
    feeding = {"high": upstream(graph, high_id), "low": upstream(graph, low_id) - upstream(graph, high_id)}
    for expert, nodes in feeding.items():
        (select,) = [graph[n] for n in nodes if graph[n]["class_type"] == "WanVideoLoraSelectMulti"]
        found[expert] = [(select["inputs"][f"lora_{i}"], select["inputs"][f"strength_{i}"]) for i in range(5)]
    return found


@pytest.mark.parametrize("workflow", ["wan22_i2v", "flf2v"])
def test_bind_puts_the_loras_list_in_slots_1_to_4_of_each_expert(workflow):
    req = request(workflow, lora_low="none", loras=[
        {"name": "both.safetensors", "strength": 0.5},
        {"name": "high-a.safetensors", "expert": "high"},
        {"name": "low-a.safetensors", "expert": "low", "strength": -1.25},
        {"name": "high-b.safetensors", "expert": "high", "strength": 2.0},
    ])
    bound = bind(req)
    slots = expert_lora_slots(bound.graph)
    assert slots["high"] == [(manifest.default_loras()[0], 1.0), ("both.safetensors", 0.5), ("high-a.safetensors", 1.0),
                             ("high-b.safetensors", 2.0), ("none", 1.0)]
    assert slots["low"] == [("none", 1.0), ("both.safetensors", 0.5), ("low-a.safetensors", -1.25), ("none", 1.0), ("none", 1.0)]
    assert [(u["expert"], u["slot"], u["name"]) for u in bound.used["loras"]] == [
        ("high", 1, "both.safetensors"), ("high", 2, "high-a.safetensors"), ("high", 3, "high-b.safetensors"),
        ("low", 1, "both.safetensors"), ("low", 2, "low-a.safetensors")]
    assert not any(key.startswith(("lora_high_", "lora_low_")) and key[-1].isdigit() for key in bound.used)
    assert "loras" not in bind(request(workflow)).used
    assert expert_lora_slots(bind(request(workflow)).graph)["high"][1:] == [("none", 1.0)] * 4


def test_bind_refuses_an_unfetched_lora_url():
    with pytest.raises(ValueError, match="not fetched"):
        bind(request(loras=[{"url": "https://example.com/a.safetensors"}]))


def test_bind_returns_a_fresh_copy_each_time():
    a = bind(request(seed=1)).graph
    b = bind(request(seed=2)).graph
    assert a != b
    assert workflows.load_graph("wan22_i2v") == json.loads(workflows.workflow_path("wan22_i2v").read_text())


def test_text_encoder_modes():
    g = bind(request()).graph
    (text,) = nodes_of(g, "WanVideoTextEncode").values()
    assert text["inputs"]["use_disk_cache"] is False and isinstance(text["inputs"]["t5"], list)
    assert nodes_of(g, "LoadWanVideoT5TextEncoder")
    g = bind(request(), settings_=CACHE_SETTINGS).graph
    (text,) = nodes_of(g, "WanVideoTextEncode").values()
    assert text["inputs"]["use_disk_cache"] is True and "t5" not in text["inputs"]
    assert not nodes_of(g, "LoadWanVideoT5TextEncoder")
    assert validate(g, OBJECT_INFO) == []


def test_runtime_settings_reach_the_loaders():
    s = load_settings({"TENEXA_ATTENTION": "sageattn", "TENEXA_BASE_PRECISION": "fp16", "TENEXA_QUANTIZATION": "disabled",
                       "TENEXA_LOAD_DEVICE": "main_device", "TENEXA_BLOCKS_TO_SWAP": "20", "TENEXA_VAE_PRECISION": "fp32"})
    g = bind(request(), settings_=s).graph
    for loader in nodes_of(g, "WanVideoModelLoader").values():
        i = loader["inputs"]
        assert (i["attention_mode"], i["base_precision"], i["quantization"], i["load_device"]) == (
            "sageattn", "fp16", "disabled", "main_device")
        assert g[i["block_swap_args"][0]]["inputs"]["blocks_to_swap"] == 20
    (vae,) = nodes_of(g, "WanVideoVAELoader").values()
    assert vae["inputs"]["precision"] == "fp32"


@pytest.mark.parametrize("env", [
    {"TENEXA_ATTENTION": "fast"}, {"TENEXA_BASE_PRECISION": "int4"}, {"TENEXA_QUANTIZATION": "fp8_e4m3fn_fast"},
    {"TENEXA_LOAD_DEVICE": "gpu"}, {"TENEXA_BLOCKS_TO_SWAP": "41"}, {"TENEXA_VAE_PRECISION": "fp8"},
    {"TENEXA_TEXT_ENCODER": "clip"},
])
def test_bad_runtime_settings_are_refused_by_name(env):
    s = load_settings(env)
    (var,) = env
    assert any(var in p for p in workflows.settings_problems(s))
    with pytest.raises(ConfigError, match=var):
        bind(request(), settings_=s)


def test_end_image_must_match_the_workflow():
    with pytest.raises(ValueError):
        workflows.bind(request(), image_size=(64, 64), settings=SETTINGS, start_image="a", end_image="b", output_prefix="p")
    with pytest.raises(ValueError):
        workflows.bind(request("flf2v"), image_size=(64, 64), settings=SETTINGS, start_image="a", end_image=None,
                       output_prefix="p")


def test_resolve_attention(monkeypatch):
    assert workflows.resolve_attention(load_settings({"TENEXA_ATTENTION": "flash_attn_3"})) == "flash_attn_3"
    probe = workflows.AttentionProbe(True, "test", SETTINGS.comfy_python, 0.0)
    monkeypatch.setattr(workflows, "_probes", {SETTINGS.comfy_python: probe})
    assert workflows.resolve_attention(SETTINGS) == "sageattn"
    monkeypatch.setattr(workflows, "_probes", {SETTINGS.comfy_python: dataclasses.replace(probe, usable=False)})
    assert workflows.resolve_attention(SETTINGS) == "sdpa"


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for ComfyUI's interpreter: ignores its arguments, runs a shell body."""
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(("body", "usable", "reason"), [
    ('echo \'{"sageattention": true, "cuda": true, "torch": "2.9.1"}\'', True, "sageattention imports and CUDA is available"),
    ('echo \'{"sageattention": false, "cuda": true, "error": "sageattention: ModuleNotFoundError: No module named x"}\'',
     False, "sageattention: ModuleNotFoundError: No module named x (in "),
    ('echo \'{"sageattention": true, "cuda": false}\'', False, "torch.cuda.is_available() is False in "),
    ("echo 'Traceback ...' >&2; echo 'SyntaxError: bad' >&2; exit 1", False, "failed the probe (exit 1): SyntaxError: bad"),
    ("echo not json", False, "failed the probe (exit 0)"),
])
def test_attention_probe_reads_the_interpreters_answer(tmp_path, body, usable, reason):
    probe = workflows.probe_attention(fake_python(tmp_path, body))
    assert probe.usable is usable
    assert reason in probe.reason


def test_attention_probe_failures_are_reported_not_raised(tmp_path):
    missing = workflows.probe_attention(str(tmp_path / "no-such-python"))
    assert not missing.usable and "not found" in missing.reason
    slow = workflows.probe_attention(fake_python(tmp_path, "sleep 5"), timeout=0.5)
    assert not slow.usable and "did not answer the probe within 0.5 s" in slow.reason and slow.seconds < 3


def test_attention_probe_runs_the_real_probe_script():
    """The test interpreter has no SageAttention (and no CUDA): the real script says so instead of crashing."""
    probe = workflows.probe_attention(sys.executable)
    assert not probe.usable and ("sageattention" in probe.reason or "torch" in probe.reason), probe.reason


def test_attention_probe_runs_once_per_worker(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    python = fake_python(tmp_path, f"echo run >> {log}; echo '{{\"sageattention\": true, \"cuda\": true}}'")
    monkeypatch.setattr(workflows, "_probes", {})
    settings_ = load_settings({"COMFY_PYTHON": python})
    threads = [threading.Thread(target=workflows.resolve_attention, args=(settings_,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert workflows.resolve_attention(settings_) == "sageattn"
    assert log.read_text().splitlines() == ["run"]
    assert workflows.runtime_report(settings_)["attention_mode"] == {
        "setting": "auto", "resolved": "sageattn", "sageattention_usable": True, "probed_python": python,
        "reason": f"sageattention imports and CUDA is available in {python}",
        "probe_seconds": workflows._probes[python].seconds}


def test_runtime_report():
    report = workflows.runtime_report(load_settings({"TENEXA_ATTENTION": "sdpa", "TENEXA_BLOCKS_TO_SWAP": "99"}))
    assert report["attention_mode"] == {"setting": "sdpa", "resolved": "sdpa", "sageattention_usable": None,
                                        "reason": "set explicitly (TENEXA_ATTENTION)"}
    assert {"base_precision", "quantization", "load_device", "blocks_to_swap", "vae_precision", "text_encoder"} <= set(report)
    assert (report["max_window_frames"], report["max_latent_tokens"]) == (81, 75_600)
    assert any("TENEXA_BLOCKS_TO_SWAP" in p for p in report["problems"])


@pytest.mark.parametrize("quantization", ["disabled", "fp8_e4m3fn", "fp8_e4m3fn_scaled"])
def test_quantizations_that_keep_the_e4m3fn_weights_are_accepted(quantization):
    assert workflows.settings_problems(load_settings({"TENEXA_QUANTIZATION": quantization})) == []


@pytest.mark.parametrize("quantization", workflows.QUANTIZATIONS)
def test_exactly_the_precision_keeping_quantizations_pass(quantization):
    problems = workflows.settings_problems(load_settings({"TENEXA_QUANTIZATION": quantization}))
    assert (problems == []) is (quantization in workflows.KEPT_PRECISION_QUANTIZATIONS), problems


@pytest.mark.parametrize("quantization", ["fp8_e5m2", "fp8_e5m2_scaled", "fp8_e5m2_fast", "fp8_e5m2_scaled_fast"])
def test_e5m2_quantizations_are_refused_as_lossy(quantization):
    (problem,) = workflows.settings_problems(load_settings({"TENEXA_QUANTIZATION": quantization}))
    assert problem.startswith(f"TENEXA_QUANTIZATION={quantization}: ")
    assert "_fast" in quantization or "loses precision; use one of disabled, fp8_e4m3fn, fp8_e4m3fn_scaled" in problem


@pytest.mark.parametrize(("env", "message"), [
    ({"MAX_WINDOW_FRAMES": "80"}, "MAX_WINDOW_FRAMES=80 is not a 4n+1 frame count between 5 and 241"),
    ({"MAX_WINDOW_FRAMES": "245"}, "MAX_WINDOW_FRAMES=245 is not a 4n+1"),
    ({"MAX_LATENT_TOKENS": "31"}, "MAX_LATENT_TOKENS=31 is below the smallest window (32 tokens"),
])
def test_bad_window_settings_are_refused(env, message):
    assert any(message in p for p in workflows.settings_problems(load_settings(env)))
    with pytest.raises(ConfigError, match=list(env)[0]):
        bind(request(frames=5), settings_=load_settings(env))


def test_bind_refuses_windows_over_the_limits_naming_the_field():
    used = bind(request(frames=121), settings_=SETTINGS).used  # longer than a window (81): two windows, not a refusal
    assert used["segments"] == [61, 61] and used["frames"] == 121
    with pytest.raises(TenexaError) as info:
        bind(request(width=1920, height=1080))
    assert info.value.details["field"] == "width" and "MAX_LATENT_TOKENS" in info.value.message
    with pytest.raises(TenexaError) as info:  # no size given: the frames are what the caller chose
        bind(request(frames=81), image_size=(100, 100), settings_=load_settings({"MAX_LATENT_TOKENS": "20000"}))
    assert info.value.details["field"] == "frames" and "20,000" in info.value.message
    with pytest.raises(TenexaError) as info:  # a clip of windows: the longest window is what must fit
        bind(request(frames=161), image_size=(100, 100), settings_=load_settings({"MAX_LATENT_TOKENS": "20000"}))
    assert info.value.message.startswith("frames: the clip is made in 2 windows of up to 81 frames; ")
    big = load_settings({"MAX_WINDOW_FRAMES": "121", "MAX_LATENT_TOKENS": "252960"})  # exactly 1920x1088x121
    assert bind(request(frames=121, width=1920, height=1088), settings_=big).used["segments"] == [121]


# ---------------------------------------------------------------------------------- property test

text = st.text(alphabet=string.ascii_letters + " ,.", max_size=60)
requests_ = st.fixed_dictionaries(
    {"workflow": st.sampled_from(WORKFLOW_NAMES), "seed": st.integers(0, 2**53 - 1), "steps": st.integers(2, 100),
     "frames": st.integers(5, 241), "cfg": st.floats(1.0, 20.0), "cfg_low": st.floats(1.0, 20.0),
     "fps": st.floats(1.0, 60.0), "shift": st.floats(0.5, 50.0), "scheduler": st.sampled_from(SCHEDULERS),
     "prompt": text},
    optional={"width": st.integers(64, 1920), "height": st.integers(64, 1920), "negative_prompt": text,
              "lora_high": st.sampled_from(["none", "a.safetensors"]), "lora_low": st.sampled_from(["none", "b.safetensors"]),
              "lora_high_strength": st.floats(-10, 10), "lora_low_strength": st.floats(-10, 10),
              "resolution": st.sampled_from(RESOLUTIONS), "aspect_ratio": st.sampled_from(ASPECT_RATIOS),
              "interpolate": st.integers(1, 4), "adjust_fps_for_interpolation": st.booleans(),
              "codec": st.sampled_from(CODECS), "quality": st.sampled_from(QUALITY_PRESETS) | st.integers(0, 51),
              "return_last_frame": st.booleans()},
)
runtime = st.fixed_dictionaries({
    "TENEXA_ATTENTION": st.sampled_from(["sdpa", "sageattn", "comfy"]),
    "TENEXA_TEXT_ENCODER": st.sampled_from(["t5", "cache"]),
    "TENEXA_VAE_PRECISION": st.sampled_from(["bf16", "fp32"]),
    "TENEXA_BLOCKS_TO_SWAP": st.integers(0, 40).map(str),
})


# The invariants hold for every window the request format allows, so the limits are lifted here; the
# limits themselves are tested by test_bind_refuses_exactly_the_windows_over_the_limits.
UNLIMITED = {"MAX_WINDOW_FRAMES": "241", "MAX_LATENT_TOKENS": str(61 * 120 * 120)}


def request_or_skip(workflow, **fields):
    """A parsed request, or a skipped example when the shift puts a step on the expert boundary (tested in test_wan)."""
    try:
        return request(workflow, **fields)
    except TenexaError as err:
        assume("on the high/low expert boundary" not in err.message)
        raise


def _consistent(fields: dict) -> dict:
    """Drop the size fields a request may not combine (presets are an alternative to width/height)."""
    if "resolution" in fields:
        fields.pop("width", None)
        fields.pop("height", None)
    if "aspect_ratio" in fields and "width" in fields:
        fields.pop("height", None)
    return fields


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=requests_, env=runtime, image=st.tuples(st.integers(16, 4000), st.integers(16, 4000)),
       prefix=st.text(alphabet=string.ascii_lowercase + "_/", min_size=1, max_size=20),
       interpolator=st.sampled_from(["none", "rife", "ffmpeg"]))
def test_bound_graph_invariants(fields, env, image, prefix, interpolator):
    fields = _consistent(dict(fields))
    workflow = fields.pop("workflow")
    req = request_or_skip(workflow, **fields)
    bound = workflows.bind(req, image_size=image, settings=load_settings({**env, **UNLIMITED}), start_image="in/start.png",
                           end_image="in/end.png" if workflow == "flf2v" else None, output_prefix=prefix,
                           interpolator=interpolator)
    g, used = bound.graph, bound.used

    # the graph ComfyUI gets is valid for the pinned node packs
    assert validate(g, OBJECT_INFO) == []

    (encode,) = nodes_of(g, "WanVideoImageToVideoEncode").values()
    frames = encode["inputs"]["num_frames"]
    width, height = resolve(g, encode["inputs"]["width"]), resolve(g, encode["inputs"]["height"])
    assert frames % 4 == 1 and frames == used["frames"] and abs(frames - req.frames) <= 2
    assert width % 16 == 0 and height % 16 == 0 and (width, height) == (used["width"], used["height"])
    for resize in nodes_of(g, "ImageResizeKJv2").values():  # every image is cropped to the same size
        assert resize["inputs"]["width"] == encode["inputs"]["width"] and resize["inputs"]["height"] == encode["inputs"]["height"]
        assert resize["inputs"]["keep_proportion"] == "crop" and resize["inputs"]["divisible_by"] == 16

    high, low, high_id = samplers(g)
    for key in ("steps", "shift", "scheduler", "seed"):
        assert resolve(g, high["inputs"][key]) == resolve(g, low["inputs"][key]), key
    assert high["inputs"]["steps"] == low["inputs"]["steps"] and isinstance(high["inputs"]["steps"], list)  # one constant
    steps = resolve(g, high["inputs"]["steps"])
    split = resolve(g, high["inputs"]["end_step"])
    assert steps == req.steps == used["steps"]
    assert 0 < split < steps and split == used["high_steps"]
    assert high["inputs"]["start_step"] == 0 and low["inputs"]["end_step"] == -1
    assert low["inputs"]["start_step"] == high["inputs"]["end_step"]  # the same split constant
    assert resolve(g, high["inputs"]["seed"]) == req.seed
    assert low["inputs"]["add_noise_to_samples"] is False

    # each sampler runs its own expert
    loaders = nodes_of(g, "WanVideoModelLoader")
    high_loaders = [loaders[n]["inputs"]["model"] for n in upstream(g, high_id) if n in loaders]
    low_loaders = [loaders[n]["inputs"]["model"] for n in upstream(g, bound.low_sampler) - upstream(g, high_id) if n in loaders]
    assert len(high_loaders) == 1 and "HIGH" in high_loaders[0]
    assert len(low_loaders) == 1 and "LOW" in low_loaders[0]

    # CFG: a schedule linked to the steps constant, one value per step, cfg on the first HIGH step only
    cfg_node = g[high["inputs"]["cfg"][0]]
    assert cfg_node["class_type"] == "CreateCFGScheduleFloatList"
    assert cfg_node["inputs"]["steps"] == high["inputs"]["steps"]
    i = cfg_node["inputs"]
    schedule = cfg_schedule(steps, i["cfg_scale_start"], i["cfg_scale_end"], i["start_percent"], i["end_percent"])
    assert len(schedule) == steps and schedule[0] == req.cfg and schedule[1:] == [1.0] * (steps - 1)
    assert low["inputs"]["cfg"] == req.cfg_low

    # images: the start image always, the end image only in flf2v, both under the given names
    images = {n["inputs"]["image"] for n in nodes_of(g, "LoadImage").values()}
    if workflow == "flf2v":
        assert images == {"in/start.png", "in/end.png"} and isinstance(encode["inputs"]["end_image"], list)
        assert g[g[encode["inputs"]["end_image"][0]]["inputs"]["image"][0]]["inputs"]["image"] == "in/end.png"
    else:
        assert images == {"in/start.png"} and "end_image" not in encode["inputs"]
    assert g[g[encode["inputs"]["start_image"][0]]["inputs"]["image"][0]]["inputs"]["image"] == "in/start.png"

    # the video node: the asked codec at the asked quality, or a lossless intermediate for the worker to finish
    (vhs,) = nodes_of(g, "VHS_VideoCombine").values()
    fmt = formats.video_format(req.codec)
    multiplier = req.interpolate if interpolator != "none" else 1
    out_fps = req.fps * multiplier if req.adjust_fps_for_interpolation else req.fps
    assert vhs["inputs"]["filename_prefix"] == prefix
    assert (used["codec"], used["container"], used["crf"]) == (req.codec, fmt.container, fmt.crf(req.quality))
    assert used["output_fps"] == out_fps and used["output_frames"] == (frames - 1) * multiplier + 1
    rife_nodes = nodes_of(g, "RIFE VFI")
    if interpolator == "ffmpeg":
        assert (vhs["inputs"]["format"], vhs["inputs"]["pix_fmt"], vhs["inputs"]["frame_rate"]) == ("video/ffv1-mkv", "bgra", req.fps)
        assert "crf" not in vhs["inputs"] and not rife_nodes
        assert (bound.finish.multiplier, bound.finish.fps, bound.finish.crf) == (multiplier, out_fps, used["crf"])
    else:
        assert (vhs["inputs"]["format"], vhs["inputs"]["pix_fmt"]) == (fmt.vhs_format, "yuv420p")
        assert vhs["inputs"]["crf"] == used["crf"] and vhs["inputs"]["frame_rate"] == out_fps and bound.finish is None
        assert len(rife_nodes) == (interpolator == "rife")
    frames_in = vhs["inputs"]["images"]
    if rife_nodes:
        (rife_id, rife), = rife_nodes.items()
        assert frames_in == [rife_id, 0] and rife["inputs"]["multiplier"] == req.interpolate
        frames_in = rife["inputs"]["frames"]
    assert g[frames_in[0]]["class_type"] == "WanVideoDecode"
    saves = nodes_of(g, "SaveImage")
    assert bool(saves) == req.return_last_frame == (bound.last_frame_node is not None)
    if saves:  # the last frame of exactly what the video node receives
        (save,) = saves.values()
        pick = g[save["inputs"]["images"][0]]
        assert pick["class_type"] == "ImageFromBatch" and pick["inputs"]["image"] == vhs["inputs"]["images"]

    # the size: presets and aspect ratio, the start image centre-cropped to it
    aspect = wan.ASPECT_RATIOS.get(req.aspect_ratio) if req.aspect_ratio not in (None, "auto") else None
    if aspect is not None and (req.width is None or req.height is None) and min(width, height) > 64 and max(width, height) < 1920:
        # each side is rounded to a multiple of 16 (by at most 8 px): that is all the shape may be off by
        assert abs(width - height * aspect) <= 8 * (1 + aspect)
    x, y, w, h = (used["crop"][k] for k in ("x", "y", "width", "height"))
    assert 0 <= x and 0 <= y and x + w <= image[0] and y + h <= image[1] and abs(x - (image[0] - x - w)) <= 1
    assert used["attention_mode"] == env["TENEXA_ATTENTION"]
    assert bool(nodes_of(g, "LoadWanVideoT5TextEncoder")) == (env["TENEXA_TEXT_ENCODER"] == "t5")
    assert split == wan.expert_split(steps, req.shift, req.scheduler)  # the split of the scheduler that runs


@settings(max_examples=150, deadline=None)
@given(frames=st.integers(5, 241), size=st.tuples(st.integers(64, 1920), st.integers(64, 1920)) | st.none(),
       image=st.tuples(st.integers(16, 4000), st.integers(16, 4000)),
       limits=st.tuples(st.integers(1, 60).map(lambda n: 4 * n + 1), st.integers(32, 400_000)))
def test_bind_refuses_exactly_the_windows_over_the_token_budget(frames, size, image, limits):
    max_frames, max_tokens = limits
    settings_ = load_settings({"MAX_WINDOW_FRAMES": str(max_frames), "MAX_LATENT_TOKENS": str(max_tokens),
                               "TENEXA_ATTENTION": "sdpa"})
    req = request(frames=frames, **({"width": size[0], "height": size[1]} if size else {}))
    width, height = wan.output_size(image, *(size or (None, None)))
    longest = max(wan.plan_segments(wan.fit_frames(frames), max_frames))  # a clip longer than a window is windows
    over = wan.window_tokens(longest, width, height) > max_tokens
    try:
        used = bind(req, image_size=image, settings_=settings_).used
    except TenexaError as err:
        assert over and err.code is ErrorCode.INVALID_INPUT
        assert "MAX_LATENT_TOKENS" in err.message and "\n" not in err.message
    else:
        assert not over and max(used["segments"]) <= max_frames
        assert wan.window_tokens(max(used["segments"]), used["width"], used["height"]) <= max_tokens


# ---------------------------------------------------------------------------------- node ids live in one place


def _node_ids() -> set[str]:
    ids: set[str] = set()
    for name in workflows.WORKFLOWS:
        ids |= set(workflows.load_graph(name))
    return ids


def test_no_node_id_literal_outside_workflows_py():
    """Node ids belong in the binding table: no string constant equal to a node id (or "id.input") elsewhere."""
    ids = _node_ids()
    offenders = []
    for path in sorted((REPO_ROOT / "tenexa").rglob("*.py")) + [REPO_ROOT / "handler.py"]:
        if path.name == "workflows.py" or not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                head = node.value.split(".", 1)[0]
                if head in ids and (node.value == head or node.value[len(head) + 1:].isidentifier()):
                    offenders.append(f"{Path(path).relative_to(REPO_ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []
