"""The ComfyUI client and the shared pipeline against the protocol double: every outcome a job can have."""

from __future__ import annotations

import threading
import time

import pytest
from comfy_double import Behaviour, reference_json
from support import settings_for

from tenexa.comfy import ComfyClient, format_node_errors
from tenexa.diagnostics import run_selftest, selftest_graph
from tenexa.errors import ErrorCode, TenexaError
from tenexa.pipeline import run_graph
from tenexa.workspace import JobWorkspace

PNG = (b"\x89PNG\r\n\x1a\n", )


def _run(double, *, deadline_s=20.0, cancel=None, client=None, events=None):
    client = client or ComfyClient(double.url, crash_grace=2.0)
    workspace = JobWorkspace(double.root, "job-1")
    graph = selftest_graph(workspace.input_name("in.png"), workspace.output_prefix)
    try:
        return run_graph(client, graph, workspace=workspace, images={"in.png": b"png-bytes"},
                         deadline=time.monotonic() + deadline_s, cancel=cancel,
                         on_event=(lambda k, d: events.append(k)) if events is not None else None)
    finally:
        workspace.cleanup()


def _leftovers(double):
    return [p for kind in ("input", "output", "temp") for p in (double.root / kind).rglob("*") if p.is_file()]


def test_success_reads_real_video_and_leaves_no_files(comfy_double):
    events: list[str] = []
    result = _run(comfy_double, events=events)
    assert result.run.status == "success"
    assert (result.video.frames, result.video.width, result.video.height, result.video.fps) == (9, 64, 64, 8.0)
    assert result.output.filename.endswith(".mp4") and result.output.subfolder.startswith("tenexa/job-1-")
    assert events[0] == "execution_start" and "execution_success" in events
    body = comfy_double.calls.prompts[0]
    assert body["client_id"], "events are routed by client_id: without it ComfyUI sends none"
    assert _leftovers(comfy_double) == []


def test_rejected_prompt_lists_node_errors(comfy_double):
    comfy_double.behaviour = Behaviour("reject", reject_body=reference_json("err_b2_value_errors.json")["response"]["json"])
    with pytest.raises(TenexaError) as info:
        _run(comfy_double)
    err = info.value
    assert err.code is ErrorCode.QUEUE_FAILED
    assert "node 2 (ImageScale) input upscale_method" in err.message
    assert "node 3 (RepeatImageBatch) input amount" in err.message
    assert "HTTP 400" in err.message and "\n" not in err.message
    assert err.details["node_errors"]["2"]["class_type"] == "ImageScale"


def test_model_names_missing_become_model_missing(comfy_double):
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"122": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                                "details": "model: 'Wan2_2-HIGH.safetensors' not in []",
                                                "extra_info": {"input_name": "model"}}],
                                    "dependent_outputs": ["131"], "class_type": "WanVideoModelLoader"}}}
    comfy_double.behaviour = Behaviour("reject", reject_body=body)
    with pytest.raises(TenexaError) as info:
        _run(comfy_double)
    assert info.value.code is ErrorCode.MODEL_MISSING
    assert "node 122 (WanVideoModelLoader) input model" in info.value.message


def test_unknown_class_rejection_is_one_clear_line():
    body = reference_json("err_a2_unknown_class_plus_valid.json")["response"]["json"]
    line = format_node_errors(body)
    assert "WanVideoEnhancedBlockSwap does not exist" in line and "Node ID '#5'" in line


def test_runtime_error_names_node_and_exception(comfy_double):
    comfy_double.behaviour = Behaviour("error")
    with pytest.raises(TenexaError) as info:
        _run(comfy_double)
    assert info.value.code is ErrorCode.GENERATION_ERROR
    assert "(VHS_VideoCombine) failed: UnidentifiedImageError" in info.value.message
    assert _leftovers(comfy_double) == []


def test_deadline_interrupts_dequeues_and_next_job_works(comfy_double):
    comfy_double.behaviour = Behaviour("hang")
    started = time.monotonic()
    with pytest.raises(TenexaError) as info:
        _run(comfy_double, deadline_s=1.5)
    assert info.value.code is ErrorCode.TIMEOUT
    assert time.monotonic() - started < 5
    prompt_id = comfy_double.calls.interrupts[-1]["prompt_id"]
    assert comfy_double.calls.queue_deletes[-1] == {"delete": [prompt_id]}
    comfy_double.behaviour = Behaviour("success")
    assert _run(comfy_double).run.status == "success"


def test_cancel_interrupts_comfy(comfy_double):
    comfy_double.behaviour = Behaviour("hang")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(TenexaError) as info:
        _run(comfy_double, cancel=cancel)
    assert info.value.code is ErrorCode.CANCELLED
    assert comfy_double.calls.interrupts and comfy_double.calls.interrupts[-1]["prompt_id"]


def test_dropped_socket_still_completes(comfy_double):
    comfy_double.behaviour = Behaviour("drop", node_seconds=0.2)
    result = _run(comfy_double)
    assert result.run.status == "success" and result.video.frames == 9


def test_no_output(comfy_double):
    comfy_double.behaviour = Behaviour("no_output")
    with pytest.raises(TenexaError) as info:
        _run(comfy_double)
    assert info.value.code is ErrorCode.NO_OUTPUT


def test_comfy_crash_mid_job_asks_for_a_fresh_worker(comfy_double):
    comfy_double.behaviour = Behaviour("crash", node_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(TenexaError) as info:
        _run(comfy_double)
    assert info.value.code is ErrorCode.COMFY_CRASHED and info.value.refresh_worker
    assert time.monotonic() - started < 10


def test_comfy_down_is_not_ready_quickly(tmp_path):
    from comfy_double import free_port

    client = ComfyClient(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(TenexaError) as info:
        client.wait_until_ready(timeout=1.0, poll=0.2)
    assert info.value.code is ErrorCode.COMFY_NOT_READY
    assert time.monotonic() - started < 3
    assert client.is_up(timeout=0.2) is False


def test_selftest_report(comfy_double):
    report = run_selftest(settings_for(comfy_double), ComfyClient(comfy_double.url))
    assert report["ok"] is True, report
    assert report["video"]["frames"] == 9 and report["video"]["width"] == 64 and report["video"]["bytes"] > 0
    assert _leftovers(comfy_double) == []
