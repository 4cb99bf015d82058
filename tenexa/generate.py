"""Generate mode: request → images and LoRA URLs → bound Wan graph → ComfyUI → video → delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tenexa import workflows
from tenexa.comfy import ComfyClient
from tenexa.config import Settings
from tenexa.delivery import deliver
from tenexa.images import PreparedImage, prepare_image
from tenexa.logs import log
from tenexa.loras import fetch_loras
from tenexa.pipeline import PipelineResult, run_graph
from tenexa.progress import ProgressReporter
from tenexa.request import GenerateRequest, parse_generate
from tenexa.workflows import BoundWorkflow
from tenexa.workspace import JobWorkspace

START_IMAGE, END_IMAGE = "start.png", "end.png"


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
) -> Iterator[tuple[BoundWorkflow, PipelineResult, ProgressReporter]]:
    """Bind ``request`` (every rule is checked there, before ComfyUI sees anything), run it, and yield the
    result while the video is still in the job's workspace; the workspace is removed on leaving."""
    workspace = JobWorkspace(settings.comfy_root, job_id)
    try:
        bound = workflows.bind(
            request,
            image_size=(start.width, start.height),
            settings=settings,
            start_image=workspace.input_name(START_IMAGE),
            end_image=workspace.input_name(END_IMAGE) if end else None,
            output_prefix=workspace.output_prefix,
        )
        client.wait_until_ready(settings.ready_timeout)
        reporter = ProgressReporter(send_progress or (lambda _payload: None), graph=bound.graph, interval=settings.progress_interval)
        log.info("job %s: %s %sx%s %s frames, %s steps", job_id, request.workflow,
                 bound.used.get("width"), bound.used.get("height"), bound.used.get("frames"), bound.used.get("steps"))
        try:
            images = {START_IMAGE: start.png, **({END_IMAGE: end.png} if end else {})}
            result = run_graph(client, bound.graph, workspace=workspace, images=images, deadline=deadline, cancel=cancel,
                               on_event=reporter.on_event, on_phase=reporter.phase)
            yield bound, result, reporter
        finally:
            reporter.close()
    finally:
        workspace.cleanup()


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
    request = parse_generate(job_input, max_frames=settings.max_window_frames)
    start = prepare_image(request.image, settings)
    end = prepare_image(request.end_image, settings) if request.end_image else None
    workflows.check_window(request, (start.width, start.height), settings)  # before any LoRA is downloaded
    request = fetch_loras(request, settings, cancel=cancel)
    with rendered(job_id, request, start, end, settings=settings, client=client, deadline=started + settings.exec_timeout,
                  cancel=cancel, send_progress=send_progress) as (bound, result, reporter):
        reporter.phase("delivering")
        reporter.close()  # the last progress update must land before the result (runpod-sdk.md §4)
        t_deliver = time.monotonic()
        delivered = deliver(result.video_path, job_id=job_id, mode=request.output, settings=settings, sha256=result.video.sha256)
        deliver_s = time.monotonic() - t_deliver

    video = result.video
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
            "filename": result.output.filename.rsplit("/", 1)[-1],
            "size_mb": round(video.size_bytes / 1e6, 3),
            "size_bytes": video.size_bytes,
            "sha256": video.sha256,
            "codec": video.codec,
        },
        "timings": {
            "upload_s": round(result.upload_s, 3),
            "queue_wait_s": result.run.queue_wait_s,
            "execution_s": result.run.execution_s,
            "encode_s": round(result.fetch_s + deliver_s, 3),
            "total_s": round(time.monotonic() - started, 3),
        },
    }
    if request.ignored_keys:
        response["ignored_keys"] = list(request.ignored_keys)
    return response
