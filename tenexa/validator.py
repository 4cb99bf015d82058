"""Check an API-format workflow against node schemas (``/object_info``) the way ComfyUI's validation does.

Checks, each reported as a ``Problem`` naming the node id, its class and the input:
- the graph is API format (a UI-format export with ``nodes``/``links`` arrays is named as such);
- every node has a ``class_type`` that exists in the schema, and an ``inputs`` object;
- required inputs are present; literal values fit their type, enum, min and max;
- undeclared literal inputs (ComfyUI drops them silently), except format widgets a node declares itself
  (VHS_VideoCombine's ``pix_fmt``/``crf``/..., checked against the chosen format's widget spec);
- every link ``[node_id, slot]`` points at an existing node and an output slot whose type fits the input;
- there is an output node, and no node that feeds no output node (dead nodes never run).

Model file names are special: the recorded schema lists only the files present when it was recorded, so a
combo value that names a model file is checked only with ``check_files=True`` (against a live
``/object_info``). LoadImage file names are bound per job and never checked here.

Standard library only: ``scripts/validate_workflow.py`` runs it on a laptop without the worker's deps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".gguf", ".onnx")
DEFAULT_OBJECT_INFO = Path(__file__).resolve().parent / "data" / "object_info.json"


@dataclass(frozen=True)
class Problem:
    node: str | None
    class_type: str | None
    input: str | None
    code: str
    message: str

    def __str__(self) -> str:
        where = []
        if self.node is not None:
            where.append(f"node {self.node}")
        if self.class_type:
            where.append(f"({self.class_type})")
        if self.input:
            where.append(f"input {self.input}")
        prefix = " ".join(where) or "workflow"
        return f"{prefix}: {self.message} [{self.code}]"


def load_object_info(path: Path | str = DEFAULT_OBJECT_INFO) -> dict[str, Any]:
    """The class map from a recorded file: either a raw ``/object_info`` dump or our stamped
    ``{"recorded": {...}, "object_info": {...}}`` file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("object_info"), dict):
        return data["object_info"]
    return {k: v for k, v in data.items() if isinstance(v, dict) and "input" in v}


def literal_int(graph: Mapping[str, Any], value: Any, depth: int = 0) -> int | None:
    """A literal int input, or the literal ``value`` of a constant node (INTConstant, PrimitiveInt…) it links to."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and depth < 8:
        source = graph.get(str(value[0]))
        if isinstance(source, dict):
            inputs = source.get("inputs") or {}
            return literal_int(graph, inputs.get("value", inputs.get("int")), depth + 1)
    return None


def is_ui_format(graph: Any) -> bool:
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and isinstance(graph.get("links"), list)


def _types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's ``validate_node_input`` (non-strict): equal, ``*`` on either side, or overlapping
    comma-separated unions."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    if "*" in (received, expected):
        return True
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want)


def _declared_inputs(schema: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    section = schema.get("input", {}) or {}
    declared: dict[str, Any] = {}
    for category in ("required", "optional"):
        declared.update(section.get(category, {}) or {})
    return declared, set(section.get("required", {}) or {})


def _spec_parts(spec: Any) -> tuple[Any, dict[str, Any]]:
    """(type or option list, extra info) from an input spec ``[type, {…}]``."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return spec, {}
    extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], extra


def _combo_options(kind: Any, extra: Mapping[str, Any]) -> list[Any] | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(extra.get("options", []))
    return None


def _looks_like_model_file(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES)


class _Checker:
    def __init__(self, graph: Mapping[str, Any], object_info: Mapping[str, Any], check_files: bool):
        self.graph = graph
        self.info = object_info
        self.check_files = check_files
        self.problems: list[Problem] = []

    def add(self, node: str | None, cls: str | None, inp: str | None, code: str, message: str) -> None:
        self.problems.append(Problem(node, cls, inp, code, message))

    # -- literals

    def check_literal(self, nid: str, cls: str, name: str, value: Any, spec: Any) -> None:
        kind, extra = _spec_parts(spec)
        if isinstance(value, dict) and "__value__" in value:  # ComfyUI's wrapper for list-valued widgets
            value = value["__value__"]
        options = _combo_options(kind, extra)
        if options is not None:
            if value in options:
                return
            if extra.get("image_upload"):
                return  # LoadImage-style: the file is uploaded per job
            if _looks_like_model_file(value) and not self.check_files:
                return  # model file: only the live listing knows (check_files=True)
            shown = options if len(options) <= 20 else f"(list of {len(options)})"
            code = "model_file_missing" if _looks_like_model_file(value) else "value_not_in_list"
            self.add(nid, cls, name, code, f"{value!r} not in {shown}")
            return
        if kind == "INT":
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
                self.add(nid, cls, name, "invalid_input_type", f"expected an integer, got {value!r}")
                return
        elif kind == "FLOAT":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.add(nid, cls, name, "invalid_input_type", f"expected a number, got {value!r}")
                return
        elif kind == "STRING":
            if not isinstance(value, str):
                self.add(nid, cls, name, "invalid_input_type", f"expected a string, got {value!r}")
            return
        elif kind == "BOOLEAN":
            if not isinstance(value, bool):
                self.add(nid, cls, name, "invalid_input_type", f"expected true/false, got {value!r}")
            return
        else:
            self.add(nid, cls, name, "literal_for_link_input",
                     f"expects a link of type {kind}, got the literal {value!r}")
            return
        if "min" in extra and value < extra["min"]:
            self.add(nid, cls, name, "value_smaller_than_min", f"{value!r} is smaller than the minimum {extra['min']}")
        elif "max" in extra and value > extra["max"]:
            self.add(nid, cls, name, "value_bigger_than_max", f"{value!r} is bigger than the maximum {extra['max']}")

    def format_widgets(self, node_inputs: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
        """Widgets a node adds for its chosen format (VHS ``formats``), as input specs."""
        widgets: dict[str, Any] = {}
        for name, spec in declared.items():
            _, extra = _spec_parts(spec)
            formats = extra.get("formats")
            chosen = node_inputs.get(name)
            if isinstance(formats, dict) and isinstance(chosen, str):
                for widget in formats.get(chosen, []):
                    if isinstance(widget, list) and len(widget) >= 2:
                        widgets[widget[0]] = widget[1:]
        return widgets

    # -- links

    def check_link(self, nid: str, cls: str, name: str, link: list, spec: Any) -> None:
        if len(link) != 2 or not isinstance(link[0], (str, int)) or isinstance(link[1], bool) or not isinstance(link[1], int):
            self.add(nid, cls, name, "bad_linked_input", f"a link must be [node_id, output_slot], got {link!r}")
            return
        src_id, slot = str(link[0]), link[1]
        src = self.graph.get(src_id)
        if not isinstance(src, dict):
            self.add(nid, cls, name, "link_to_missing_node", f"links to node {src_id}, which is not in the graph")
            return
        src_cls = src.get("class_type")
        src_schema = self.info.get(src_cls) if isinstance(src_cls, str) else None
        if src_schema is None:
            return  # the source node's own problem is reported on it
        outputs = src_schema.get("output", [])
        if not 0 <= slot < len(outputs):
            self.add(nid, cls, name, "link_bad_slot",
                     f"links to output {slot} of node {src_id} ({src_cls}), which has {len(outputs)} output(s)")
            return
        kind, _ = _spec_parts(spec)
        expected = "COMBO" if isinstance(kind, list) else kind
        if not _types_match(outputs[slot], expected):
            self.add(nid, cls, name, "return_type_mismatch",
                     f"expects {expected}, but node {src_id} ({src_cls}) output {slot} is {outputs[slot]}")

    # -- nodes

    def check_node(self, nid: str, node: Any) -> None:
        if not isinstance(node, dict):
            self.add(nid, None, None, "invalid_node", "is not an object with class_type and inputs")
            return
        cls = node.get("class_type")
        if not isinstance(cls, str) or not cls:
            self.add(nid, None, None, "missing_class_type", "has no class_type")
            return
        schema = self.info.get(cls)
        if schema is None:
            self.add(nid, cls, None, "unknown_class", f"class {cls} is not in the node schemas; ComfyUI rejects the whole prompt (no installed pack provides it)")
            return
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            self.add(nid, cls, None, "missing_inputs", "has no inputs object")
            return
        declared, required = _declared_inputs(schema)
        for name in sorted(required - set(inputs)):
            self.add(nid, cls, name, "required_input_missing", "required input is missing")
        extra_widgets = self.format_widgets(inputs, declared)
        for name, value in inputs.items():
            spec = declared.get(name)
            if isinstance(value, list):
                if spec is None:
                    continue  # ComfyUI passes undeclared links through (e.g. a hidden/dynamic input)
                self.check_link(nid, cls, name, value, spec)
            elif spec is not None:
                self.check_literal(nid, cls, name, value, spec)
            elif name in extra_widgets:
                self.check_literal(nid, cls, name, value, extra_widgets[name])
            else:
                self.add(nid, cls, name, "undeclared_input", f"{cls} has no input {name}; ComfyUI drops the value {value!r}")

    # -- graph

    def check_reachability(self) -> None:
        outputs = [nid for nid, node in self.graph.items()
                   if isinstance(node, dict) and self.info.get(node.get("class_type"), {}).get("output_node")]
        if not outputs:
            self.add(None, None, None, "prompt_no_outputs", "no output node: ComfyUI would execute nothing")
            return
        seen: set[str] = set()
        stack = list(outputs)
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            node = self.graph.get(nid)
            inputs = node.get("inputs") if isinstance(node, dict) else None
            for value in (inputs or {}).values():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in self.graph:
                    stack.append(str(value[0]))
        for nid, node in self.graph.items():
            if nid not in seen:
                cls = node.get("class_type") if isinstance(node, dict) else None
                self.add(nid, cls, None, "dead_node", "feeds no output node, so it never runs; remove it")

    def run(self) -> list[Problem]:
        for nid, node in self.graph.items():
            self.check_node(str(nid), node)
        self.check_reachability()
        return self.problems


def validate(graph: Any, object_info: Mapping[str, Any], *, check_files: bool = False) -> list[Problem]:
    """Every problem ComfyUI would reject (or silently mishandle) in ``graph``; empty when it is fine.

    ``check_files``: also require model file names to be in the schema's listing (use with a live
    ``/object_info`` from the deployment, whose combos list the files on disk).
    """
    if is_ui_format(graph):
        return [Problem(None, None, None, "ui_format",
                        "this is a UI-format workflow (it has 'nodes' and 'links' arrays), saved from the editor; "
                        "export it with 'Export (API)' and commit that file")]
    if not isinstance(graph, dict):
        return [Problem(None, None, None, "invalid_workflow", f"expected a JSON object of nodes, got {type(graph).__name__}")]
    if not graph:
        return [Problem(None, None, None, "prompt_no_outputs", "the workflow has no nodes")]
    return _Checker(graph, object_info, check_files).run()
