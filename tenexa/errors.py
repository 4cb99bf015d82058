"""Error codes: one name per failure mode, each documented in README and covered by a test."""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    # Request problems (the caller can fix them).
    INVALID_INPUT = "INVALID_INPUT"
    NO_IMAGE = "NO_IMAGE"
    NO_END_IMAGE = "NO_END_IMAGE"
    INVALID_IMAGE = "INVALID_IMAGE"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_FETCH_FAILED = "IMAGE_FETCH_FAILED"
    URL_BLOCKED = "URL_BLOCKED"
    LORA_FETCH_FAILED = "LORA_FETCH_FAILED"
    LORA_TOO_LARGE = "LORA_TOO_LARGE"
    INVALID_LORA = "INVALID_LORA"
    # Custom workflows (a caller's own graph).
    CUSTOM_WORKFLOWS_DISABLED = "CUSTOM_WORKFLOWS_DISABLED"
    INVALID_WORKFLOW = "INVALID_WORKFLOW"
    WORKFLOW_NOT_ALLOWED = "WORKFLOW_NOT_ALLOWED"
    WORKFLOW_TOO_LARGE = "WORKFLOW_TOO_LARGE"
    # Deployment / ComfyUI problems.
    COMFY_NOT_READY = "COMFY_NOT_READY"
    COMFY_CRASHED = "COMFY_CRASHED"
    QUEUE_FAILED = "QUEUE_FAILED"
    MODEL_MISSING = "MODEL_MISSING"
    GENERATION_ERROR = "GENERATION_ERROR"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    NO_OUTPUT = "NO_OUTPUT"
    # Delivery problems.
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    UPLOAD_FAILED = "UPLOAD_FAILED"
    CONFIG_ERROR = "CONFIG_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class TenexaError(Exception):
    """A failure with a documented code and a one-line message for the caller.

    ``refresh_worker`` asks RunPod to replace this worker (ComfyUI is gone or in an unknown state).
    """

    def __init__(self, code: ErrorCode, message: str, *, refresh_worker: bool = False, details: dict | None = None):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = " ".join(str(message).split())  # always one line
        self.refresh_worker = refresh_worker
        self.details = details or {}


def invalid(field: str, problem: str) -> TenexaError:
    return TenexaError(ErrorCode.INVALID_INPUT, f"{field}: {problem}", details={"field": field})
