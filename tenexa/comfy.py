"""A small ComfyUI client: readiness, upload, submit, follow, fetch, interrupt.

One object owns the HTTP session, the WebSocket and every timeout; callers never see raw sockets.
It knows ComfyUI's protocol (see the recorded traces in the reference material) and nothing about Wan.

Following a prompt: the WebSocket is opened *before* ``POST /prompt`` (events are routed by ``client_id``);
``executing`` with ``node: null`` for our prompt id is the completion marker. A dropped socket is
reconnected with the same client id; while it is down, ``/history/{id}`` is polled, so a lost event never
hangs a job. ComfyUI unreachable for longer than ``crash_grace`` means it is gone (``COMFY_CRASHED``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import websocket

from tenexa.errors import ErrorCode, TenexaError
from tenexa.logs import log

EventHandler = Callable[[str, dict], None]
OBJECT_INFO_MAX_AGE = 600.0  # seconds a cached /object_info is trusted (see cached_object_info)


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    history: dict
    error: dict | None = None
    timeline: list[tuple[float, str | None]] = field(default_factory=list)  # (seconds since submit, node id)
    queue_wait_s: float = 0.0
    execution_s: float = 0.0


@dataclass(frozen=True)
class OutputFile:
    node: str
    filename: str
    subfolder: str
    type: str
    format: str | None = None
    key: str = ""  # the history list it came from: images, gifs, videos, audio, ...
    animated: bool = False


def format_node_errors(body: Any) -> str:
    """ComfyUI's 400 body as one line: the top error, then 'node id (class) input: message' per problem."""
    if not isinstance(body, dict):
        return str(body)[:500]
    parts = []
    error = body.get("error")
    if isinstance(error, dict):
        top = error.get("message") or error.get("type") or "prompt rejected"
        details = error.get("details")
        parts.append(f"{top} ({details})" if details and error.get("type") != "prompt_outputs_failed_validation" else top)
    for node_id, node in (body.get("node_errors") or {}).items():
        if not isinstance(node, dict):
            continue
        for err in node.get("errors") or []:
            input_name = (err.get("extra_info") or {}).get("input_name") or ""
            where = f"node {node_id} ({node.get('class_type', '?')})" + (f" input {input_name}" if input_name else "")
            text = err.get("details") or err.get("message") or err.get("type")
            parts.append(f"{where}: {err.get('message', '')}{' - ' + text if text and text != err.get('message') else ''}")
    return "; ".join(" ".join(p.split()) for p in parts)[:2000] or "prompt rejected"


def find_video_outputs(history_entry: dict) -> list[OutputFile]:
    """Video files in a history entry: VideoHelperSuite ``gifs``, core ``videos``, or ``images`` marked ``animated``."""
    found: list[OutputFile] = []
    for node_id, output in (history_entry.get("outputs") or {}).items():
        if not isinstance(output, dict):
            continue
        candidates = list(output.get("gifs") or []) + list(output.get("videos") or [])
        animated = output.get("animated") or []
        if any(bool(a) for a in animated):
            candidates += list(output.get("images") or [])
        for item in candidates:
            if isinstance(item, dict) and item.get("filename"):
                found.append(OutputFile(str(node_id), item["filename"], item.get("subfolder", ""), item.get("type", "output"), item.get("format")))
    found.sort(key=lambda f: (not f.filename.lower().endswith((".mp4", ".webm", ".mov", ".mkv")), f.node))
    return found


def find_output_files(history_entry: dict) -> list[OutputFile]:
    """Every file a history entry names, in node order: ``images`` (SaveImage, PreviewImage, and core SaveVideo
    with ``animated``), VideoHelperSuite ``gifs``, ``videos``, ``audio``, ... Entries without a file name (the
    ``text`` of PreviewAny) are not files; a file two nodes both report is listed once."""
    found: list[OutputFile] = []
    seen: set[tuple[str, str, str]] = set()
    for node_id, output in sorted((history_entry.get("outputs") or {}).items(), key=lambda item: _node_order(item[0])):
        if not isinstance(output, dict):
            continue
        animated = any(bool(a) for a in output.get("animated") or [])
        for key, items in output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str) or not item["filename"]:
                    continue
                where = (str(item.get("type", "output")), str(item.get("subfolder", "")), item["filename"])
                if where in seen:
                    continue
                seen.add(where)
                found.append(OutputFile(str(node_id), item["filename"], where[1], where[0], item.get("format"),
                                        key=key, animated=animated and key == "images"))
    return found


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), node_id) if str(node_id).isdigit() else (1 << 62, str(node_id))


class ComfyClient:
    def __init__(self, base_url: str, *, http_timeout: float = 10.0, crash_grace: float = 10.0, recv_timeout: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.ws_url = "ws" + self.base_url[len("http"):] + "/ws"
        self.http_timeout = http_timeout
        self.crash_grace = crash_grace
        self.recv_timeout = recv_timeout
        self.session = requests.Session()
        self.session.trust_env = False  # ComfyUI is local; never route it through a proxy
        self._schema_lock = threading.Lock()
        self._schema: tuple[float, dict] | None = None

    # -------------------------------------------------------------------------------------------- basics

    def _get(self, path: str, timeout: float | None = None, **kw: Any) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=timeout or self.http_timeout, **kw)

    def _post(self, path: str, timeout: float | None = None, **kw: Any) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=timeout or self.http_timeout, **kw)

    def system_stats(self, timeout: float = 2.0) -> dict:
        resp = self._get("/system_stats", timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def is_up(self, timeout: float = 0.3) -> bool:
        try:
            self.system_stats(timeout=timeout)
            return True
        except (requests.RequestException, ValueError):
            return False

    def wait_until_ready(self, timeout: float, poll: float = 0.5) -> float:
        """Seconds waited until /system_stats answered; COMFY_NOT_READY after ``timeout``."""
        start = time.monotonic()
        while True:
            try:
                self.system_stats(timeout=min(2.0, max(0.2, timeout)))
                return time.monotonic() - start
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() - start >= timeout:
                raise TenexaError(ErrorCode.COMFY_NOT_READY, f"ComfyUI at {self.base_url} did not answer within {timeout:g} s")
            time.sleep(poll)

    def object_info(self, timeout: float = 30.0) -> dict:
        resp = self._get("/object_info", timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def has_node(self, class_type: str, timeout: float = 5.0) -> bool:
        """Whether ComfyUI serves ``class_type`` (one class's ``/object_info``, not the 2 MB listing)."""
        try:
            resp = self._get(f"/object_info/{quote(class_type, safe='')}", timeout=timeout)
            return resp.status_code == 200 and class_type in resp.json()
        except (requests.RequestException, ValueError):
            return False

    def cached_object_info(self, max_age: float = OBJECT_INFO_MAX_AGE, *, refresh: bool = False) -> tuple[dict, float]:
        """``/object_info`` and its age in seconds, fetched again after ``max_age`` or when asked (``refresh``).

        The body is large (1.9 MB for the pinned stack) and ComfyUI lists every model folder to build it, so it
        is kept per worker. Node classes change only when ComfyUI restarts; model listings change when files are
        added, which is why callers refresh when the cached copy says something is missing.
        """
        with self._schema_lock:
            now = time.monotonic()
            if refresh or self._schema is None or now - self._schema[0] > max_age:
                self._schema = (now, self.object_info())
            fetched, info = self._schema
            return info, now - fetched

    def forget_object_info(self) -> None:
        """Drop the cached schema (ComfyUI disagreed with it: the next job fetches a fresh one)."""
        with self._schema_lock:
            self._schema = None

    def upload_image(self, data: bytes, name: str, subfolder: str = "") -> str:
        """Upload into ComfyUI's input folder; returns the value a LoadImage node takes."""
        files = {"image": (name, data, "image/png")}
        form = {"overwrite": "true", "type": "input", "subfolder": subfolder}
        try:
            resp = self._post("/upload/image", files=files, data=form)
        except requests.RequestException as exc:
            raise TenexaError(ErrorCode.COMFY_NOT_READY, f"image upload to ComfyUI failed ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise TenexaError(ErrorCode.QUEUE_FAILED, f"ComfyUI refused the image upload (HTTP {resp.status_code})")
        body = resp.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    def queue_prompt(self, graph: dict, client_id: str) -> str:
        try:
            resp = self._post("/prompt", json={"prompt": graph, "client_id": client_id})
        except requests.RequestException as exc:
            raise TenexaError(ErrorCode.COMFY_NOT_READY, f"could not submit to ComfyUI ({type(exc).__name__})") from None
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code != 200:
            details = body if isinstance(body, dict) else {}
            raise TenexaError(
                ErrorCode.QUEUE_FAILED,
                f"ComfyUI rejected the workflow (HTTP {resp.status_code}): {format_node_errors(body)}",
                details={"node_errors": details.get("node_errors", {}), "comfy_error": details.get("error")},
            )
        if not isinstance(body, dict) or "prompt_id" not in body:
            raise TenexaError(ErrorCode.QUEUE_FAILED, "ComfyUI answered /prompt without a prompt_id")
        return body["prompt_id"]

    def history(self, prompt_id: str, timeout: float | None = None) -> dict | None:
        """The finished history entry, or None while queued/running (ComfyUI answers ``{}`` then)."""
        resp = self._get(f"/history/{prompt_id}", timeout=timeout)
        resp.raise_for_status()
        return resp.json().get(prompt_id)

    def interrupt(self, prompt_id: str | None = None) -> None:
        try:
            self._post("/interrupt", json={"prompt_id": prompt_id} if prompt_id else None, timeout=3.0)
        except requests.RequestException as exc:
            log.warning("interrupt failed: %s", type(exc).__name__)

    def delete_queued(self, prompt_id: str) -> None:
        try:
            self._post("/queue", json={"delete": [prompt_id]}, timeout=3.0)
        except requests.RequestException as exc:
            log.warning("queue delete failed: %s", type(exc).__name__)

    def download(self, output: OutputFile, dest: Path, chunk: int = 1 << 20) -> int:
        """Stream a file from /view to ``dest`` (a remote ComfyUI works: no shared filesystem needed)."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        try:
            with self._get("/view", params=params, stream=True, timeout=self.http_timeout * 6) as resp:
                if resp.status_code != 200:
                    raise TenexaError(ErrorCode.NO_OUTPUT, f"ComfyUI could not serve {output.filename} (HTTP {resp.status_code})")
                size = 0
                with open(dest, "wb") as fh:
                    for block in resp.iter_content(chunk):
                        fh.write(block)
                        size += len(block)
        except requests.RequestException as exc:
            raise TenexaError(ErrorCode.NO_OUTPUT, f"downloading {output.filename} failed ({type(exc).__name__})") from None
        return size

    # ------------------------------------------------------------------------------------- run a prompt

    def _connect(self, client_id: str) -> websocket.WebSocket:
        ws = websocket.WebSocket()
        ws.connect(f"{self.ws_url}?clientId={client_id}", timeout=min(self.http_timeout, 5.0))
        ws.settimeout(self.recv_timeout)
        return ws

    def abort(self, prompt_id: str) -> None:
        """Stop our prompt whether it is running or still queued."""
        self.interrupt(prompt_id)
        self.delete_queued(prompt_id)

    def run_prompt(
        self,
        graph: dict,
        *,
        deadline: float,
        cancel: threading.Event | None = None,
        on_event: EventHandler | None = None,
        on_submitted: Callable[[str], None] | None = None,
    ) -> PromptResult:
        """Submit ``graph`` and follow it to the end. ``deadline`` is a ``time.monotonic()`` value."""
        cancel = cancel or threading.Event()
        client_id = uuid.uuid4().hex
        try:
            ws: websocket.WebSocket | None = self._connect(client_id)
        except (OSError, websocket.WebSocketException) as exc:
            raise TenexaError(ErrorCode.COMFY_NOT_READY, f"ComfyUI WebSocket unreachable ({type(exc).__name__})") from None
        try:
            submitted = time.monotonic()
            prompt_id = self.queue_prompt(graph, client_id)
            if on_submitted:
                on_submitted(prompt_id)
            follower = _Follower(self, client_id, prompt_id, submitted, deadline, cancel, on_event)
            return follower.run(ws)
        finally:
            if ws is not None:
                try:
                    ws.close()
                except Exception:  # noqa: BLE001 - closing a dead socket must not mask the real outcome
                    pass


class _Follower:
    """The state of following one prompt; split out so ``run_prompt`` reads as the steps it takes."""

    def __init__(self, client: ComfyClient, client_id: str, prompt_id: str, submitted: float, deadline: float,
                 cancel: threading.Event, on_event: EventHandler | None):
        self.client, self.client_id, self.prompt_id = client, client_id, prompt_id
        self.submitted, self.deadline, self.cancel, self.on_event = submitted, deadline, cancel, on_event
        self.started: float | None = None
        self.error: dict | None = None
        self.interrupted = False
        self.timeline: list[tuple[float, str | None]] = []
        self.last_poll = time.monotonic()
        self.unreachable_since: float | None = None

    def run(self, ws: websocket.WebSocket | None) -> PromptResult:
        while True:
            self._check_limits()
            if ws is None:
                ws = self._reconnect()
                entry = self._poll_history(force=True)
                if entry is not None:
                    return self._result(entry)
                continue
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                entry = self._poll_history()
                if entry is not None:
                    return self._result(entry)
                continue
            except (websocket.WebSocketConnectionClosedException, websocket.WebSocketException, OSError) as exc:
                log.warning("prompt %s: WebSocket dropped (%s); reconnecting", self.prompt_id, type(exc).__name__)
                try:
                    ws.close()
                except Exception:  # noqa: BLE001
                    pass
                ws = None
                continue
            if isinstance(frame, bytes) or not frame:
                continue  # binary previews and text frames (type 1/3/4): not ours to interpret
            if self._handle(frame):
                return self._result(self._final_history())

    def _handle(self, frame: str) -> bool:
        """Process one text message; True when the completion marker for our prompt arrived."""
        try:
            msg = json.loads(frame)
        except ValueError:
            return False
        kind, data = msg.get("type"), msg.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id", self.prompt_id) != self.prompt_id:
            return False
        now = time.monotonic() - self.submitted
        if kind == "execution_start":
            self.started = time.monotonic()
        elif kind == "executing":
            node = data.get("node")
            self.timeline.append((now, node))
            if node is None and data.get("prompt_id") == self.prompt_id:
                return True
            if self.started is None:
                self.started = time.monotonic()
        elif kind == "execution_error":
            self.error = data
        elif kind == "execution_interrupted":
            self.interrupted = True
        if self.on_event is not None and kind != "status":
            try:
                self.on_event(kind, data)
            except Exception:  # noqa: BLE001 - a progress bug must never fail a job
                log.exception("progress handler failed")
        return False

    def _check_limits(self) -> None:
        if self.cancel.is_set():
            self.client.abort(self.prompt_id)
            raise TenexaError(ErrorCode.CANCELLED, "the job was cancelled; ComfyUI was interrupted")
        if time.monotonic() > self.deadline:
            self.client.abort(self.prompt_id)
            raise TenexaError(ErrorCode.TIMEOUT, "ComfyUI did not finish before COMFY_EXEC_TIMEOUT; the prompt was interrupted and removed from the queue")

    def _reachable(self) -> None:
        self.unreachable_since = None

    def _unreachable(self) -> None:
        now = time.monotonic()
        if self.unreachable_since is None:
            self.unreachable_since = now
        elif now - self.unreachable_since > self.client.crash_grace:
            raise TenexaError(
                ErrorCode.COMFY_CRASHED,
                f"ComfyUI stopped answering for {self.client.crash_grace:g} s during the job",
                refresh_worker=True,
            )

    def _reconnect(self) -> websocket.WebSocket | None:
        try:
            ws = self.client._connect(self.client_id)
            self._reachable()
            return ws
        except (OSError, websocket.WebSocketException):
            self._unreachable()
            time.sleep(0.5)
            return None

    def _poll_history(self, force: bool = False) -> dict | None:
        """Catch a completion the socket missed: every few seconds, or at once after a reconnect."""
        if not force and time.monotonic() - self.last_poll < 5.0:
            return None
        self.last_poll = time.monotonic()
        try:
            entry = self.client.history(self.prompt_id, timeout=5.0)
            self._reachable()
        except (requests.RequestException, ValueError):
            self._unreachable()
            return None
        if entry and (entry.get("status") or {}).get("completed") is not None and entry.get("status", {}).get("status_str"):
            return entry
        return None

    def _final_history(self) -> dict:
        # The marker is sent after the history entry is written, so one or two tries are enough.
        for _ in range(20):
            try:
                entry = self.client.history(self.prompt_id, timeout=5.0)
            except (requests.RequestException, ValueError):
                entry = None
            if entry:
                return entry
            time.sleep(0.1)
        return {}

    def _result(self, entry: dict) -> PromptResult:
        finished = time.monotonic()
        status_block = entry.get("status") or {}
        messages = status_block.get("messages") or []
        for name, data in messages:
            if name == "execution_error" and self.error is None:
                self.error = data
            if name == "execution_interrupted":
                self.interrupted = True
        if self.error is not None:
            status = "error"
        elif self.interrupted:
            status = "interrupted"
        else:
            status = "success" if status_block.get("status_str", "success") == "success" else "error"
        started = self.started or self.submitted
        return PromptResult(
            prompt_id=self.prompt_id,
            status=status,
            history=entry,
            error=self.error,
            timeline=self.timeline,
            queue_wait_s=round(started - self.submitted, 4),
            execution_s=round(finished - started, 4),
        )
