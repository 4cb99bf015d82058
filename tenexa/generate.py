"""Generate mode: request → images and LoRA URLs → bound Wan graph → ComfyUI → (ffmpeg interpolation) → video →
delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tenexa import interpolation, workflows
from tenexa.comfy import ComfyClient
from tenexa.config import Settings
from tenexa.delivery import base64_length, deliver, deliver_image
from tenexa.errors import ErrorCode, TenexaError
from tenexa.formats import mime_type
from tenexa.images import PreparedImage, prepare_image
from tenexa.logs import log
from tenexa.loras import fetch_loras
from tenexa.pipeline import PipelineResult, fetch_image, run_graph
from tenexa.progress import ProgressReporter
from tenexa.request import GenerateRequest, parse_generate
from tenexa.video import probe_video
from tenexa.workflows import BoundWorkflow
from tenexa.workspace import JobWorkspace

START_IMAGE, END_IMAGE = "start.png", "end.png"


def choose_interpolator(request: GenerateRequest, settings: Settings, client: ComfyClient) -> str:
    """``none``, ``rife`` or ``ffmpeg`` for this job, decided before anything is submitted.

    RIFE is ready when its checkpoint is where the pack looks (so the pack never downloads at run time) and
    ComfyUI serves the node (so a stack without the pack still interpolates, with ffmpeg).
    """
    if request.interpolate <= 1:
        return interpolation.NONE
    why_not = ""
    if request.interpolator != interpolation.FFMPEG:
        checkpoint = interpolation.rife_checkpoint(settings.comfy_root)
        if not checkpoint.is_file():
            why_not = f"no checkpoint at {checkpoint}"
        else:
            client.wait_until_ready(settings.ready_timeout)
            if not client.has_node(interpolation.RIFE_CLASS):
                why_not = f"ComfyUI has no {interpolation.RIFE_CLASS!r} node (ComfyUI-Frame-Interpolation not loaded)"
    return interpolation.choose(request.interpolator, request.interpolate, rife_ready=not why_not, why_not=why_not)


def _interpolate_in_worker(finish: workflows.WorkerFinish, source: Path, workspace_scratch: Path, *, deadline: float,
                           cancel: threading.Event | None) -> Path:
    """The ffmpeg interpolator's pass and the job's one final encode; stops at a cancel or the job's deadline."""

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise TenexaError(ErrorCode.CANCELLED, "the job was cancelled during frame interpolation")
        if time.monotonic() > deadline:
            raise TenexaError(ErrorCode.TIMEOUT, "frame interpolation did not finish before COMFY_EXEC_TIMEOUT")

    dest = workspace_scratch / f"video.{finish.video_format.container}"
    interpolation.interpolate_video(source, dest, multiplier=finish.multiplier, fps=finish.fps, video_format=finish.video_format,
                                    crf=finish.crf, check=check)
    return dest


def bind_in_workspace(request: GenerateRequest, start: PreparedImage, end: PreparedImage | None, workspace: JobWorkspace, *,
                      settings: Settings, interpolator: str = interpolation.NONE) -> BoundWorkflow:
    """``workflows.bind`` with the job's images and outputs named in ``workspace`` (START_IMAGE, END_IMAGE)."""
    return workflows.bind(
        request,
        image_size=(start.width, start.height),
        settings=settings,
        start_image=workspace.input_name(START_IMAGE),
        end_image=workspace.input_name(END_IMAGE) if end else None,
        output_prefix=workspace.output_prefix,
        interpolator=interpolator,
    )


@contextmanager
def rendered(
    job_id: str,
    request: GenerateRequest,
    start: PreparedImage,
    end: PreparedImage | None,
    *,
    settings: Settings,
    client: ComfyClient,
    deadline: float,
    cancel: threading.Event | None = None,
    send_progress: Callable[[dict], None] | None = None,
    interpolator: str = interpolation.NONE,
) -> Iterator[tuple[BoundWorkflow, PipelineResult, ProgressReporter, JobWorkspace]]:
    """Bind ``request`` (every rule is checked there, before ComfyUI sees anything), run it, and yield the
    result while the video is still in the job's workspace; the workspace is removed on leaving."""
    workspace = JobWorkspace(settings.comfy_root, job_id)
    try:
        bound = bind_in_workspace(request, start, end, workspace, settings=settings, interpolator=interpolator)
        client.wait_until_ready(settings.ready_timeout)
        reporter = ProgressReporter(send_progress or (lambda _payload: None), graph=bound.graph, interval=settings.progress_interval)
        log.info("job %s: %s %sx%s %s frames, %s steps", job_id, request.workflow,
                 bound.used.get("width"), bound.used.get("height"), bound.used.get("frames"), bound.used.get("steps"))
        try:
            images = {START_IMAGE: start.png, **({END_IMAGE: end.png} if end else {})}
            result = run_graph(client, bound.graph, workspace=workspace, images=images, deadline=deadline, cancel=cancel,
                               on_event=reporter.on_event, on_phase=reporter.phase)
            yield bound, result, reporter, workspace
        finally:
            reporter.close()
    finally:
        workspace.cleanup()


def _fetch_loras_reporting(request: GenerateRequest, settings: Settings, *, cancel: threading.Event | None,
                           send_progress: Callable[[dict], None] | None) -> GenerateRequest:
    """``fetch_loras`` with the ``fetching_loras`` phase reported, before the graph (and its reporter) exists.

    A reporter of its own, closed before anything else happens, so its rate limit holds and an update it has
    handed to RunPod lands before a LoRA error can become the job's result."""
    reporter = ProgressReporter(send_progress or (lambda _payload: None), graph={}, interval=settings.progress_interval)
    try:
        return fetch_loras(request, settings, cancel=cancel,
                           on_progress=lambda done, total: reporter.phase("fetching_loras", step=done, total=total))
    finally:
        reporter.close()


def generate(
    job_id: str,
    job_input: Any,
    *,
    settings: Settings,
    client: ComfyClient,
    cancel: threading.Event | None = None,
    send_progress: Callable[[dict], None] | None = None,
) -> dict:
    started = time.monotonic()
    request = parse_generate(job_input, max_frames=settings.max_frames)
    start = prepare_image(request.image, settings)
    end = prepare_image(request.end_image, settings) if request.end_image else None
    workflows.check_window(request, (start.width, start.height), settings)  # before any LoRA is downloaded
    request = _fetch_loras_reporting(request, settings, cancel=cancel, send_progress=send_progress)
    interpolator = choose_interpolator(request, settings, client)
    deadline = started + settings.exec_timeout
    with rendered(job_id, request, start, end, settings=settings, client=client, deadline=deadline, cancel=cancel,
                  send_progress=send_progress, interpolator=interpolator) as (bound, result, reporter, workspace):
        video_path, video, interpolate_s = result.video_path, result.video, None
        if bound.finish is not None:
            reporter.phase("interpolating")
            t_interpolate = time.monotonic()
            video_path = _interpolate_in_worker(bound.finish, result.video_path, workspace.scratch, deadline=deadline, cancel=cancel)
            video = probe_video(video_path)
            interpolate_s = time.monotonic() - t_interpolate
        last_frame = fetch_image(client, result.run, bound.last_frame_node, workspace) if bound.last_frame_node else None
        reporter.phase("delivering")
        reporter.close()  # the last progress update must land before the result (runpod-sdk.md §4)
        t_deliver = time.monotonic()
        frame_bytes = base64_length(last_frame.stat().st_size) if last_frame else 0
        delivered = deliver(video_path, job_id=job_id, mode=request.output, settings=settings, sha256=video.sha256,
                            content_type=mime_type(video.container), extra_bytes=frame_bytes)
        if last_frame is not None:
            delivered.update(deliver_image(last_frame, name="last_frame", job_id=job_id, video_delivery=delivered["delivery"],
                                           settings=settings))
        deliver_s = time.monotonic() - t_deliver

    response: dict[str, Any] = {
        "status": "completed",
        **delivered,
        "seed": request.seed,
        "fps": video.fps,
        "frames": video.frames,
        "duration_sec": video.duration_sec,
        "width": video.width,
        "height": video.height,
        "workflow": request.workflow,
        "prompt_id": result.run.prompt_id,
        "used": bound.used,
        "metadata": {
            "filename": video_path.name if bound.finish else result.output.filename.rsplit("/", 1)[-1],
            "size_mb": round(video.size_bytes / 1e6, 3),
            "size_bytes": video.size_bytes,
            "sha256": video.sha256,
            "codec": video.codec,
            "container": video.container,
            "mime_type": mime_type(video.container),
        },
        "timings": {
            "upload_s": round(result.upload_s, 3),
            "queue_wait_s": result.run.queue_wait_s,
            "execution_s": result.run.execution_s,
            "encode_s": round(result.fetch_s + deliver_s, 3),
            **({"interpolate_s": round(interpolate_s, 3)} if interpolate_s is not None else {}),
            "total_s": round(time.monotonic() - started, 3),
        },
    }
    if request.ignored_keys:
        response["ignored_keys"] = list(request.ignored_keys)
    return response
