"""The offline validator: shipped workflows pass; each kind of corruption is named by node, class and input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from tenexa import workflows
from tenexa.config import REPO_ROOT
from tenexa.validator import DEFAULT_OBJECT_INFO, Problem, is_ui_format, load_object_info, validate

OBJECT_INFO = load_object_info()
CLI = REPO_ROOT / "scripts" / "validate_workflow.py"


def graph(name: str = "flf2v") -> dict:
    return workflows.load_graph(name)


def codes(problems: list[Problem]) -> set[tuple[str | None, str | None, str]]:
    return {(p.node, p.input, p.code) for p in problems}


def find(g: dict, class_type: str, predicate=lambda n: True) -> str:
    return next(nid for nid, n in g.items() if n["class_type"] == class_type and predicate(n))


def high_sampler(g: dict) -> str:
    return find(g, "WanVideoSampler", lambda n: "samples" not in n["inputs"])


@pytest.mark.parametrize("name", sorted(workflows.WORKFLOWS))
def test_shipped_workflows_validate(name):
    assert validate(graph(name), OBJECT_INFO) == []


def test_recorded_object_info_is_stamped_and_covers_every_class():
    data = json.loads(DEFAULT_OBJECT_INFO.read_text())
    stamp = data["recorded"]
    assert stamp["comfyui_version"] == "0.8.0"
    assert stamp["comfyui_commit"].startswith("3cd7b32f")
    for key in ("wanvideowrapper_commit", "vhs_commit", "kjnodes_commit", "frame_interpolation_commit"):
        assert len(stamp[key]) == 40
    selftest = {"LoadImage", "ImageScale", "RepeatImageBatch", "VHS_VideoCombine", "SaveVideo", "CreateVideo"}
    assert set(workflows.required_classes()) | set(workflows.ADDED_CLASSES) | selftest <= set(OBJECT_INFO)


def test_stamp_matches_stack_lock():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from record_object_info import read_stack_lock

    lock = REPO_ROOT / "stack.lock"
    stamp = json.loads(DEFAULT_OBJECT_INFO.read_text())["recorded"]
    for key, value in read_stack_lock(lock).items():
        assert stamp[key] == value, key


def test_unknown_class_is_named():
    g = graph()
    swap = find(g, "WanVideoBlockSwap")
    g[swap]["class_type"] = "WanVideoEnhancedBlockSwap"  # the original workflow's defect
    problems = validate(g, OBJECT_INFO)
    assert (swap, None, "unknown_class") in codes(problems)
    assert any(f"node {swap} (WanVideoEnhancedBlockSwap)" in str(p) for p in problems)


def test_ui_format_is_recognised():
    ui = {"last_node_id": 3, "nodes": [{"id": 1, "type": "LoadImage", "widgets_values": ["a.png"]}], "links": [], "version": 0.4}
    assert is_ui_format(ui)
    (problem,) = validate(ui, OBJECT_INFO)
    assert problem.code == "ui_format" and "Export (API)" in problem.message


@pytest.mark.parametrize(("field", "value", "code"), [
    ("shift", -1.0, "value_smaller_than_min"),
    ("shift", 5000.0, "value_bigger_than_max"),
    ("scheduler", "ddim", "value_not_in_list"),
    ("seed", "abc", "invalid_input_type"),
    ("seed", 1.5, "invalid_input_type"),
    ("force_offload", "yes", "invalid_input_type"),
    ("cfg", "high", "invalid_input_type"),
    ("model", "Wan2_2.safetensors", "literal_for_link_input"),
])
def test_bad_literal_is_named(field, value, code):
    g = graph()
    nid = high_sampler(g)
    g[nid]["inputs"][field] = value
    problems = validate(g, OBJECT_INFO)
    assert (nid, field, code) in codes(problems)
    assert any(str(p).startswith(f"node {nid} (WanVideoSampler) input {field}:") for p in problems)


def test_required_input_missing():
    g = graph()
    nid = high_sampler(g)
    del g[nid]["inputs"]["seed"]
    assert (nid, "seed", "required_input_missing") in codes(validate(g, OBJECT_INFO))


def test_dangling_link_bad_slot_and_type_mismatch():
    g = graph()
    encode = find(g, "WanVideoImageToVideoEncode")
    decode = find(g, "WanVideoDecode")
    loader = find(g, "WanVideoModelLoader")
    vae = find(g, "WanVideoVAELoader")
    g[encode]["inputs"]["vae"] = ["999", 0]
    g[decode]["inputs"]["vae"] = [loader, 0]  # a WANVIDEOMODEL into a WANVAE input
    g[decode]["inputs"]["samples"] = [vae, 3]
    g[encode]["inputs"]["start_image"] = ["171"]  # malformed
    found = codes(validate(g, OBJECT_INFO))
    assert {(encode, "vae", "link_to_missing_node"), (decode, "vae", "return_type_mismatch"),
            (decode, "samples", "link_bad_slot"), (encode, "start_image", "bad_linked_input")} <= found


def test_dead_node_is_named():
    g = graph()
    decode = find(g, "WanVideoDecode")
    g["130"] = copy.deepcopy(g[decode])  # the original's second decode that feeds nothing
    assert ("130", None, "dead_node") in codes(validate(g, OBJECT_INFO))


def test_no_output_node():
    g = graph()
    g.pop(find(g, "VHS_VideoCombine"))
    assert (None, None, "prompt_no_outputs") in codes(validate(g, OBJECT_INFO))


def test_missing_class_type_and_inputs():
    g = graph()
    g["900"] = {"inputs": {}}
    g["901"] = {"class_type": "INTConstant"}
    found = codes(validate(g, OBJECT_INFO))
    assert ("900", None, "missing_class_type") in found and ("901", None, "missing_inputs") in found


def test_undeclared_literal_and_format_widgets():
    g = graph()
    resize = find(g, "ImageResizeKJv2")
    vhs = find(g, "VHS_VideoCombine")
    g[resize]["inputs"]["per_batch"] = 0  # dropped by ComfyUI at the pinned KJNodes commit
    g[vhs]["inputs"]["pix_fmt"] = "rgb24"  # not an h264-mp4 pixel format
    g[vhs]["inputs"]["crf"] = 101
    found = codes(validate(g, OBJECT_INFO))
    assert {(resize, "per_batch", "undeclared_input"), (vhs, "pix_fmt", "value_not_in_list"),
            (vhs, "crf", "value_bigger_than_max")} <= found


def test_model_files_are_checked_only_when_asked():
    g = graph()
    assert validate(g, OBJECT_INFO, check_files=True) != []
    missing = {(p.node, p.input) for p in validate(g, OBJECT_INFO, check_files=True)}
    assert all(p.code == "model_file_missing" for p in validate(g, OBJECT_INFO, check_files=True))
    assert (find(g, "WanVideoVAELoader"), "model_name") in missing
    # a live listing that has the files passes
    live = copy.deepcopy(OBJECT_INFO)
    for folder_class, inputs in workflows.MODEL_INPUTS.items():
        for input_name in inputs:
            section = "required" if input_name in live[folder_class]["input"]["required"] else "optional"
            spec = live[folder_class]["input"][section][input_name]
            refs = [f for files in workflows.model_references("flf2v").values() for f in files]
            spec[0] = sorted(set(spec[0]) | set(refs))
    assert validate(g, live, check_files=True) == []


def test_original_workflow_defects_are_caught():
    """The seed's FLF2V graph (shape of shared/reference/original-workflow), rebuilt from ours."""
    g = graph()
    swap = find(g, "WanVideoBlockSwap")
    g[swap] = {"class_type": "WanVideoEnhancedBlockSwap", "inputs": {"blocks_to_swap": 0}}
    g["130"] = copy.deepcopy(g[find(g, "WanVideoDecode")])
    found = {p.code for p in validate(g, OBJECT_INFO)}
    assert {"unknown_class", "dead_node"} <= found


def test_not_a_workflow():
    assert validate([], OBJECT_INFO)[0].code == "invalid_workflow"
    assert validate({}, OBJECT_INFO)[0].code == "prompt_no_outputs"


def test_load_object_info_accepts_a_raw_dump(tmp_path):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(OBJECT_INFO))
    assert load_object_info(raw) == OBJECT_INFO


# ---------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), *args], capture_output=True, text=True, timeout=60)


def test_cli_accepts_the_shipped_workflows():
    proc = run_cli(*(str(workflows.workflow_path(n)) for n in workflows.WORKFLOWS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok (") == 2


def test_cli_reports_one_line_per_problem(tmp_path):
    g = graph()
    nid = high_sampler(g)
    g[nid]["inputs"]["shift"] = -3
    g[nid]["inputs"]["scheduler"] = "nope"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(g))
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    proc = run_cli(str(bad), str(ui), str(broken))
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert f"{bad}: node {nid} (WanVideoSampler) input shift: -3 is smaller than the minimum 0.0 [value_smaller_than_min]" in lines
    assert any(line.startswith(f"{bad}: node {nid} (WanVideoSampler) input scheduler:") for line in lines)
    assert any(line.startswith(f"{ui}: ") and "UI-format" in line for line in lines)
    assert any(line.startswith(f"{broken}: cannot read as JSON") for line in lines)


def test_cli_check_files_needs_a_live_server():
    proc = run_cli("--check-files", str(workflows.workflow_path("flf2v")))
    assert proc.returncode == 2 and "--url" in proc.stderr


def test_format_widgets_match_the_recorded_video_node():
    """formats.VHS_WIDGETS (what bind keeps on the video node) is what the pinned VHS declares per format."""
    from tenexa import formats

    spec = OBJECT_INFO["VHS_VideoCombine"]["input"]["required"]["format"]
    recorded = spec[1]["formats"]
    for vhs_format, widgets in formats.VHS_WIDGETS.items():
        assert vhs_format in spec[0]
        assert tuple(w[0] for w in recorded[vhs_format]) == widgets, vhs_format
    for name, value in formats.LOSSLESS_WIDGETS.items():
        (widget,) = [w for w in recorded[formats.LOSSLESS_VHS_FORMAT] if w[0] == name]
        assert value in widget[1] if isinstance(widget[1], list) else widget[1] == "INT", name
