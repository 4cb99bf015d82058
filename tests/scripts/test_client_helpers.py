"""Unit tests of scripts/_client.py: endpoint resolution, failure parsing, progress text."""

from __future__ import annotations

import io

import _client as client
import pytest


@pytest.mark.parametrize("text, base, local", [
    ("abc123xyz", "https://api.runpod.ai/v2/abc123xyz", False),
    ("https://api.runpod.ai/v2/abc123xyz", "https://api.runpod.ai/v2/abc123xyz", False),
    ("https://api.runpod.ai/v2/abc123xyz/", "https://api.runpod.ai/v2/abc123xyz", False),
    ("https://api.runpod.ai/v2/abc123xyz/run", "https://api.runpod.ai/v2/abc123xyz", False),
    ("https://api.runpod.ai/v2/abc123xyz/runsync?wait=1000", "https://api.runpod.ai/v2/abc123xyz", False),
    ("https://api.runpod.ai/v2/abc123xyz/status/job-1", "https://api.runpod.ai/v2/abc123xyz", False),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000", True),
    ("http://127.0.0.1:8000/runsync", "http://127.0.0.1:8000", True),
    ("127.0.0.1:8000", "http://127.0.0.1:8000", True),
    ("localhost:8000/run", "http://localhost:8000", True),
    ("http://127.0.0.1:9999/v2/standin-ep/run", "http://127.0.0.1:9999/v2/standin-ep", False),
])
def test_resolve_endpoint(text: str, base: str, local: bool) -> None:
    endpoint = client.resolve_endpoint(text)
    assert (endpoint.base_url, endpoint.local) == (base, local)


def test_resolve_endpoint_override_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.resolve_endpoint("http://10.0.0.5:8000", api="runpod").local is False
    assert client.resolve_endpoint("https://api.runpod.ai/v2/x", api="local").local is True
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", "http://127.0.0.1:1234/v2/")
    assert client.resolve_endpoint("ep1").base_url == "http://127.0.0.1:1234/v2/ep1"


@pytest.mark.parametrize("text", ["", "   ", "not an id!", "ftp://host/x", "http://"])
def test_resolve_endpoint_rejects(text: str) -> None:
    with pytest.raises(client.ClientError) as caught:
        client.resolve_endpoint(text)
    assert caught.value.kind == "usage"


def test_parse_failure_prefers_worker_output() -> None:
    reply = {"status": "FAILED", "error": "MODEL_MISSING: short",
             "output": {"status": "failed", "error_code": "MODEL_MISSING", "error_message": "long message",
                        "logs_tail": "line 1\nline 2\n"}}
    failure = client.parse_failure(reply)
    assert (failure.code, failure.message, failure.logs_tail) == ("MODEL_MISSING", "long message", ["line 1", "line 2"])


@pytest.mark.parametrize("error, code, message", [
    ("INVALID_INPUT: steps: must be >= 1", "INVALID_INPUT", "steps: must be >= 1"),
    ("Job ID not found", "UNSPECIFIED", "Job ID not found"),
    ("handler: boom \ntraceback: x", "UNSPECIFIED", "handler: boom \ntraceback: x"),
    ('{"error_type": "<class \'ValueError\'>", "error_message": "boom", "error_traceback": "Traceback\\n  x\\nValueError: boom"}',
     "ValueError", "boom"),
])
def test_parse_failure_dev_server_errors(error: str, code: str, message: str) -> None:
    failure = client.parse_failure({"status": "FAILED", "error": error})
    assert (failure.code, failure.message) == (code, message)


def test_parse_failure_final_states_without_error() -> None:
    assert client.parse_failure({"status": "TIMED_OUT"}).code == "TIMED_OUT"
    assert client.parse_failure({"status": "CANCELLED"}).code == "CANCELLED"


@pytest.mark.parametrize("payload, expected", [
    ({"phase": "sampling_high", "step": 3, "total": 10, "percent": 30.0, "eta_s": 65, "node": "x"},
     ("sampling high", "step 3/10 eta 1m 05s", 30.0)),
    ({"phase": "queued", "step": None, "total": None, "percent": 0, "eta_s": None}, ("queued", "", 0.0)),
    ({"percent": 250}, ("", "", 100.0)),
    ({"phase": "x", "percent": "lots"}, ("x", "", None)),
    ("free text", ("free text", "", None)),
    ([1, 2], ("[1,2]", "", None)),
    (None, ("", "", None)),
])
def test_describe_progress_tolerates_any_json(payload: object, expected: tuple) -> None:
    assert client.describe_progress(payload) == expected


def test_plain_display_prints_on_changes_only() -> None:
    stream = io.StringIO()
    display = client.ProgressDisplay("plain", stream=stream, clock=lambda: 0.0)
    for percent in (10.0, 12.0, 15.0, 21.0):
        display.update({"status": "IN_PROGRESS", "output": {"phase": "sampling_high", "percent": percent}})
    display.update({"status": "COMPLETED"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines  # 10 %, 21 % (next bucket), COMPLETED
    assert "\r" not in stream.getvalue()


def test_bar_display_redraws_in_place_and_redacts() -> None:
    stream = io.StringIO()
    client.register_secret("sekrit-key-123")
    display = client.ProgressDisplay("bar", stream=stream, clock=lambda: 0.0)
    display.update({"status": "IN_PROGRESS", "output": {"phase": "decoding", "percent": 50.0}})
    display.update({"status": "IN_PROGRESS", "output": "leaked sekrit-key-123"})
    display.finish()
    text = stream.getvalue()
    assert "[##########----------]  50.0%" in text
    assert "\r\x1b[K" in text and "sekrit-key-123" not in text


def test_fmt_helpers() -> None:
    assert client.fmt_duration(5.0) == "5.0s"
    assert client.fmt_duration(125) == "2m 05s"
    assert client.fmt_duration(3725) == "1h 02m"
    assert client.fmt_bytes(512) == "512 B"
    assert client.fmt_bytes(3 * 1024 * 1024) == "3.00 MiB"


def test_clients_doc_lists_every_flag_and_exit_code() -> None:
    """docs/CLIENTS.md must not drift from the tools."""
    import re
    from pathlib import Path

    import send_test

    doc = (Path(client.__file__).resolve().parent.parent / "docs" / "CLIENTS.md").read_text()
    for flag, key, _kind, _help in send_test.GENERATE_PARAMETERS:
        assert f"`{flag}" in doc or f", `{flag}`" in doc, flag
        assert f"`{key}`" in doc or f", `{key}`" in doc, key
    codes = {int(code) for code in re.findall(r"^\| (\d+) \|", doc, re.M)}
    assert codes == {client.EXIT_OK, client.EXIT_JOB_FAILED, client.EXIT_PROBLEM, client.EXIT_INTERRUPTED}
