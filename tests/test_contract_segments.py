"""A clip of several windows through the worker's generate path against the ComfyUI double: a fault, a deadline
or a cancel inside a later window stops the whole clip, is reported with its code, removes the prompt and leaves
no file behind; the next job works."""

from __future__ import annotations

import base64
import io
import tempfile
import threading

import pytest
from comfy_double import Behaviour
from PIL import Image
from support import settings_for

from tenexa import workflows
from tenexa.comfy import ComfyClient
from tenexa.errors import ErrorCode, TenexaError
from tenexa.generate import generate

PNG = base64.b64encode((lambda b: (Image.new("RGB", (64, 48), (20, 120, 200)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())).decode()
JOB = {"image_base64": PNG, "frames": 13, "width": 64, "height": 64, "seed": 3, "steps": 2}  # windows of 5: 5 + 5 + 5


def second_window_sampler(double) -> str:
    """The id the worker gives window 2's high-noise sampler (found in the graph it submitted)."""
    graph = double.calls.prompts[-1]["prompt"]
    return min((n for n, spec in graph.items() if spec["class_type"] == "WanVideoSampler" and int(n) >= workflows.SEGMENT_ID_STRIDE),
               key=int)


def files_left(double, scratch) -> list:
    return [p for kind in ("input", "output", "temp") for p in (double.root / kind).rglob("*") if p.is_file()] + list(scratch.iterdir())


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def run(double, cancel=None, progress=None, **env):
    settings = settings_for(double, MAX_WINDOW_FRAMES="5", PROGRESS_INTERVAL="0", **env)
    return generate("seg", dict(JOB), settings=settings, client=ComfyClient(double.url), cancel=cancel,
                    send_progress=progress.append if progress is not None else None)


def locate_second_window(double, scratch) -> str:
    """Run the clip once as it is, to learn window 2's sampler id; check the clip is three windows of 5."""
    out = run(double)
    assert out["used"]["segments"] == [5, 5, 5] and out["frames"] == 13
    assert files_left(double, scratch) == []
    return second_window_sampler(double)


def test_a_fault_in_the_second_window_fails_the_clip_and_leaves_nothing(comfy_double, scratch):
    node = locate_second_window(comfy_double, scratch)
    comfy_double.behaviour = Behaviour("error", at_node=node)
    progress: list[dict] = []
    with pytest.raises(TenexaError) as info:
        run(comfy_double, progress=progress)
    assert info.value.code is ErrorCode.GENERATION_ERROR and f"node {node}" in info.value.message
    # progress followed the clip into window 2, where it failed; window 3 never started
    assert {p.get("segment") for p in progress if p["phase"].startswith("sampling")} == {1, 2}
    assert files_left(comfy_double, scratch) == []
    comfy_double.behaviour = Behaviour("success")
    assert run(comfy_double)["frames"] == 13


def test_a_window_that_hangs_times_out_the_clip_removes_the_prompt_and_leaves_nothing(comfy_double, scratch):
    node = locate_second_window(comfy_double, scratch)
    comfy_double.behaviour = Behaviour("hang", at_node=node)
    with pytest.raises(TenexaError) as info:
        run(comfy_double, COMFY_EXEC_TIMEOUT="2")
    assert info.value.code is ErrorCode.TIMEOUT
    pid = comfy_double.calls.interrupts[-1]["prompt_id"]
    assert {"delete": [pid]} in comfy_double.calls.queue_deletes
    assert files_left(comfy_double, scratch) == []
    comfy_double.behaviour = Behaviour("success")
    assert run(comfy_double)["frames"] == 13


def test_a_cancel_during_the_second_window_stops_the_clip_and_leaves_nothing(comfy_double, scratch):
    node = locate_second_window(comfy_double, scratch)
    comfy_double.behaviour = Behaviour("hang", at_node=node)  # window 2 would run until interrupted
    cancel = threading.Event()

    class CancelInWindowTwo(list):
        def append(self, update):
            super().append(update)
            if update.get("segment") == 2:
                cancel.set()

    progress = CancelInWindowTwo()
    with pytest.raises(TenexaError) as info:
        run(comfy_double, cancel=cancel, progress=progress)
    assert info.value.code is ErrorCode.CANCELLED
    assert comfy_double.calls.interrupts and files_left(comfy_double, scratch) == []
    comfy_double.behaviour = Behaviour("success")
    assert run(comfy_double)["frames"] == 13
