"""The path every graph takes through ComfyUI: upload images, submit and follow, fetch the video, probe it.

Generate and the diagnose self-test both use exactly this path, so a green self-test proves the plumbing a
real job depends on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from tenexa.comfy import ComfyClient, OutputFile, PromptResult, find_video_outputs
from tenexa.errors import ErrorCode, TenexaError
from tenexa.files import sha256_file
from tenexa.video import VideoInfo, probe_video
from tenexa.workspace import JobWorkspace

EventHandler = Callable[[str, dict], None]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")

MODEL_INPUTS = {"model", "model_name", "vae", "vae_name", "clip_name", "lora", "lora_name", "ckpt_name", "unet_name"}


@dataclass
class PipelineResult:
    run: PromptResult
    output: OutputFile
    video_path: Path
    video: VideoInfo
    upload_s: float
    fetch_s: float


@dataclass
class FetchedFile:
    """One output file on local disk, with what it is: ``video`` (probed with PyAV), ``image`` (Pillow) or ``file``."""

    output: OutputFile
    path: Path
    kind: str
    size_bytes: int
    sha256: str
    video: VideoInfo | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None


def upload_images(client: ComfyClient, workspace: JobWorkspace, images: dict[str, bytes]) -> None:
    """Upload ``{filename: png bytes}`` into the job's input subfolder under exactly the names bound in the graph."""
    for filename, data in images.items():
        stored = client.upload_image(data, filename, workspace.input_subfolder)
        if stored != workspace.input_name(filename):
            # ComfyUI renames only when a different file already has the name; our names are unique per job.
            raise TenexaError(ErrorCode.INTERNAL_ERROR, f"ComfyUI stored the upload as {stored!r}, expected {workspace.input_name(filename)!r}")


def _is_model_input(name: str) -> bool:
    return name in MODEL_INPUTS or name.startswith("lora_")


def explain_rejection(err: TenexaError) -> TenexaError:
    """A 400 whose every problem is a model file not on disk is a deployment problem: MODEL_MISSING."""
    node_errors = err.details.get("node_errors") or {}
    problems = [e for node in node_errors.values() if isinstance(node, dict) for e in node.get("errors") or []]
    if problems and all(
        e.get("type") == "value_not_in_list" and _is_model_input((e.get("extra_info") or {}).get("input_name", ""))
        for e in problems
    ):
        return TenexaError(ErrorCode.MODEL_MISSING, err.message.replace("ComfyUI rejected the workflow", "model files missing", 1)
                           + " (run diagnose to see what is installed)", details=err.details)
    return err


def describe_execution_error(error: dict) -> str:
    node = error.get("node_id", "?")
    node_type = error.get("node_type", "?")
    exc_type = str(error.get("exception_type", "error")).rsplit(".", 1)[-1]
    message = " ".join(str(error.get("exception_message", "")).split())[:500]
    return f"node {node} ({node_type}) failed: {exc_type}: {message}"


def fetch_image(client: ComfyClient, run: PromptResult, node: str, workspace: JobWorkspace) -> Path:
    """Download the first image node ``node`` saved (e.g. the last frame) into the job's scratch folder."""
    images = ((run.history.get("outputs") or {}).get(node) or {}).get("images") or []
    item = images[0] if images and isinstance(images[0], dict) and images[0].get("filename") else None
    if item is None:
        raise TenexaError(ErrorCode.NO_OUTPUT, f"ComfyUI finished without the image of node {node}")
    output = OutputFile(node, item["filename"], item.get("subfolder", ""), item.get("type", "output"))
    path = workspace.scratch / PurePosixPath(output.filename).name
    client.download(output, path)
    return path


def execute_graph(
    client: ComfyClient,
    graph: dict,
    *,
    workspace: JobWorkspace,
    images: dict[str, bytes],
    deadline: float,
    cancel: threading.Event | None = None,
    on_event: EventHandler | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[PromptResult, float]:
    """Upload, submit, follow to the end; a finished run and the upload seconds, or the documented error."""
    phase = on_phase or (lambda _name: None)
    t0 = time.monotonic()
    phase("uploading")
    upload_images(client, workspace, images)
    upload_s = time.monotonic() - t0

    phase("queued")
    try:
        run = client.run_prompt(graph, deadline=deadline, cancel=cancel, on_event=on_event)
    except TenexaError as err:
        if err.code is ErrorCode.QUEUE_FAILED:
            raise explain_rejection(err) from None
        raise
    if run.status == "error":
        raise TenexaError(ErrorCode.GENERATION_ERROR, describe_execution_error(run.error or {}),
                          details={"prompt_id": run.prompt_id, "node_id": (run.error or {}).get("node_id")})
    if run.status == "interrupted":
        raise TenexaError(ErrorCode.GENERATION_ERROR, "ComfyUI interrupted the prompt before it finished")
    return run, upload_s


def run_graph(
    client: ComfyClient,
    graph: dict,
    *,
    workspace: JobWorkspace,
    images: dict[str, bytes],
    deadline: float,
    cancel: threading.Event | None = None,
    on_event: EventHandler | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> PipelineResult:
    """The built-in graphs' path: run, then fetch and probe the one video they make."""
    run, upload_s = execute_graph(client, graph, workspace=workspace, images=images, deadline=deadline,
                                  cancel=cancel, on_event=on_event, on_phase=on_phase)
    outputs = find_video_outputs(run.history)
    if not outputs:
        raise TenexaError(ErrorCode.NO_OUTPUT, "ComfyUI finished without writing a video")
    t1 = time.monotonic()
    output = outputs[0]
    path = workspace.scratch / PurePosixPath(output.filename).name
    client.download(output, path)
    video = probe_video(path)
    return PipelineResult(run, output, path, video, upload_s=upload_s, fetch_s=time.monotonic() - t1)


def fetch_outputs(client: ComfyClient, files: list[OutputFile], dest: Path) -> list[FetchedFile]:
    """Download each file through /view into ``dest`` and say what it is; names are numbered so two nodes'
    files with the same name (in different subfolders) never overwrite each other."""
    fetched = []
    for index, output in enumerate(files):
        path = dest / f"{index:03d}-{PurePosixPath(output.filename).name}"
        client.download(output, path)
        fetched.append(describe_file(output, path))
    return fetched


def describe_file(output: OutputFile, path: Path) -> FetchedFile:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        try:
            video = probe_video(path)
        except TenexaError:
            video = None  # not readable by PyAV: delivered as a plain file, as ComfyUI wrote it
        if video is not None:
            return FetchedFile(output, path, "video", video.size_bytes, video.sha256, video=video,
                               width=video.width, height=video.height, frames=video.frames)
    size, digest = path.stat().st_size, sha256_file(path)
    if suffix in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as img:
                return FetchedFile(output, path, "image", size, digest, width=img.width, height=img.height,
                                   frames=getattr(img, "n_frames", 1))
        except (UnidentifiedImageError, OSError):
            pass  # delivered as a plain file: the caller still gets the bytes ComfyUI wrote
    return FetchedFile(output, path, "file", size, digest)
