"""A small local stand-in of RunPod's production endpoint API, for testing the client scripts.

Serves ``/v2/<endpoint>/run``, ``/runsync``, ``/status/<id>`` (GET), ``/cancel/<id>``, ``/health`` on
127.0.0.1 in a thread, with the documented reply shapes (reference/runpod-sdk.md section 3). Each job
walks through a scripted list of status replies, one per poll; the last one repeats. Every request is
recorded so tests can assert on what the client sent.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ENDPOINT_ID = "standin-ep"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Scenario:
    """What the stand-in answers.

    ``statuses``: status replies (without ``id``) served one per ``GET /status``; the last repeats.
    ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
    ``rate_limit_first``: the first N requests get 429 with ``Retry-After: 0``.
    ``runsync_reply``: what ``/runsync`` answers (default: the first status reply).
    ``files``: extra paths (outside /v2) served as raw bytes, e.g. a presigned video URL.
    """

    statuses: list[dict[str, Any]] = field(default_factory=lambda: [{"status": "IN_QUEUE"}])
    api_key: str | None = None
    rate_limit_first: int = 0
    runsync_reply: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=lambda: {
        "jobs": {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 1, "retried": 0},
        "workers": {"idle": 0, "running": 1}})


class RunPodStandIn:
    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.requests: list[Recorded] = []
        self.polls: dict[str, int] = {}
        self.cancelled: set = set()
        self._lock = threading.Lock()
        self._job_counter = 0
        self._status_seen = threading.Event()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle --
    def start(self) -> RunPodStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def endpoint_url(self) -> str:
        return f"{self.root}/v2/{ENDPOINT_ID}"

    def wait_for_status_poll(self, timeout: float = 10.0) -> bool:
        return self._status_seen.wait(timeout)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    # -- serving --
    def _reply(self, http: BaseHTTPRequestHandler, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        http.send_response(code)
        http.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json")
        http.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            http.send_header(key, value)
        http.end_headers()
        http.wfile.write(data)

    def _status_reply(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            if job_id in self.cancelled:
                return {"id": job_id, "status": "CANCELLED"}
            index = self.polls.get(job_id, 0)
            self.polls[job_id] = index + 1
        statuses = self.scenario.statuses
        reply = dict(statuses[min(index, len(statuses) - 1)])
        reply["id"] = job_id
        return reply

    def _handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        with self._lock:
            self.requests.append(Recorded(method, parts.path, parse_qs(parts.query), dict(http.headers.items()), body))
            limited = len(self.requests) <= self.scenario.rate_limit_first

        if parts.path in self.scenario.files and method == "GET":
            self._reply(http, 200, self.scenario.files[parts.path])
            return
        if limited:
            self._reply(http, 429, {"error": "rate limited"}, {"Retry-After": "0"})
            return
        if self.scenario.api_key is not None and http.headers.get("Authorization") != f"Bearer {self.scenario.api_key}":
            self._reply(http, 401, {"error": "Unauthorized"})
            return
        segments = parts.path.strip("/").split("/")
        if len(segments) < 3 or segments[0] != "v2" or segments[1] != ENDPOINT_ID:
            self._reply(http, 404, {"error": "endpoint not found"})
            return
        operation, rest = segments[2], segments[3:]
        if operation in ("run", "runsync") and method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
                self._reply(http, 400, {"error": "input is required"})
                return
            with self._lock:
                self._job_counter += 1
                job_id = f"job-{self._job_counter}"
            if operation == "run":
                self._reply(http, 200, {"id": job_id, "status": "IN_QUEUE"})
            else:
                reply = dict(self.scenario.runsync_reply or self._status_reply(job_id))
                reply["id"] = job_id
                self._reply(http, 200, reply)
        elif operation == "status" and rest and method == "GET":
            self._status_seen.set()
            self._reply(http, 200, self._status_reply(rest[0]))
        elif operation == "cancel" and rest and method == "POST":
            with self._lock:
                self.cancelled.add(rest[0])
            self._reply(http, 200, {"id": rest[0], "status": "CANCELLED"})
        elif operation == "health" and method == "GET":
            self._reply(http, 200, self.scenario.health)
        else:
            self._reply(http, 404 if method == "POST" else 405, {"error": "not found"})
