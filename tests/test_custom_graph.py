"""Confining a caller's graph to one job (tenexa/custom_graph.py), against recorded ComfyUI 0.8.0 node schemas."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenexa.custom_graph import Limits, check_shape, confine
from tenexa.errors import ErrorCode, TenexaError
from tenexa.workspace import JobWorkspace

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCHEMA = json.loads((FIXTURES / "comfyui" / "object_info_custom.json").read_text())
EXPORTED = json.loads((FIXTURES / "custom" / "core_video_api.json").read_text())
UI_FORMAT = json.loads((FIXTURES / "custom" / "core_video_ui.json").read_text())
JOB = "tenexa/job-0123456789"
LIMITS = Limits(max_nodes=500, max_batch=1024, max_pixels=600_000_000)


def run(graph, images=("input.png",), limits=LIMITS):
    check_shape(graph, limits)
    return confine(graph, SCHEMA, image_names=list(images), job_folder=JOB, limits=limits)


def refused(graph, images=("input.png",), limits=LIMITS) -> TenexaError:
    with pytest.raises(TenexaError) as info:
        run(graph, images, limits)
    assert "\n" not in info.value.message
    return info.value


def exported(**changes) -> dict:
    """The exported graph with {node id: {input: value}} changes (None removes the input)."""
    graph = copy.deepcopy(EXPORTED)
    for node_id, inputs in changes.items():
        for name, value in inputs.items():
            if value is None:
                graph[node_id]["inputs"].pop(name, None)
            else:
                graph[node_id]["inputs"][name] = value
    return graph


def with_node(graph: dict, node_id: str, class_type: str, **inputs) -> dict:
    graph = copy.deepcopy(graph)
    graph[node_id] = {"class_type": class_type, "inputs": inputs}
    return graph


def test_exported_graph_is_confined_to_the_job():
    original = copy.deepcopy(EXPORTED)
    out = run(EXPORTED)
    g = out.graph
    assert EXPORTED == original  # the caller's object is not modified
    assert g["10"]["inputs"]["image"] == f"{JOB}/image_0.png" and out.uploads == {"input.png": "image_0.png"}
    assert g["14"]["inputs"]["filename_prefix"] == f"{JOB}/video/ComfyUI"
    assert g["15"]["inputs"]["filename_prefix"] == f"{JOB}/ComfyUI"
    assert out.removed == ["16"] and "16" not in g
    assert g["14"]["_meta"] == {"title": "Save Video"}  # everything else passes through unchanged
    assert {k: v for k, v in g["11"].items()} == EXPORTED["11"]


def test_ui_format_is_refused_with_export_instructions():
    err = refused(UI_FORMAT)
    assert err.code is ErrorCode.INVALID_WORKFLOW
    assert "UI-format" in err.message and "Workflow > Export (API)" in err.message


@pytest.mark.parametrize("graph, needle", [
    ([1, 2], "non-empty API-format graph"),
    ({}, "non-empty API-format graph"),
    ({"1": "LoadImage"}, "node 1 is not an object"),
    ({"1": {"inputs": {}}}, "node 1 is not an object"),
    ({"prompt": EXPORTED, "client_id": "abc"}, "send its 'prompt' object"),
])
def test_shapeless_graphs_are_invalid(graph, needle):
    err = refused(graph)
    assert err.code is ErrorCode.INVALID_WORKFLOW and needle in err.message


def test_unknown_class_names_node_and_class():
    graph = copy.deepcopy(EXPORTED)
    graph["12"]["class_type"] = "WanVideoEnhancedBlockSwap"
    err = refused(graph)
    assert err.code is ErrorCode.INVALID_WORKFLOW
    assert "node 12 (WanVideoEnhancedBlockSwap)" in err.message and "unknown_class" in err.message
    assert err.details["node_errors"]["12"]["errors"][0]["type"] == "unknown_class"


def test_missing_required_input_and_bad_values_name_the_input():
    err = refused(exported(**{"12": {"amount": None}, "11": {"upscale_method": "sharpest"}}))
    assert err.code is ErrorCode.INVALID_WORKFLOW
    assert "node 12 (RepeatImageBatch) input amount: required input is missing" in err.message
    assert "node 11 (ImageScale) input upscale_method: 'sharpest' not in" in err.message


def test_model_files_not_installed_are_model_missing():
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    err = refused(graph)
    assert err.code is ErrorCode.MODEL_MISSING and "sd_xl_base_1.0.safetensors" in err.message


def test_graph_of_previews_only_says_why_it_has_no_output():
    graph = {k: v for k, v in EXPORTED.items() if k in ("10", "16")}
    err = refused(graph)
    assert err.code is ErrorCode.INVALID_WORKFLOW and "preview nodes" in err.message and "SaveImage" in err.message


def test_cycle_is_named():
    graph = exported(**{"11": {"image": ["12", 0]}})
    err = refused(graph)
    assert err.code is ErrorCode.INVALID_WORKFLOW and "cycle" in err.message and "11" in err.message and "12" in err.message


# ------------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("name", [
    "../../../etc/passwd", "/etc/passwd", "tenexa/other-job-abc/start.png", "input.png [output]", "input.png [temp]",
    "..\\input.png", "C:\\input.png", ".hidden.png", "sub/input.png",
])
def test_load_image_paths_are_refused(name):
    err = refused(exported(**{"10": {"image": name}}))
    assert err.code is ErrorCode.WORKFLOW_NOT_ALLOWED
    assert "node 10 (LoadImage) input image" in err.message and "only load the images it sends" in err.message


def test_load_image_of_an_image_not_sent_is_no_image():
    err = refused(exported(**{"10": {"image": "other.png"}}), images=("input.png", "ref.png"))
    assert err.code is ErrorCode.NO_IMAGE
    assert "'other.png', which is not among the request's images (sent: 'input.png', 'ref.png')" in err.message


def test_load_image_from_a_link_is_refused():
    graph = with_node(exported(**{"10": {"image": ["99", 0]}}), "99", "PrimitiveInt", value=1)
    assert refused(graph).code is ErrorCode.WORKFLOW_NOT_ALLOWED


def test_every_image_upload_input_is_rewritten_and_shared_names_upload_once():
    graph = with_node(EXPORTED, "20", "LoadImageMask", image="input.png", channel="alpha")
    graph = with_node(graph, "21", "LoadImage", image="ref.png")
    graph = with_node(graph, "22", "ImageBatch", image1=["10", 0], image2=["21", 0])
    graph = with_node(graph, "23", "SaveImage", images=["22", 0], filename_prefix="batch")
    graph = with_node(graph, "24", "SaveImage", images=["11", 0], filename_prefix="mask")
    out = run(graph, images=("input.png", "ref.png", "unused.png"))
    assert out.uploads == {"input.png": "image_0.png", "ref.png": "image_1.png"}
    assert out.graph["20"]["inputs"]["image"] == out.graph["10"]["inputs"]["image"] == f"{JOB}/image_0.png"
    assert out.graph["21"]["inputs"]["image"] == f"{JOB}/image_1.png"


# ----------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("prefix", [
    "../escape", "../../../../tmp/x", "/tmp/x", "~/x", "a/../../b", "C:\\x", "..\\..\\x", "x\x00y", "x\ny", "a" * 201,
])
def test_escaping_prefixes_are_refused(prefix):
    err = refused(exported(**{"15": {"filename_prefix": prefix}}))
    assert err.code is ErrorCode.WORKFLOW_NOT_ALLOWED and "node 15 (SaveImage) input filename_prefix" in err.message


@pytest.mark.parametrize("prefix, confined", [
    ("", "ComfyUI"), ("./a//b/", "a/b"), ("a\\b", "a/b"), ("%year%-%month%/img", "%year%-%month%/img"),
    ("tenexa/other-job/x", "tenexa/other-job/x"), ("...x", "...x"),
])
def test_relative_prefixes_stay_inside_the_job_folder(prefix, confined):
    assert run(exported(**{"15": {"filename_prefix": prefix}})).graph["15"]["inputs"]["filename_prefix"] == f"{JOB}/{confined}"


def test_prefix_from_a_link_is_refused():
    graph = with_node(exported(**{"15": {"filename_prefix": ["99", 0]}}), "99", "PrimitiveInt", value=1)
    assert refused(graph).code is ErrorCode.WORKFLOW_NOT_ALLOWED


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab./\\~:%C \x00")), max_size=24))
def test_no_prefix_ever_leaves_the_job_folder(prefix):
    """What ComfyUI does with the prefix (folder_paths.get_save_image_path: normpath, then join under the output
    folder) always lands inside the job's folder, or the graph is refused."""
    try:
        out = run(exported(**{"15": {"filename_prefix": prefix}}))
    except TenexaError as err:
        assert err.code is ErrorCode.WORKFLOW_NOT_ALLOWED
        return
    final = out.graph["15"]["inputs"]["filename_prefix"]
    output_dir = "/ComfyUI/output"
    folder = os.path.abspath(os.path.join(output_dir, os.path.dirname(os.path.normpath(final))))
    assert os.path.commonpath([folder, f"{output_dir}/{JOB}"]) == f"{output_dir}/{JOB}"


def test_websocket_saver_becomes_a_file_saver_in_the_job_folder():
    graph = {k: v for k, v in EXPORTED.items() if k in ("10", "11")}
    graph = with_node(graph, "30", "SaveImageWebsocket", images=["11", 0])
    out = run(graph)
    assert out.graph["30"] == {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": f"{JOB}/ComfyUI"}}


def test_vhs_metadata_file_is_turned_off():
    graph = with_node(EXPORTED, "40", "VHS_VideoCombine", images=["12", 0], frame_rate=8, loop_count=0, filename_prefix="vhs",
                      format="video/h264-mp4", pix_fmt="yuv420p", crf=19, save_metadata=True, trim_to_audio=False,
                      pingpong=False, save_output=True)
    node = run(graph).graph["40"]["inputs"]
    assert node["save_metadata"] is False and node["filename_prefix"] == f"{JOB}/vhs"


def test_wan_text_embedding_disk_cache_is_turned_off():
    schema = copy.deepcopy(SCHEMA)
    schema["WanVideoTextEncodeCached"]["input"]["required"]["model_name"][0] = ["umt5-xxl-enc-bf16.safetensors"]
    graph = with_node(EXPORTED, "70", "WanVideoTextEncodeCached", model_name="umt5-xxl-enc-bf16.safetensors", precision="bf16",
                      positive_prompt="a cat", negative_prompt="", quantization="disabled", device="cpu")
    for sent in (True, None):  # on, and left to the node's default
        graph["70"]["inputs"].pop("use_disk_cache", None)
        if sent is not None:
            graph["70"]["inputs"]["use_disk_cache"] = sent
        out = confine(graph, schema, image_names=["input.png"], job_folder=JOB, limits=LIMITS)
        assert out.graph["70"]["inputs"]["use_disk_cache"] is False


# ---------------------------------------------------------------------------------------- refused nodes


@pytest.mark.parametrize("class_type, inputs, reason", [
    ("CheckpointSave", {"filename_prefix": "x"}, "writes model weights"),
    ("SaveLoRA", {"prefix": "x", "steps": 1}, "shared models folder"),
    ("VHS_LoadVideo", {"video": "clip.mp4"}, "reads files from ComfyUI's input folder"),
    ("VHS_LoadVideoPath", {"video": "/etc/hosts"}, "any filesystem path or URL"),
    ("LoadVideo", {"file": "clip.mp4"}, "video_upload"),
    ("LoadImageOutput", {"image": "ComfyUI_00001_.png [output]"}, "from another folder"),
    ("SaveImageKJ", {"images": ["11", 0], "filename_prefix": "x", "output_folder": "/tmp"}, "names a path"),
    ("LoadImagesFromFolderKJ", {"folder": "/etc"}, "names a path"),
    ("TripoTextToModelNode", {"prompt": "a cat"}, "paid outside service"),
    ("DownloadAndLoadCLIPSeg", {"model": "x"}, "downloads weights"),
    ("LoadImageDataSetFromFolder", {"folder": "3d"}, "whole folders"),
    ("DiTBlockLoraLoader", {"opt_lora_path": ["99", 0]}, "names a path"),
])
def test_nodes_that_reach_files_are_refused(class_type, inputs, reason):
    err = refused(with_node(EXPORTED, "50", class_type, **inputs))
    assert err.code is ErrorCode.WORKFLOW_NOT_ALLOWED
    assert f"node 50 ({class_type}) is not allowed" in err.message and reason in err.message


def test_optional_path_input_left_empty_is_allowed():
    graph = with_node(EXPORTED, "50", "DiTBlockLoraLoader", model=["51", 0], strength_model=1.0)
    graph = with_node(graph, "51", "CheckpointLoaderSimple", ckpt_name="m.safetensors")
    err = refused(graph)  # allowed by the policy; the schema check then names the missing model file
    assert err.code is ErrorCode.MODEL_MISSING


# ------------------------------------------------------------------------------------------------ limits


def test_too_many_nodes():
    err = refused(EXPORTED, limits=Limits(max_nodes=5, max_batch=1024, max_pixels=10**9))
    assert err.code is ErrorCode.WORKFLOW_TOO_LARGE and "7 nodes" in err.message and "CUSTOM_WORKFLOW_MAX_NODES" in err.message


def test_huge_empty_image_batch():
    graph = with_node(EXPORTED, "60", "EmptyImage", width=4096, height=4096, batch_size=4096, color=0)
    graph = with_node(graph, "61", "SaveImage", images=["60", 0], filename_prefix="x")
    err = refused(graph)
    assert err.code is ErrorCode.WORKFLOW_TOO_LARGE
    assert "node 60 (EmptyImage) would make about 4096 images" in err.message and "CUSTOM_WORKFLOW_MAX_PIXELS" in err.message


def test_chained_repeats_multiply_and_constants_are_followed():
    graph = with_node(EXPORTED, "62", "RepeatImageBatch", image=["12", 0], amount=["63", 0])
    graph = with_node(graph, "63", "PrimitiveInt", value=200)
    graph = with_node(graph, "64", "SaveImage", images=["62", 0], filename_prefix="x")
    err = refused(graph)
    assert err.code is ErrorCode.WORKFLOW_TOO_LARGE and "node 62 (RepeatImageBatch) would make about 1800" in err.message
    assert "node 64 (SaveImage) would make about 1800" in err.message


def test_scaling_a_long_batch_counts_pixels():
    graph = exported(**{"12": {"amount": 1000}, "11": {"width": 1024, "height": 1024}})
    graph = with_node(graph, "65", "ImageScale", image=["12", 0], upscale_method="bilinear", width=1024, height=1024, crop="center")
    graph = with_node(graph, "66", "SaveImage", images=["65", 0], filename_prefix="x")
    err = refused(graph)
    assert "node 65 (ImageScale) would make 1000 x 1024x1024" in err.message


def test_limits_leave_ordinary_graphs_alone():
    graph = exported(**{"12": {"amount": 241}, "11": {"width": 1280, "height": 720}})
    assert run(graph).graph["12"]["inputs"]["amount"] == 241


def test_workspace_holds_only_its_own_subfolders():
    ws = JobWorkspace(Path("/nonexistent"), "job")
    try:
        assert ws.holds(ws.subfolder) and ws.holds(f"{ws.subfolder}/video/x")
        assert not ws.holds("") and not ws.holds("tenexa") and not ws.holds(f"{ws.subfolder}x")
        assert not ws.holds(f"{ws.subfolder}/../other") and not ws.holds("tenexa/other-job")
    finally:
        ws.cleanup()
