"""One logger for the worker, secret redaction, and the ComfyUI log tail that rides along with errors."""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

LOGGER_NAME = "tenexa"
log = logging.getLogger(LOGGER_NAME)

# Things that look like credentials in free text (URLs with user:pass, bearer tokens, key=value pairs).
_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*bearer\s+)[^\s'\"]+"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password|access[_-]?key(?:[_-]?id)?|signature)[\"']?\s*[=:]\s*[\"']?)[^\s&'\",}]+"),
    re.compile(r"(?i)(https?://[^/\s:@]+:)[^@\s/]+(@)"),
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+"),
    re.compile(r"\b(hf_)[A-Za-z0-9]{20,}"),
]
REDACTED = "[REDACTED]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED + (m.group(2) if m.lastindex and m.lastindex >= 2 else ""), text)
    return text


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(secrets: Iterable[str] = (), level: int = logging.INFO) -> None:
    """Idempotent: one stream handler on the ``tenexa`` logger, lines greppable by job id."""
    if any(getattr(h, "_tenexa", False) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler._tenexa = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s tenexa %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def tail_log(path: Path, lines: int = 80, secrets: Iterable[str] = ()) -> str:
    """The last ``lines`` lines of a log file, redacted; empty when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            tail = deque(fh, maxlen=lines)
    except OSError:
        return ""
    return redact("".join(tail), secrets)
