"""Shared plumbing for Tenexa's command-line clients (``send_test.py``, ``diagnose.py``).

Runs on a laptop: Python 3.9+, ``requests`` and the standard library only. It must never import the
worker's ``tenexa`` package. One concern per block: exit codes and errors, endpoint resolution, the
HTTP layer (auth, retries, one-line failures), the job runner (submit, poll, cancel), the progress
display, failure parsing, and small formatting helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import requests

# --- exit codes and errors ----------------------------------------------------------------------

EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job ran and failed (send_test) / the worker is degraded (diagnose)
EXIT_PROBLEM = 2  # usage, network, auth, rate limit, client timeout: the job result is unknown
EXIT_INTERRUPTED = 130  # Ctrl-C (the conventional 128 + SIGINT)

EXIT_CODES_HELP = """exit codes:
  0    success
  1    {one}
  2    usage, network, authentication or rate-limit problem, or --timeout reached
       (the remote job is cancelled unless --no-cancel)
  130  interrupted with Ctrl-C (the remote job is cancelled unless --no-cancel;
       the local API has no cancel)"""

RUNPOD_API_BASE = "https://api.runpod.ai/v2"
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
RUN_BODY_LIMIT = 10 * 1024 * 1024  # RunPod rejects bigger /run bodies
RUNSYNC_BODY_LIMIT = 20 * 1024 * 1024
RUNSYNC_WAIT_MS = (1000, 300_000)  # the range RunPod accepts for /runsync?wait=
USER_AGENT = "tenexa-client/1"


class ClientError(Exception):
    """A problem on the way to a job result (exit 2). ``kind`` is a short word scripts can match."""

    def __init__(self, kind: str, message: str, job_id: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.job_id = job_id


class Interrupted(Exception):
    """Ctrl-C; ``message`` says what happened to the remote job."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.job_id = job_id


# --- secrets: nothing we print may contain the API key -------------------------------------------

_SECRETS: list[str] = []


def register_secret(value: str | None) -> None:
    if value and len(value) >= 4 and value not in _SECRETS:
        _SECRETS.append(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


def say(text: str = "", stream: TextIO | None = None) -> None:
    """Print one line (redacted) to stdout, or to ``stream``."""
    stream = stream or sys.stdout
    stream.write(redact(text) + "\n")
    stream.flush()


def warn(text: str) -> None:
    say(text, sys.stderr)


def one_line(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --- endpoint resolution -----------------------------------------------------------------------

_BARE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d+(/.*)?")
_OPERATION_SUFFIX = re.compile(r"/(?:run|runsync|health|purge-queue|(?:status|cancel|stream|retry)/[^/]+)$")
_RUNPOD_PATH = re.compile(r"/v2/[^/]+$")


@dataclass(frozen=True)
class Endpoint:
    """Where jobs go. ``local`` is the SDK dev server (``--rp_serve_api``): /run stores the job,
    POST /status/{id} runs it synchronously, no /cancel, no progress, no auth."""

    base_url: str
    local: bool

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    def url(self, path: str) -> str:
        return self.base_url + path

    def describe(self) -> str:
        return f"{self.base_url} ({'local API' if self.local else 'RunPod API'})"


def resolve_endpoint(text: str, api: str = "auto") -> Endpoint:
    """Turn what the user typed into an :class:`Endpoint`.

    Accepts a bare RunPod endpoint id, a RunPod URL (with or without ``/run``, ``/runsync``, ...), or
    the worker's local API (``http://127.0.0.1:8000``, or ``127.0.0.1:8000``). A URL whose path ends in
    ``/v2/<id>`` speaks RunPod's API; any other URL is taken for the local dev server. ``api``
    ("runpod" or "local") overrides that guess.
    """
    text = (text or "").strip()
    if not text:
        raise ClientError("usage", "no endpoint: pass an endpoint id or URL, or set TENEXA_ENDPOINT")
    if "://" not in text:
        if _BARE_ID.fullmatch(text):
            base = os.environ.get("RUNPOD_ENDPOINT_BASE_URL", RUNPOD_API_BASE).rstrip("/")
            return Endpoint(f"{base}/{text}", local=(api == "local"))
        if _HOST_PORT.fullmatch(text):
            text = "http://" + text
        else:
            raise ClientError("usage", f"not an endpoint id or URL: {text!r}")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError("usage", f"not an http(s) URL: {text!r}")
    path = _OPERATION_SUFFIX.sub("", parts.path.rstrip("/"))
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    local = not _RUNPOD_PATH.search(path) if api == "auto" else api == "local"
    return Endpoint(base, local=local)


# --- HTTP ------------------------------------------------------------------------------------------


def _network_reason(exc: BaseException) -> str:
    """The useful part of a requests connection error ("[Errno 111] Connection refused")."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if found:
        return found.group(0).strip()
    for hint in ("Name or service not known", "nodename nor servname", "timed out", "Connection refused",
                 "Connection reset", "certificate verify failed", "Remote end closed connection"):
        if hint in text:
            return hint
    return type(exc).__name__


def _body_excerpt(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return one_line(response.text, 160) or "(empty body)"
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if data.get(key):
                return one_line(data[key] if isinstance(data[key], str) else json.dumps(data[key]), 160)
    return one_line(json.dumps(data), 160)


class Api:
    """One endpoint, one session: auth header, timeouts, 429 backoff and one-line errors."""

    def __init__(self, endpoint: Endpoint, api_key: str | None, *, on_notice: Callable[[str], None] = warn,
                 sleep: Callable[[float], None] = time.sleep):
        self.endpoint = endpoint
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        if api_key and not endpoint.local:
            register_secret(api_key)
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self._notice = on_notice
        self._sleep = sleep

    def call(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
             timeout: float = 30.0, retry_transient: bool = False, max_rate_retries: int = 6) -> dict[str, Any]:
        """Send one request and return its JSON object, or raise :class:`ClientError`.

        429 is always retried with backoff (RunPod rejected the request, so a retry cannot double it);
        connection errors, read timeouts and 502/503/504 only when ``retry_transient`` (safe reads).
        """
        url = self.endpoint.url(path)
        rate_retries = transient_retries = 0
        while True:
            try:
                response = self.session.request(method, url, json=body, params=params, timeout=(10, timeout))
            except requests.Timeout as exc:
                if retry_transient and transient_retries < 3:
                    transient_retries += 1
                    self._notice(f"no reply from {self.endpoint.host} ({_network_reason(exc)}), retrying")
                    continue
                raise ClientError("network", f"no reply from {self.endpoint.host} within {timeout:.0f}s ({method} {path})") from None
            except requests.ConnectionError as exc:
                if retry_transient and transient_retries < 3:
                    transient_retries += 1
                    self._notice(f"cannot reach {self.endpoint.host} ({_network_reason(exc)}), retrying in 2s")
                    self._sleep(2.0)
                    continue
                raise ClientError("network", f"cannot reach {self.endpoint.url('')}: {_network_reason(exc)}") from None
            except requests.RequestException as exc:
                raise ClientError("network", f"request to {self.endpoint.host} failed: {_network_reason(exc)}") from None

            code = response.status_code
            if code == 429 and rate_retries < max_rate_retries:
                delay = _retry_after(response, default=min(30.0, 2.0 ** rate_retries))
                rate_retries += 1
                self._notice(f"rate limited by {self.endpoint.host} (HTTP 429), retrying in {delay:.0f}s")
                self._sleep(delay)
                continue
            if code in (502, 503, 504) and retry_transient and transient_retries < 3:
                transient_retries += 1
                self._notice(f"HTTP {code} from {self.endpoint.host}, retrying in 2s")
                self._sleep(2.0)
                continue
            return self._decode(response, method, path)

    def _decode(self, response: requests.Response, method: str, path: str) -> dict[str, Any]:
        code = response.status_code
        where = f"{method} {path}"
        if code in (401, 403):
            raise ClientError("auth", f"HTTP {code} from {self.endpoint.host}: the API key was refused; "
                                      "check RUNPOD_API_KEY or --api-key")
        if code == 404:
            raise ClientError("not_found", f"HTTP 404 for {where} on {self.endpoint.host}: {_body_excerpt(response)}")
        if code == 429:
            raise ClientError("rate_limited", f"still rate limited (HTTP 429) by {self.endpoint.host}; try again later")
        if code in (400, 413, 422):
            raise ClientError("usage", f"HTTP {code}: the request was rejected: {_body_excerpt(response)}")
        if code >= 400:
            hint = " (the dev server answers 500 when the handler returns {} or a non-string error)" if (
                self.endpoint.local and code == 500) else ""
            raise ClientError("protocol", f"HTTP {code} for {where} on {self.endpoint.host}: {_body_excerpt(response)}{hint}")
        try:
            data = response.json()
        except ValueError:
            raise ClientError("protocol", f"{where} on {self.endpoint.host} did not answer JSON: {_body_excerpt(response)}") from None
        if not isinstance(data, dict):
            raise ClientError("protocol", f"{where} on {self.endpoint.host} answered {type(data).__name__}, not an object")
        return data


def _retry_after(response: requests.Response, default: float) -> float:
    try:
        return max(0.0, min(60.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return default


# --- formatting --------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"  # pragma: no cover - unreachable


# --- progress display ----------------------------------------------------------------------------


def describe_progress(output: Any) -> tuple[str, str, float | None]:
    """(phase, detail, percent) for a progress payload; tolerant of anything JSON.

    The worker sends ``{"phase","step","total","percent","eta_s","node"}``; other shapes are shown
    as compact text in ``phase``.
    """
    if output is None:
        return "", "", None
    if isinstance(output, dict) and ("phase" in output or "percent" in output):
        phase = str(output.get("phase") or "").replace("_", " ")
        details: list[str] = []
        step, total = output.get("step"), output.get("total")
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total:
            details.append(f"step {int(step)}/{int(total)}")
        eta = output.get("eta_s")
        if isinstance(eta, (int, float)) and not isinstance(eta, bool):
            details.append(f"eta {fmt_duration(eta)}")
        percent = output.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            percent = None
        else:
            percent = max(0.0, min(100.0, float(percent)))
        return phase, " ".join(details), percent
    text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))
    return one_line(text, 60), "", None


def progress_bar(percent: float | None, width: int = 20) -> str:
    if percent is None:
        return ""
    filled = int(round(width * percent / 100.0))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {percent:5.1f}%"


class ProgressDisplay:
    """Status, elapsed time and a progress bar on stderr.

    ``bar``: one line redrawn in place (a terminal). ``plain``: a new line only when the state or phase
    changes, every 10 percent, or every 30 s (logs, CI, pipes). ``none``: silent.
    """

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._last_key: tuple[str, str] | None = None
        self._last_bucket = -1
        self._last_line_at = 0.0
        self._state = ""
        self._phase = ""
        self._detail = ""
        self._percent: float | None = None
        self._extra = ""
        self._drawn = False
        self._ticker: threading.Thread | None = None
        self._ticking = threading.Event()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def update(self, reply: dict[str, Any], extra: str = "") -> None:
        status = str(reply.get("status") or "?")
        phase, detail, percent = "", "", None
        if status in ("IN_PROGRESS", "RUNNING"):
            phase, detail, percent = describe_progress(reply.get("output"))
        with self._lock:
            self._state, self._phase, self._detail, self._percent, self._extra = status, phase, detail, percent, extra
            if self.mode == "bar":
                self._draw()
            elif self.mode == "plain":
                key = (status, phase)
                bucket = int(percent // 10) if percent is not None else -1
                now = self.clock()
                if key != self._last_key or bucket > self._last_bucket or now - self._last_line_at >= 30:
                    self._last_key, self._last_bucket, self._last_line_at = key, bucket, now
                    self._write_line(self._compose(bar=False))

    def note(self, text: str) -> None:
        """A message line that does not disturb the bar."""
        if self.mode == "none":
            return
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self._drawn = False
            self._write_line(text)
            if self.mode == "bar" and self._state:
                self._draw()

    def start_ticker(self, every: float = 1.0) -> None:
        """Redraw the elapsed time while the main thread is blocked in a long request (local API)."""
        if self.mode != "bar" or self._ticker:
            return
        self._ticking.set()

        def tick() -> None:
            while self._ticking.is_set():
                time.sleep(every)
                with self._lock:
                    if self._ticking.is_set():
                        self._draw()

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    def finish(self) -> None:
        self._ticking.clear()
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._drawn = False

    def _compose(self, bar: bool) -> str:
        parts = [f"[{fmt_duration(self.elapsed()):>7}]", self._state]
        if self._phase:
            parts.append(self._phase)
        if self._percent is not None:
            parts.append(progress_bar(self._percent) if bar else f"{self._percent:.0f}%")
        if self._detail:
            parts.append(self._detail)
        if self._extra:
            parts.append(self._extra)
        return "  ".join(parts)

    def _draw(self) -> None:
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        line = redact(self._compose(bar=True))[:width]
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._drawn = True

    def _write_line(self, text: str) -> None:
        self.stream.write(redact(text) + "\n")
        self.stream.flush()


# --- failures ----------------------------------------------------------------------------------

_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{1,63}")


@dataclass
class Failure:
    code: str
    message: str
    logs_tail: list[str] = field(default_factory=list)


def split_error(error: str) -> tuple[str | None, str, list[str]]:
    """``"CODE: message"`` → (code, message, []). The SDK's JSON error for a raised exception →
    (exception class, its message, last traceback lines). Anything else → (None, text, [])."""
    text = error.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and ("error_message" in data or "error_type" in data):
            kind = re.search(r"'([^']+)'", str(data.get("error_type", "")))
            code = kind.group(1).rsplit(".", 1)[-1] if kind else "HANDLER_EXCEPTION"
            trace = str(data.get("error_traceback") or "").rstrip().splitlines()[-8:]
            return code, one_line(data.get("error_message", "")), trace
    head, sep, tail = text.partition(": ")
    if sep and _ERROR_CODE.fullmatch(head):
        return head, tail, []
    return None, text, []


def _lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.rstrip("\n").splitlines()
    if isinstance(value, list):
        return [str(item).rstrip("\n") for item in value]
    return []


def parse_failure(reply: dict[str, Any]) -> Failure:
    """Code, message and logs tail of a FAILED / CANCELLED / TIMED_OUT reply (or a failed output)."""
    output = reply.get("output") if isinstance(reply.get("output"), dict) else {}
    code = output.get("error_code") or None
    message = output.get("error_message") or None
    logs = _lines(output.get("logs_tail"))
    error = reply.get("error") if reply.get("error") is not None else output.get("error")
    if isinstance(error, str) and error.strip():
        parsed_code, parsed_message, trace = split_error(error)
        code = code or parsed_code
        message = message or parsed_message
        logs = logs or trace
    elif error:
        message = message or one_line(json.dumps(error))
    status = str(reply.get("status") or "")
    defaults = {
        "TIMED_OUT": ("TIMED_OUT", "RunPod stopped the job at the endpoint's execution timeout"),
        "CANCELLED": ("CANCELLED", "the job was cancelled"),
    }
    default_code, default_message = defaults.get(status, ("UNSPECIFIED", "the job failed without an error message"))
    return Failure(str(code or default_code), str(message or default_message), logs)


def print_failure(reply: dict[str, Any], elapsed: float) -> None:
    failure = parse_failure(reply)
    status = reply.get("status") or "FAILED"
    say(f"Job {reply.get('id', '?')} {status} after {fmt_duration(elapsed)}")
    say(f"  code     {failure.code}")
    say(f"  message  {failure.message}")
    if failure.logs_tail:
        say(f"  logs tail (last {len(failure.logs_tail)} lines):")
        for line in failure.logs_tail:
            say(f"    | {line}")


# --- the job runner ------------------------------------------------------------------------------


@dataclass
class RunOptions:
    sync: bool = False
    timeout: float = 1800.0
    poll_interval: float = 2.0
    cancel_on_abort: bool = True
    health_every: float = 15.0  # while IN_QUEUE, ask /health this often to show workers and queue


class JobRunner:
    """Submit one job and follow it to a final state.

    RunPod: ``POST /run`` then ``GET /status/{id}`` every ``poll_interval`` (default), or
    ``POST /runsync?wait=`` and polling if that returns early (``sync``). Local API: ``POST /run`` then
    ``POST /status/{id}``, which runs the job inside that request (or one ``POST /runsync``).
    """

    def __init__(self, api: Api, options: RunOptions, display: ProgressDisplay,
                 clock: Callable[[], float] = time.monotonic):
        self.api = api
        self.options = options
        self.display = display
        self.clock = clock
        self.job_id: str | None = None
        self.started = clock()

    @property
    def local(self) -> bool:
        return self.api.endpoint.local

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.options.timeout - self.elapsed()

    def run(self, job_input: dict[str, Any]) -> dict[str, Any]:
        """The final status reply (``status`` in FINAL_STATES). Ctrl-C and --timeout cancel the job."""
        self.started = self.clock()
        try:
            reply = self._run_local(job_input) if self.local else self._run_runpod(job_input)
        except KeyboardInterrupt:
            self.display.finish()
            raise Interrupted(self._abort("interrupted"), self.job_id) from None
        finally:
            self.display.finish()
        return reply

    def _run_runpod(self, job_input: dict[str, Any]) -> dict[str, Any]:
        body = {"input": job_input}
        if self.options.sync:
            wait_ms = int(min(max(round(self.remaining()) * 1000, RUNSYNC_WAIT_MS[0]), RUNSYNC_WAIT_MS[1]))
            reply = self._submit("/runsync", body, params={"wait": wait_ms}, timeout=wait_ms / 1000 + 30)
        else:
            reply = self._submit("/run", body, params=None, timeout=30)
        self.display.start_ticker()  # keeps the elapsed time moving between polls (bar mode only)
        last_health = -1e9
        extra = ""
        while True:
            status = str(reply.get("status") or "")
            if status == "IN_QUEUE" and self.clock() - last_health >= self.options.health_every:
                last_health = self.clock()
                extra = self._queue_summary()
            elif status != "IN_QUEUE":
                extra = ""
            self.display.update(reply, extra)
            if status in FINAL_STATES:
                return reply
            if self.remaining() <= 0:
                raise ClientError("timeout", self._abort(f"no result within --timeout {self.options.timeout:g}s"), self.job_id)
            time.sleep(max(0.0, min(self.options.poll_interval, self.remaining())))
            try:
                reply = self.api.call("GET", f"/status/{self.job_id}", timeout=30, retry_transient=True)
            except ClientError as exc:
                if exc.kind == "not_found":
                    exc.message = (f"job {self.job_id} is gone from the endpoint (HTTP 404): its result expired "
                                   "or its TTL passed")
                exc.job_id = self.job_id
                raise

    def _submit(self, path: str, body: dict[str, Any], params: dict | None, timeout: float) -> dict[str, Any]:
        try:
            reply = self.api.call("POST", path, body=body, params=params, timeout=timeout)
        except ClientError as exc:
            if exc.kind == "not_found":
                exc.message = (f"endpoint not found: {self.api.endpoint.base_url} answered HTTP 404 to POST {path}; "
                               "check the endpoint id")
            if exc.kind == "network" and path == "/runsync" and "no reply" in exc.message:
                exc.message += "; /runsync gave no job id to poll (use /run, the default, for long jobs)"
            raise
        job_id = reply.get("id")
        if not job_id and reply.get("status") not in FINAL_STATES:
            raise ClientError("protocol", f"POST {path} answered without a job id: {one_line(json.dumps(reply), 160)}")
        self.job_id = str(job_id) if job_id else None
        if job_id:
            self.display.note(f"job {job_id} submitted to {self.api.endpoint.describe()}")
        return reply

    def _queue_summary(self) -> str:
        try:
            health = self.api.call("GET", "/health", timeout=5, max_rate_retries=0)
        except ClientError:
            return ""
        jobs = health.get("jobs") if isinstance(health.get("jobs"), dict) else {}
        workers = health.get("workers") if isinstance(health.get("workers"), dict) else {}
        bits = []
        if "inQueue" in jobs:
            bits.append(f"{jobs['inQueue']} queued")
        if workers:
            bits.append(", ".join(f"{count} {name}" for name, count in workers.items()) + " workers")
        return "(" + "; ".join(bits) + ")" if bits else ""

    def _run_local(self, job_input: dict[str, Any]) -> dict[str, Any]:
        body = {"input": job_input}
        timeout = max(1.0, self.remaining())
        try:
            if self.options.sync:
                self.display.note(f"running on {self.api.endpoint.describe()} with /runsync (no progress on the local API)")
                self.display.update({"status": "IN_PROGRESS"})
                self.display.start_ticker()
                reply = self.api.call("POST", "/runsync", body=body, timeout=timeout)
            else:
                submitted = self._submit("/run", body, params=None, timeout=30)
                if submitted.get("status") in FINAL_STATES:
                    return submitted
                self.display.note("the local API runs the job inside POST /status (no progress until it ends)")
                self.display.update({"status": "IN_PROGRESS"})
                self.display.start_ticker()
                reply = self.api.call("POST", f"/status/{self.job_id}", timeout=max(1.0, self.remaining()))
        except ClientError as exc:
            if exc.kind == "network" and "no reply" in exc.message:
                raise ClientError("timeout", f"no result within --timeout {self.options.timeout:g}s; the local API "
                                             "cannot cancel, the job keeps running in the dev server", self.job_id) from None
            exc.job_id = self.job_id
            raise
        self.display.update(reply)
        return reply

    def _abort(self, why: str) -> str:
        """Cancel the remote job if we can; return one line saying what happened."""
        if not self.job_id:
            return f"{why} before a job id arrived; nothing to cancel"
        if self.local:
            return f"{why}; job {self.job_id} keeps running: the local API does not support cancel"
        if not self.options.cancel_on_abort:
            return (f"{why}; job {self.job_id} left running (--no-cancel); "
                    f"status: GET {self.api.endpoint.url('/status/' + self.job_id)}")
        try:
            reply = self.api.call("POST", f"/cancel/{self.job_id}", timeout=5, max_rate_retries=1)
        except ClientError as exc:
            return f"{why}; cancelling job {self.job_id} failed: {exc.message}"
        except KeyboardInterrupt:
            return f"{why}; gave up cancelling job {self.job_id}"
        return f"{why}; cancelled job {self.job_id} (RunPod says {reply.get('status', '?')})"


# --- command-line glue -----------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def add_connection_arguments(parser: argparse.ArgumentParser, default_timeout: float) -> None:
    parser.add_argument("endpoint", nargs="?", default=os.environ.get("TENEXA_ENDPOINT", ""),
                        help="RunPod endpoint id, RunPod URL (https://api.runpod.ai/v2/<ID>[/run]), or the "
                             "worker's local API (http://127.0.0.1:8000); default $TENEXA_ENDPOINT")
    group = parser.add_argument_group("connection")
    group.add_argument("--api-key", default=None,
                       help="RunPod API key (default $RUNPOD_API_KEY; prefer the variable: flags show in `ps`)")
    group.add_argument("--api", choices=("auto", "runpod", "local"), default="auto",
                       help="API flavour; auto: a URL ending in /v2/<id> or a bare id is RunPod, anything else local")
    group.add_argument("--sync", action="store_true",
                       help="use POST /runsync?wait=... instead of /run + /status polling (fine for short jobs)")
    group.add_argument("--timeout", type=_positive_float, default=default_timeout, metavar="SECONDS",
                       help=f"give up (and cancel the job) after this long (default {default_timeout:g})")
    group.add_argument("--poll", type=_positive_float, default=2.0, metavar="SECONDS",
                       help="seconds between two /status polls (default 2)")
    group.add_argument("--no-cancel", action="store_true",
                       help="leave the remote job running on Ctrl-C or --timeout")
    group.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto",
                       help="progress display on stderr; auto: bar on a terminal, plain lines otherwise")
    group.add_argument("--json", action="store_true",
                       help="print the raw final reply as JSON on stdout (progress still goes to stderr)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def connect(args: argparse.Namespace) -> JobRunner:
    """Endpoint, credentials, display and runner from the parsed common arguments."""
    endpoint = resolve_endpoint(args.endpoint, args.api)
    api_key = args.api_key or os.environ.get("RUNPOD_API_KEY") or None
    register_secret(api_key)
    if not endpoint.local and not api_key:
        raise ClientError("usage", "no API key: set RUNPOD_API_KEY or pass --api-key (the local API needs none)")
    display = ProgressDisplay("none" if args.progress == "none" else args.progress)
    options = RunOptions(sync=args.sync, timeout=args.timeout, poll_interval=args.poll,
                         cancel_on_abort=not args.no_cancel)
    return JobRunner(Api(endpoint, api_key, on_notice=display.note), options, display)


def print_json(data: Any) -> None:
    say(json.dumps(data, indent=2, sort_keys=False))


def client_error_json(exc: ClientError) -> dict[str, Any]:
    return {"client_error": {"kind": exc.kind, "message": redact(exc.message), "job_id": exc.job_id}}


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main`` and turn client errors and Ctrl-C into one line and an exit code (no tracebacks)."""
    json_mode = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except ClientError as exc:
        warn(f"error: {exc.message}")
        if json_mode:
            print_json(client_error_json(exc))
        return EXIT_PROBLEM
    except Interrupted as exc:
        warn(exc.message)
        if json_mode:
            print_json({"client_error": {"kind": "interrupted", "message": redact(exc.message), "job_id": exc.job_id}})
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        warn("interrupted")
        return EXIT_INTERRUPTED
