"""Shape what a job returns on failure: always the same keys, one line of text, never a traceback."""

from __future__ import annotations

from typing import Any

from tenexa.config import Settings
from tenexa.errors import TenexaError
from tenexa.logs import redact, tail_log

LOG_TAIL_LINES = 80


def failure(err: TenexaError, settings: Settings) -> dict[str, Any]:
    """``error`` is a non-empty string, so RunPod marks the job FAILED; the other keys ride along."""
    secrets = settings.secrets()
    message = redact(err.message, secrets)
    body: dict[str, Any] = {
        "status": "failed",
        "error": f"{err.code.value}: {message}",
        "error_code": err.code.value,
        "error_message": message,
        "logs_tail": tail_log(settings.comfy_log, LOG_TAIL_LINES, secrets),
    }
    if err.details.get("field"):
        body["error_field"] = err.details["field"]
    if err.details.get("node_errors"):
        body["node_errors"] = err.details["node_errors"]
    if err.refresh_worker and settings.refresh_on_crash:
        body["refresh_worker"] = True
    return body
