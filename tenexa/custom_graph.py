"""Confine a caller's own API-format graph to one job: what it may load, where it may write, how big it may get.

A custom workflow can name any node class ComfyUI has installed, so the graph is checked against the live
node schemas (``/object_info``) and rewritten before it is submitted:

- **Inputs.** An input flagged ``image_upload`` (LoadImage, LoadImageMask, KJNodes' LoadAndResizeImage, any
  future node flagged the same) must name one of the request's images, by its exact ``name``; it is rewritten
  to the file uploaded into the job's input folder. Any other file name (another job's file, an absolute path,
  ``..``, ComfyUI's ``[output]``/``[temp]`` annotations) is refused.
- **Refused nodes.** Nodes that read or write files this worker cannot confine: inputs that upload other media
  (video, audio, 3D) or read another folder (LoadImageOutput), VideoHelperSuite path widgets (any path or URL),
  STRING inputs that name a path, folder, file or URL, the classes in ``DENIED_CLASSES`` (model and LoRA
  writers, loaders of input-folder videos/latents/folders, file deletion), classes that download weights, and
  ComfyUI's API nodes (paid calls to outside services).
- **Outputs.** Every ``filename_prefix`` moves under the job's output folder (``tenexa/<job>/<prefix>``), so
  ComfyUI writes nothing elsewhere and cleanup removes it; a prefix that is absolute, climbs with ``..``, or is
  not a literal string is refused. Preview nodes (PreviewImage and kin write unnamed files into ComfyUI's
  shared temp folder, for an editor nobody watches) are removed; ``SaveImageWebsocket`` (frames over the
  socket, which this worker does not read) becomes ``SaveImage``; VideoHelperSuite's ``save_metadata`` (a
  shared ``temp/metadata.txt``) and WanVideoWrapper's ``use_disk_cache`` (embedding files in the pack's
  folder) are turned off.
- **Limits.** At most ``max_nodes`` nodes; no node may make more than ``max_batch`` images or frames
  (``batch_size``, ``length``, ``num_frames``... set a count, ``amount``/``multiplier`` multiply what flows
  in) nor more than ``max_pixels`` width x height x count. Counts are followed through links, so chained
  RepeatImageBatch nodes add up; values computed at run time (math nodes) cannot be known here: the
  execution timeout and ComfyUI's own errors bound those.

Pure functions of the graph and the schema: nothing here talks to ComfyUI.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenexa import validator
from tenexa.errors import ErrorCode, TenexaError
from tenexa.validator import literal_int

DEFAULT_PREFIX = "ComfyUI"
MAX_PREFIX_CHARS = 200
MAX_LISTED_PROBLEMS = 5

PREVIEW_CLASSES = frozenset({
    "PreviewImage", "MaskPreview", "PreviewAudio", "PreviewAny", "Preview3D",  # core
    "PreviewAnimation", "ImageAndMaskPreview", "FastPreview",  # KJNodes
})
CONVERTED_CLASSES = {"SaveImageWebsocket": "SaveImage"}
NEUTRALISED_INPUTS = {"VHS_VideoCombine": {"save_metadata": False}}  # only where the graph sets it (a format widget)
# Inputs set wherever a node declares them: WanVideoWrapper's text encoders cache embeddings as files in
# their own pack folder (outside every job folder, kept forever) when use_disk_cache is on.
FORCED_INPUTS = {"use_disk_cache": False}

DENIED_CLASSES: dict[str, str] = {
    **dict.fromkeys(
        ("CheckpointSave", "ModelSave", "VAESave", "CLIPSave", "ImageOnlyCheckpointSave", "LoraSave", "ModelSaveKJ",
         "LoraExtractKJ"),
        "writes model weights (gigabytes), which this worker does not return",
    ),
    **dict.fromkeys(("SaveLoRA", "LoraReduceRankKJ"), "writes into the shared models folder, where files outlive the job"),
    **dict.fromkeys(
        ("VHS_LoadVideo", "VHS_LoadVideoFFmpeg", "VHS_LoadImages", "VHS_LoadAudioUpload", "LoadLatent", "WebcamCapture"),
        "reads files from ComfyUI's input folder by name; a custom workflow can only load the images it sends",
    ),
    "VHS_PruneOutputs": "deletes files",
}
DENIED_MODULE_PREFIXES: dict[str, str] = {
    "comfy_api_nodes": "calls a paid outside service",
    "comfy_extras.nodes_dataset": "reads or writes whole folders",
    "comfy_extras.nodes_train": "trains and saves models",
}
PATH_WORDS = frozenset({"path", "paths", "folder", "directory", "dir", "file", "url", "uri"})
COUNT_INPUTS = frozenset({"batch_size", "length", "num_frames", "frames", "frame_count", "video_length"})
MULTIPLIER_INPUTS = frozenset({"amount", "multiplier"})
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    max_nodes: int
    max_batch: int
    max_pixels: int


@dataclass
class ConfinedGraph:
    graph: dict[str, Any]
    uploads: dict[str, str]  # request image name -> file name in the job's input folder
    removed: list[str] = field(default_factory=list)  # preview node ids taken out


def _refuse(code: ErrorCode, problems: list[str], node_errors: dict | None = None) -> TenexaError:
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return TenexaError(code, f"workflow: {shown}{more}", details={"field": "workflow", **({"node_errors": node_errors} if node_errors else {})})


def _where(node_id: str, class_type: Any, input_name: str | None = None) -> str:
    return f"node {node_id} ({class_type})" + (f" input {input_name}" if input_name else "")


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)


# ------------------------------------------------------------------------------------------------- shape


def check_shape(graph: Any, limits: Limits) -> None:
    """What can be said without ComfyUI: API format, node objects, node count, no cycles."""
    if validator.is_ui_format(graph):
        raise _refuse(ErrorCode.INVALID_WORKFLOW, [
            "this is a UI-format workflow (it has 'nodes' and 'links' arrays, as ComfyUI saves it for the editor); "
            "in ComfyUI use Workflow > Export (API) and send that JSON object as workflow"])
    if not isinstance(graph, Mapping) or not graph:
        raise _refuse(ErrorCode.INVALID_WORKFLOW, ["must be a non-empty API-format graph: an object of node id -> {class_type, inputs}"])
    if isinstance(graph.get("prompt"), Mapping) and "class_type" not in graph["prompt"]:
        raise _refuse(ErrorCode.INVALID_WORKFLOW, [
            "this looks like a whole /prompt request body; send its 'prompt' object (the graph itself) as workflow"])
    if len(graph) > limits.max_nodes:
        raise _refuse(ErrorCode.WORKFLOW_TOO_LARGE, [
            f"{len(graph)} nodes; this worker runs at most {limits.max_nodes} (CUSTOM_WORKFLOW_MAX_NODES)"])
    problems = [
        f"node {node_id} is not an object with class_type and inputs" for node_id, node in graph.items()
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs", {}), Mapping)
    ]
    if problems:
        raise _refuse(ErrorCode.INVALID_WORKFLOW, problems)
    topological_order(graph)


def topological_order(graph: Mapping[str, Any]) -> list[str]:
    """Node ids, every node after the nodes it links to; INVALID_WORKFLOW naming the loop if links form one."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = placed
    order: list[str] = []
    for start in map(str, graph):
        if state.get(start):
            continue
        path = [start]
        stack: list[Iterator[str]] = [iter(_upstream(graph, start))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path[-1]] = 2
                order.append(path.pop())
                stack.pop()
            elif state.get(child) == 1:
                loop = [*path[path.index(child):], child]
                raise _refuse(ErrorCode.INVALID_WORKFLOW, [f"nodes {' -> '.join(loop)} form a cycle; an API-format graph must not loop"])
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(_upstream(graph, child)))
    return order


def _upstream(graph: Mapping[str, Any], node_id: str) -> list[str]:
    inputs = (graph.get(node_id) or {}).get("inputs") or {}
    return [str(v[0]) for v in inputs.values() if _is_link(v) and str(v[0]) in graph]


# ------------------------------------------------------------------------------------------------ policy


def _declared(schema: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    section = schema.get("input") or {}
    declared: dict[str, Any] = {}
    for category in ("required", "optional"):
        declared.update(section.get(category) or {})
    return declared, set(section.get("required") or {})


def _spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(spec, (list, tuple)) or not spec:
        return spec, {}
    return spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_image_upload(extra: Mapping[str, Any]) -> bool:
    return bool(extra.get("image_upload")) and extra.get("image_folder", "input") == "input"


def _denial(class_type: str, schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> str | None:
    """Why a node may not run in a custom workflow, or None."""
    if class_type in DENIED_CLASSES:
        return DENIED_CLASSES[class_type]
    module = str(schema.get("python_module") or "")
    for prefix, reason in DENIED_MODULE_PREFIXES.items():
        if module == prefix or module.startswith(prefix + "."):
            return reason
    if "download" in class_type.lower():
        return "downloads weights from the internet into the models folder"
    declared, required = _declared(schema)
    for name, spec in declared.items():
        kind, extra = _spec(spec)
        uploads = [k for k, v in extra.items() if k.endswith("_upload") and v]
        if uploads and not _is_image_upload(extra):
            return f"input {name} reads an uploaded file of a kind this API does not take or from another folder ({uploads[0]})"
        if "vhs_path_extensions" in extra:
            return f"input {name} takes any filesystem path or URL"
        if kind == "STRING" and name != "filename_prefix" and PATH_WORDS & set(name.lower().split("_")):
            value = inputs.get(name)
            if name in required or _is_link(value) or (isinstance(value, str) and value.strip()):
                return f"input {name} names a path, folder, file or URL"
    return None


def _clean_prefix(value: Any, where: str) -> str:
    """The caller's filename_prefix as a relative path without escapes, or a refusal naming the problem."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: filename_prefix must be a literal string (a link could compute any path)")
    if len(value) > MAX_PREFIX_CHARS or _CONTROL.search(value):
        raise ValueError(f"{where}: filename_prefix must be at most {MAX_PREFIX_CHARS} printable characters")
    text = value.replace("\\", "/")
    if text.startswith(("/", "~")) or _WINDOWS_DRIVE.match(text):
        raise ValueError(f"{where}: filename_prefix {value!r} is an absolute path; use a name relative to the output folder")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{where}: filename_prefix {value!r} climbs out of its folder with '..'")
    return "/".join(parts) or DEFAULT_PREFIX


def confine(
    graph: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    image_names: Iterable[str],
    job_folder: str,
    limits: Limits,
) -> ConfinedGraph:
    """The graph as it will be submitted, or the documented refusal (WORKFLOW_NOT_ALLOWED, NO_IMAGE,
    INVALID_WORKFLOW, MODEL_MISSING, WORKFLOW_TOO_LARGE) naming node, class and input.

    ``graph`` must have passed ``check_shape``; ``job_folder`` is the job's subfolder (``tenexa/<job>``) under
    ComfyUI's input/, output/ and temp/ folders. Uploaded images are named ``image_<n>.png`` in the order the
    graph first names them.
    """
    sent = list(image_names)
    out: dict[str, Any] = {}
    confined = ConfinedGraph(out, {})
    refused: list[str] = []
    missing: list[str] = []
    for node_id, original in graph.items():
        node_id = str(node_id)
        class_type = original["class_type"]
        if class_type in PREVIEW_CLASSES:
            confined.removed.append(node_id)
            continue
        node = copy.deepcopy(dict(original))
        node.setdefault("inputs", {})
        class_type = node["class_type"] = CONVERTED_CLASSES.get(class_type, class_type)
        schema = object_info.get(class_type)
        out[node_id] = node
        if not isinstance(schema, Mapping):
            continue  # the validator names unknown classes
        reason = _denial(class_type, schema, node["inputs"])
        if reason:
            refused.append(f"{_where(node_id, class_type)} is not allowed in a custom workflow: it {reason}")
            continue
        declared, _ = _declared(schema)
        for name, spec in declared.items():
            _, extra = _spec(spec)
            if _is_image_upload(extra) and name in node["inputs"]:
                problem = _bind_image(node, node_id, name, sent, job_folder, confined.uploads)
                if problem:
                    (missing if problem[0] is ErrorCode.NO_IMAGE else refused).append(problem[1])
        if "filename_prefix" in declared:
            given = node["inputs"].get("filename_prefix", _spec(declared["filename_prefix"])[1].get("default", DEFAULT_PREFIX))
            try:
                prefix = f"{job_folder}/{_clean_prefix(given, _where(node_id, class_type, 'filename_prefix'))}"
            except ValueError as exc:
                refused.append(str(exc))
                continue
            node["inputs"]["filename_prefix"] = prefix
        for name, value in NEUTRALISED_INPUTS.get(class_type, {}).items():
            if name in node["inputs"]:
                node["inputs"][name] = value
        for name, value in FORCED_INPUTS.items():
            if name in declared:
                node["inputs"][name] = value
    if refused:
        raise _refuse(ErrorCode.WORKFLOW_NOT_ALLOWED, refused)
    if missing:
        raise _refuse(ErrorCode.NO_IMAGE, missing)
    _drop_links_to_removed(out, set(confined.removed))
    _check_schema(out, object_info, removed=bool(confined.removed))
    check_sizes(out, limits)
    return confined


def _bind_image(node: dict, node_id: str, name: str, sent: list[str], job_folder: str,
                uploads: dict[str, str]) -> tuple[ErrorCode, str] | None:
    """Point an image-upload input at the job's copy of a request image, or say why it cannot."""
    where = _where(node_id, node["class_type"], name)
    value = node["inputs"][name]
    if not isinstance(value, str):
        return ErrorCode.WORKFLOW_NOT_ALLOWED, f"{where} must be the literal name of one of the request's images"
    if value not in sent:
        if "/" in value or "\\" in value or value.startswith(".") or value.rstrip().endswith("]") or _WINDOWS_DRIVE.match(value):
            return ErrorCode.WORKFLOW_NOT_ALLOWED, (f"{where}: {value[:120]!r} is a path; a custom workflow can only load "
                                                    "the images it sends, by their name")
        listed = ", ".join(repr(n) for n in sent[:10]) or "none"
        return ErrorCode.NO_IMAGE, f"{where} names {value[:120]!r}, which is not among the request's images (sent: {listed})"
    if value not in uploads:
        uploads[value] = f"image_{len(uploads)}.png"
    node["inputs"][name] = f"{job_folder}/{uploads[value]}"
    return None


def _drop_links_to_removed(graph: dict[str, Any], removed: set[str]) -> None:
    """Previews have no outputs, so nothing should link to one; an input that does is dropped (ComfyUI would
    reject the dangling link) and the validator reports it if it was required."""
    for node in graph.values():
        for name, value in list(node["inputs"].items()):
            if _is_link(value) and str(value[0]) in removed:
                del node["inputs"][name]


# ------------------------------------------------------------------------------------------------ schema


_NOT_FATAL = {"undeclared_input", "dead_node"}  # ComfyUI drops the value / never runs the node: no harm


def _check_schema(graph: Mapping[str, Any], object_info: Mapping[str, Any], *, removed: bool) -> None:
    problems = [p for p in validator.validate(graph, object_info, check_files=True) if p.code not in _NOT_FATAL]
    if not problems:
        return
    node_errors: dict[str, dict] = {}
    for p in problems:
        if p.node is not None:
            entry = node_errors.setdefault(p.node, {"class_type": p.class_type, "errors": []})
            entry["errors"].append({"type": p.code, "message": p.message, "extra_info": {"input_name": p.input} if p.input else {}})
    texts = [str(p) for p in problems]
    if any(p.code == "prompt_no_outputs" for p in problems) and removed:
        texts.append("preview nodes (PreviewImage and the like) are removed from custom workflows: save with SaveImage, SaveVideo or VHS_VideoCombine")
    code = ErrorCode.MODEL_MISSING if all(p.code == "model_file_missing" for p in problems) else ErrorCode.INVALID_WORKFLOW
    raise _refuse(code, texts, node_errors)


# ------------------------------------------------------------------------------------------------- sizes


def check_sizes(graph: Mapping[str, Any], limits: Limits) -> None:
    """Estimate how many images/frames each node makes and refuse the graph when one makes too many or too
    many pixels. A node's count is the largest count flowing into it, replaced by its own ``batch_size`` x
    ``length``-like inputs when those are larger, then multiplied by ``amount``/``multiplier``."""
    counts: dict[str, int] = {}
    problems: list[str] = []
    for node_id in topological_order(graph):
        node = graph[node_id]
        inputs = node.get("inputs") or {}
        total = max((counts.get(up, 1) for up in _upstream(graph, node_id)), default=1)
        own = 1
        for name in sorted(COUNT_INPUTS & set(inputs)):
            value = literal_int(graph, inputs[name])
            if value and value > 0:
                own *= value
        total = max(total, own)
        for name in sorted(MULTIPLIER_INPUTS & set(inputs)):
            value = literal_int(graph, inputs[name])
            if value and value > 1:
                total *= value
        counts[node_id] = total
        where = _where(node_id, node.get("class_type"))
        if total > limits.max_batch:
            problems.append(f"{where} would make about {total} images or frames; the limit is {limits.max_batch} "
                            "(CUSTOM_WORKFLOW_MAX_BATCH)")
        width, height = literal_int(graph, inputs.get("width")), literal_int(graph, inputs.get("height"))
        if width and height and width > 0 and height > 0 and width * height * total > limits.max_pixels:
            problems.append(f"{where} would make {total} x {width}x{height} = {width * height * total} pixels; the limit is "
                            f"{limits.max_pixels} (CUSTOM_WORKFLOW_MAX_PIXELS)")
    if problems:
        raise _refuse(ErrorCode.WORKFLOW_TOO_LARGE, problems)
