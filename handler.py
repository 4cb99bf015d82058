"""Tenexa's RunPod entry point: pick the mode of a job, run it, return its response.

    {"input": {"test": true}}                         -> health check, in-process, well under a second
    {"input": {"diagnose": true, "selftest": true}}   -> what is installed and whether the pipeline works
    {"input": {"warmup": true}}                       -> load the models the next generate needs; the load time
    {"input": {"image_base64": ..., ...}}             -> generate an MP4 (the default)
    {"input": {"workflow": {<API graph>}, "images": [...]}} -> run a caller's own graph (ALLOW_CUSTOM_WORKFLOWS)

The handler is async so that RunPod's /cancel and execution timeout reach it: the blocking work runs in a
thread, and a cancellation sets an event that makes the thread interrupt ComfyUI and clean up.
"""

from __future__ import annotations

import asyncio
import os
import platform
import threading
from collections.abc import Callable
from typing import Any

from tenexa.comfy import ComfyClient
from tenexa.config import ConfigError, load_settings
from tenexa.custom import run_custom
from tenexa.diagnostics import diagnose, health
from tenexa.errors import ErrorCode, TenexaError
from tenexa.generate import generate
from tenexa.logs import log, setup_logging
from tenexa.request import select_mode
from tenexa.responses import failure
from tenexa.warmup import warmup
from tenexa.workflows import attention_probe

SETTINGS = load_settings()
CLIENT = ComfyClient(SETTINGS.comfy_url)


def progress_sender(job: dict) -> Callable[[dict], None] | None:
    """Progress goes to RunPod only in production; the local API has nowhere to send it."""
    if not os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        return None
    from runpod.serverless import progress_update  # runpod's import costs ~2 s: keep it off the import path

    return lambda payload: progress_update(job, payload)


def run_mode(mode: str, job: dict, job_input: Any, cancel: threading.Event) -> dict:
    job_id = str(job.get("id") or "local")
    try:
        if mode == "diagnose":
            return diagnose(SETTINGS, CLIENT, selftest=job_input.get("selftest") is True,
                            verify_hashes=job_input.get("verify_hashes") is True)
        if mode == "warmup":
            return warmup(job_id, settings=SETTINGS, client=CLIENT, cancel=cancel)
        if mode == "custom":
            return run_custom(job_id, job_input, settings=SETTINGS, client=CLIENT, cancel=cancel, send_progress=progress_sender(job))
        return generate(job_id, job_input, settings=SETTINGS, client=CLIENT, cancel=cancel, send_progress=progress_sender(job))
    except TenexaError as err:
        log.info("job %s: failed %s: %s", job_id, err.code.value, err.message)
        return failure(err, SETTINGS)
    except ConfigError as exc:
        log.error("job %s: worker misconfigured: %s", job_id, exc)
        return failure(TenexaError(ErrorCode.CONFIG_ERROR, f"worker misconfigured: {exc}"), SETTINGS)
    except Exception as exc:  # noqa: BLE001 - the caller gets a code and a line, the log gets the traceback
        log.exception("job %s: unexpected error", job_id)
        return failure(TenexaError(ErrorCode.INTERNAL_ERROR, f"unexpected {type(exc).__name__} in the worker; see the worker log"), SETTINGS)


async def handler(job: dict) -> dict:
    job_input = job.get("input")
    if not isinstance(job_input, dict):
        return failure(TenexaError(ErrorCode.INVALID_INPUT, "input: must be a JSON object"), SETTINGS)
    mode = select_mode(job_input)
    if mode == "test":
        return health(SETTINGS, CLIENT)
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(run_mode, mode, job, job_input, cancel)
    except asyncio.CancelledError:
        cancel.set()  # the worker thread interrupts ComfyUI and cleans up at its next check (within a second)
        raise


def _skip_runpod_cpu_probe() -> None:
    """runpod's rp_debugger calls py-cpuinfo's get_cpu_info() at import (~1.2 s of subprocesses, measured in
    bench/latency.py) only to fill a debug field; answer it from platform instead so the worker starts faster."""
    try:
        import cpuinfo
    except ImportError:
        return
    cpuinfo.get_cpu_info = lambda: {"brand_raw": platform.processor() or platform.machine()}


if __name__ == "__main__":
    _skip_runpod_cpu_probe()
    import runpod

    setup_logging(SETTINGS.secrets())  # only when serving: importing the handler must not reconfigure logging
    if SETTINGS.attention_mode == "auto":  # probe ComfyUI's interpreter now, not during the first job
        threading.Thread(target=attention_probe, args=(SETTINGS,), name="attention-probe", daemon=True).start()

    runpod.serverless.start({"handler": handler})
