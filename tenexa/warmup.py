"""Warm-up mode: ``{"input": {"warmup": true}}`` loads what the next generate needs, then answers with the load time.

The original Tenexa clients send this ping at start-up. It runs the default Wan graph once at the smallest window
(5 frames, 64x64, 2 steps), bound from a default request, so every loader gets exactly the inputs a default
generate sends: the same expert files, precision, quantization, attention, LoRAs, VAE and text encoder. ComfyUI's
node cache keeps what those loaders produced, and the first real job starts sampling at once. It never fails the
job: a problem comes back as ``ok: false`` with its error code, because a warm-up ping must not look like an
outage to the caller.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from tenexa import wan
from tenexa.comfy import ComfyClient, PromptResult
from tenexa.config import ConfigError, Settings
from tenexa.diagnostics import SELFTEST_IMAGE
from tenexa.errors import ErrorCode, TenexaError
from tenexa.generate import rendered
from tenexa.images import normalize_image
from tenexa.logs import log
from tenexa.progress import LOADER_CLASSES
from tenexa.request import parse_generate

# The smallest window the rules allow; everything the loaders see stays at its default.
WARMUP_REQUEST = {"image_base64": "(example_image.png)", "frames": wan.MIN_FRAMES, "width": wan.MIN_SIDE,
                  "height": wan.MIN_SIDE, "steps": 2, "seed": 0}


def loader_seconds(run: PromptResult, graph: dict) -> float:
    """Seconds ComfyUI spent in loader nodes (each node runs from its ``executing`` event to the next one)."""
    total = 0.0
    for (start, node), (end, _next) in itertools.pairwise(run.timeline):
        if node is not None and (graph.get(str(node)) or {}).get("class_type") in LOADER_CLASSES:
            total += end - start
    return round(total, 3)


def warmup(job_id: str, *, settings: Settings, client: ComfyClient, cancel: threading.Event | None = None) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {"status": "completed", "warmup": True}
    try:
        request = parse_generate(WARMUP_REQUEST, max_frames=settings.max_window_frames)
        image = normalize_image(SELFTEST_IMAGE.read_bytes(), "example_image.png", settings.max_image_pixels)
        with rendered(job_id, request, image, None, settings=settings, client=client,
                      deadline=started + settings.exec_timeout, cancel=cancel) as (bound, result, _reporter, _workspace):
            report.update(ok=True, load_s=loader_seconds(result.run, bound.graph), execution_s=result.run.execution_s,
                          workflow=bound.name, used=bound.used)
    except TenexaError as err:
        report.update(ok=False, error_code=err.code.value, error_message=err.message)
    except ConfigError as exc:
        report.update(ok=False, error_code=ErrorCode.CONFIG_ERROR.value, error_message=f"worker misconfigured: {exc}")
    except Exception as exc:  # noqa: BLE001 - a warm-up reports, it never fails the job
        log.exception("job %s: warm-up failed", job_id)
        report.update(ok=False, error_code=ErrorCode.INTERNAL_ERROR.value,
                      error_message=f"unexpected {type(exc).__name__} in the worker; see the worker log")
    report["seconds"] = round(time.monotonic() - started, 3)
    log.info("job %s: warm-up %s in %.1f s", job_id, "done" if report["ok"] else f"failed ({report['error_code']})", report["seconds"])
    return report
