"""Custom workflow mode: a caller's own API-format graph, run with generate's guarantees.

Request (the shape worker-comfyui clients send, plus Tenexa's ``output``)::

    {"workflow": {<node id>: {"class_type": ..., "inputs": {...}}, ...},
     "images": [{"name": "input.png", "image": "<base64 or data: URI>"}, {"name": "ref.png", "url": "https://..."}],
     "output": "base64" | "url"}

Off unless ``ALLOW_CUSTOM_WORKFLOWS=true``: it lets a caller run any installed node. The graph is confined to
the job by ``custom_graph`` (images, output prefixes, refused nodes, limits) against the live node schemas;
images go through generate's decoding, limits and SSRF-safe fetch; the run takes generate's path (upload,
submit, follow, timeout, cancel, progress, cleanup); every file the graph saved comes back, all inline or all
by URL under the same size rules.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tenexa import custom_graph
from tenexa.comfy import ComfyClient, OutputFile, find_output_files
from tenexa.config import Settings
from tenexa.delivery import deliver_files
from tenexa.errors import ErrorCode, TenexaError, invalid
from tenexa.images import prepare_image
from tenexa.logs import log
from tenexa.pipeline import FetchedFile, execute_graph, fetch_outputs
from tenexa.progress import ProgressReporter
from tenexa.request import MAX_IMAGE_TEXT, MAX_NAME_CHARS, MAX_URL_CHARS, OUTPUT_MODES, ImageSource
from tenexa.workspace import JobWorkspace

MAX_IMAGES = 16  # images one request may carry (each within MAX_IMAGE_BYTES / MAX_IMAGE_PIXELS)
MAX_OUTPUT_FILES = 100  # files one response may carry
SCHEMA_TRUSTED_S = 60.0  # a cached /object_info younger than this is not fetched again to double-check a refusal
KNOWN_KEYS = frozenset({"workflow", "images", "output", "test", "diagnose", "selftest"})
URL_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class CustomRequest:
    workflow: Mapping[str, Any]
    images: dict[str, ImageSource]  # name as the graph uses it -> where the image comes from
    output: str
    ignored_keys: tuple[str, ...] = field(default=())


def limits(settings: Settings) -> custom_graph.Limits:
    return custom_graph.Limits(settings.custom_max_nodes, settings.custom_max_batch, settings.custom_max_pixels)


def settings_report(settings: Settings) -> dict[str, Any]:
    """Diagnose's view: whether the mode is on, and its limits."""
    return {
        "enabled": settings.allow_custom_workflows,
        "max_nodes": settings.custom_max_nodes,
        "max_batch": settings.custom_max_batch,
        "max_pixels": settings.custom_max_pixels,
        "max_images": MAX_IMAGES,
        "max_output_files": MAX_OUTPUT_FILES,
    }


# ------------------------------------------------------------------------------------------------ request


def _image_name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(field_name, "must be the file name the workflow's LoadImage uses, e.g. \"input.png\"")
    if len(value) > MAX_NAME_CHARS or any(ch in value for ch in "/\\") or value in (".", "..") or any(ord(ch) < 32 for ch in value):
        raise invalid(field_name, f"must be a plain file name (no folders, at most {MAX_NAME_CHARS} characters)")
    return value


def _image_source(entry: Mapping[str, Any], field_name: str) -> ImageSource:
    text, url = entry.get("image"), entry.get("url")
    if text is not None and url is not None:
        raise invalid(field_name, "give either image (base64) or url, not both")
    if isinstance(text, str) and text.strip().lower().startswith(URL_SCHEMES):
        text, url = None, text  # some worker-comfyui forks put a URL in image; base64 never contains ':'
    if url is not None:
        if not isinstance(url, str) or not url.strip():
            raise invalid(f"{field_name}.url", "must be an http(s) URL")
        if len(url) > MAX_URL_CHARS:
            raise invalid(f"{field_name}.url", f"must be at most {MAX_URL_CHARS} characters")
        return ImageSource(field=field_name, url=url.strip())
    if not isinstance(text, str) or not text.strip():
        raise invalid(f"{field_name}.image", "must be the image as base64 (raw or a data: URI), or give url instead")
    if len(text) > MAX_IMAGE_TEXT:
        raise TenexaError(ErrorCode.IMAGE_TOO_LARGE, f"{field_name}.image is {len(text)} characters; the limit is {MAX_IMAGE_TEXT}")
    return ImageSource(field=field_name, base64=text)


def parse_custom(job_input: Mapping[str, Any]) -> CustomRequest:
    """Validate the request around the graph (the graph itself is checked by ``custom_graph``)."""
    workflow = job_input.get("workflow")
    if not isinstance(workflow, Mapping):
        raise invalid("workflow", "must be an API-format graph object")
    raw_images = job_input.get("images")
    if raw_images is None:
        raw_images = []
    if not isinstance(raw_images, list):
        raise invalid("images", f"must be a list of {{name, image | url}} objects, got {type(raw_images).__name__}")
    if len(raw_images) > MAX_IMAGES:
        raise invalid("images", f"{len(raw_images)} images; at most {MAX_IMAGES} per request")
    images: dict[str, ImageSource] = {}
    for index, entry in enumerate(raw_images):
        field_name = f"images[{index}]"
        if not isinstance(entry, Mapping):
            raise invalid(field_name, f"must be an object {{name, image | url}}, got {type(entry).__name__}")
        name = _image_name(entry.get("name"), f"{field_name}.name")
        if name in images:
            raise invalid(f"{field_name}.name", f"{name!r} is given twice")
        images[name] = _image_source(entry, field_name)
    output = job_input.get("output", "base64")
    if output not in OUTPUT_MODES:
        raise invalid("output", f"must be one of {', '.join(OUTPUT_MODES)}, got {output!r}"[:300])
    return CustomRequest(workflow, images, output, tuple(sorted(k for k in job_input if k not in KNOWN_KEYS)))


# ------------------------------------------------------------------------------------------------ the mode


def run_custom(
    job_id: str,
    job_input: Mapping[str, Any],
    *,
    settings: Settings,
    client: ComfyClient,
    cancel: threading.Event | None = None,
    send_progress: Callable[[dict], None] | None = None,
) -> dict:
    started = time.monotonic()
    if not settings.allow_custom_workflows:
        raise TenexaError(
            ErrorCode.CUSTOM_WORKFLOWS_DISABLED,
            "this worker runs only its built-in workflows (workflow: \"wan22_i2v\" or \"flf2v\"); a workflow graph "
            "needs ALLOW_CUSTOM_WORKFLOWS=true on the endpoint",
            details={"field": "workflow"},
        )
    request = parse_custom(job_input)
    bounds = limits(settings)
    custom_graph.check_shape(request.workflow, bounds)
    client.wait_until_ready(settings.ready_timeout)

    workspace = JobWorkspace(settings.comfy_root, job_id)
    try:
        confined = _confine(client, request, workspace, bounds)
        images = {file: prepare_image(request.images[name], settings, keep_alpha=True).png for name, file in confined.uploads.items()}
        log.info("job %s: custom workflow, %d nodes (%d previews removed), %d image(s)", job_id, len(confined.graph),
                 len(confined.removed), len(images))
        reporter = ProgressReporter(send_progress or (lambda _payload: None), graph=confined.graph, interval=settings.progress_interval)
        try:
            run, upload_s = execute_graph(
                client, confined.graph, workspace=workspace, images=images, deadline=started + settings.exec_timeout,
                cancel=cancel, on_event=reporter.on_event, on_phase=reporter.phase,
            )
            t_fetch = time.monotonic()
            files = _job_outputs(find_output_files(run.history), workspace, settings.comfy_root)
            fetched = fetch_outputs(client, files, workspace.scratch)
            reporter.phase("delivering")
            reporter.close()  # the last progress update must land before the result (runpod-sdk.md §4)
            delivered = deliver_files([(f.path, _content_type(f.path), f.sha256) for f in fetched],
                                      job_id=job_id, mode=request.output, settings=settings)
            encode_s = time.monotonic() - t_fetch
        finally:
            reporter.close()
    except TenexaError as err:
        if err.code is ErrorCode.QUEUE_FAILED:
            client.forget_object_info()  # ComfyUI disagreed with the schema we checked against
        raise
    finally:
        workspace.cleanup()

    response: dict[str, Any] = {"status": "completed", "delivery": delivered["delivery"]}
    for key in ("bucket", "delivery_note"):
        if key in delivered:
            response[key] = delivered[key]
    groups: dict[str, list[dict]] = {"images": [], "videos": [], "files": []}
    for item, entry in zip(fetched, delivered["files"], strict=True):
        groups[f"{item.kind}s"].append(_describe(item, entry))
    response["images"], response["videos"] = groups["images"], groups["videos"]
    if groups["files"]:
        response["files"] = groups["files"]
    response.update({
        "workflow": "custom",
        "prompt_id": run.prompt_id,
        "nodes": len(confined.graph),
        "timings": {
            "upload_s": round(upload_s, 3),
            "queue_wait_s": run.queue_wait_s,
            "execution_s": run.execution_s,
            "encode_s": round(encode_s, 3),
            "total_s": round(time.monotonic() - started, 3),
        },
    })
    if confined.removed:
        response["removed_nodes"] = confined.removed
    unused = sorted(set(request.images) - set(confined.uploads))
    if unused:
        response["ignored_images"] = unused
    if request.ignored_keys:
        response["ignored_keys"] = list(request.ignored_keys)
    return response


def _confine(client: ComfyClient, request: CustomRequest, workspace: JobWorkspace, bounds: custom_graph.Limits) -> custom_graph.ConfinedGraph:
    """Check against the cached node schemas; a refusal that newer schemas could lift (a pack or model file
    added since they were fetched) is checked once more against a fresh copy."""
    def attempt(refresh: bool) -> tuple[custom_graph.ConfinedGraph, float]:
        try:
            info, age = client.cached_object_info(refresh=refresh)
        except (requests.RequestException, ValueError) as exc:
            raise TenexaError(ErrorCode.COMFY_NOT_READY, f"ComfyUI did not return its node schemas ({type(exc).__name__})") from None
        try:
            return custom_graph.confine(request.workflow, info, image_names=request.images, job_folder=workspace.subfolder,
                                        limits=bounds), age
        except TenexaError as err:
            err.details["schema_age_s"] = age
            raise

    try:
        return attempt(refresh=False)[0]
    except TenexaError as err:
        if err.code not in (ErrorCode.INVALID_WORKFLOW, ErrorCode.MODEL_MISSING) or err.details["schema_age_s"] <= SCHEMA_TRUSTED_S:
            raise
    return attempt(refresh=True)[0]


def _job_outputs(files: list[OutputFile], workspace: JobWorkspace, comfy_root: Path) -> list[OutputFile]:
    """The files to deliver: those inside the job's folders. A temp file outside them (a preview node this
    module does not know) is deleted, since ComfyUI's temp folder is scratch; anything else is left and logged."""
    ours = [f for f in files if f.type in ("output", "temp") and workspace.holds(f.subfolder)]
    for stray in (f for f in files if f not in ours):
        path = (comfy_root / stray.type / stray.subfolder / stray.filename).resolve()
        temp = (comfy_root / "temp").resolve()
        if stray.type == "temp" and path.is_relative_to(temp) and path.is_file():
            path.unlink(missing_ok=True)
            log.info("removed preview file %s written outside the job's folders by node %s", path.name, stray.node)
        else:
            log.warning("node %s reported %s/%s/%s outside the job's folders; not delivered", stray.node, stray.type,
                        stray.subfolder, stray.filename)
    if not ours:
        raise TenexaError(ErrorCode.NO_OUTPUT, "the workflow finished without saving a file; custom workflows return what "
                                               "SaveImage, SaveVideo, VHS_VideoCombine and other save nodes write")
    if len(ours) > MAX_OUTPUT_FILES:
        raise TenexaError(ErrorCode.OUTPUT_TOO_LARGE, f"the workflow saved {len(ours)} files; one response carries at most "
                                                      f"{MAX_OUTPUT_FILES}")
    return ours


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _describe(item: FetchedFile, delivered: dict) -> dict:
    entry: dict[str, Any] = {
        "filename": Path(item.output.filename).name,
        **delivered,
        "node": item.output.node,
        "content_type": _content_type(item.path),
    }
    if item.video is not None:
        video = item.video
        entry.update(frames=video.frames, fps=video.fps, width=video.width, height=video.height,
                     duration_sec=video.duration_sec, codec=video.codec)
    elif item.kind == "image":
        entry.update(width=item.width, height=item.height, frames=item.frames)
    return entry
