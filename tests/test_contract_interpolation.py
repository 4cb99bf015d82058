"""Interpolation through the worker's generate path against the ComfyUI double: which interpolator a job gets
(RIFE only when its checkpoint and node are there, never a run-time download), the graph it submits, the
ffmpeg fallback in the worker, progress and cleanup. ``pytest -k interpolat`` selects these."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import av
import pytest
from PIL import Image
from support import settings_for

from tenexa import interpolation
from tenexa.comfy import ComfyClient
from tenexa.errors import ErrorCode, TenexaError
from tenexa.generate import generate

PNG = base64.b64encode((lambda b: (Image.new("RGB", (64, 48), (20, 120, 200)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())).decode()


def job(**fields) -> dict:
    return {"image_base64": PNG, "frames": 9, "width": 64, "height": 64, "seed": 3, **fields}


def run(double, job_input: dict, progress: list | None = None) -> dict:
    settings = settings_for(double, PROGRESS_INTERVAL="0")  # every phase change goes out
    return generate("interp", job_input, settings=settings, client=ComfyClient(double.url),
                    send_progress=progress.append if progress is not None else None)


def install_rife_checkpoint(double) -> Path:
    path = interpolation.rife_checkpoint(double.root)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    return path


def submitted_classes(double) -> list[str]:
    return [n["class_type"] for n in double.calls.prompts[-1]["prompt"].values()]


def video_frames(response: dict) -> int:
    with av.open(io.BytesIO(base64.b64decode(response["video_base64"]))) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def test_interpolation_auto_without_checkpoint_falls_back_to_ffmpeg(comfy_double):
    progress: list[dict] = []
    out = run(comfy_double, job(interpolate=2, fps=16), progress)
    assert out["status"] == "completed"
    assert (out["frames"], out["fps"]) == (17, 32.0) and video_frames(out) == 17
    assert out["used"]["interpolator"] == "ffmpeg" and out["used"]["output_frames"] == 17
    assert "RIFE VFI" not in submitted_classes(comfy_double)  # never submitted: the pack would download weights
    video = comfy_double.calls.prompts[-1]["prompt"]
    (vhs,) = [n for n in video.values() if n["class_type"] == "VHS_VideoCombine"]
    assert vhs["inputs"]["format"] == "video/ffv1-mkv"  # the worker finishes from a lossless intermediate
    assert out["metadata"]["codec"] == "h264" and out["metadata"]["container"] == "mp4"
    assert "interpolate_s" in out["timings"]
    phases = [p["phase"] for p in progress]
    assert "interpolating" in phases and phases.index("interpolating") < phases.index("delivering")


def test_interpolation_uses_rife_when_checkpoint_and_node_are_there(comfy_double):
    install_rife_checkpoint(comfy_double)
    out = run(comfy_double, job(interpolate=3, fps=16))
    assert out["used"]["interpolator"] == "rife"
    assert "RIFE VFI" in submitted_classes(comfy_double)
    assert (out["frames"], out["fps"]) == (25, 48.0)  # the double makes (n-1)*m+1 frames, as the pack does
    assert "interpolate_s" not in out["timings"]


def test_interpolation_with_checkpoint_but_no_node_falls_back(comfy_double):
    install_rife_checkpoint(comfy_double)
    comfy_double.missing_classes.add("RIFE VFI")  # the pack did not load
    out = run(comfy_double, job(interpolate=2))
    assert out["used"]["interpolator"] == "ffmpeg" and out["frames"] == 17
    with pytest.raises(TenexaError) as info:
        run(comfy_double, job(interpolate=2, interpolator="rife"))
    assert info.value.code is ErrorCode.MODEL_MISSING and "RIFE VFI" in info.value.message


def test_explicit_rife_interpolator_without_checkpoint_submits_nothing(comfy_double):
    before = len(comfy_double.calls.prompts)
    with pytest.raises(TenexaError) as info:
        run(comfy_double, job(interpolate=2, interpolator="rife"))
    assert info.value.code is ErrorCode.MODEL_MISSING and "rife47" in info.value.message
    assert len(comfy_double.calls.prompts) == before and comfy_double.calls.uploads == []


def test_forced_ffmpeg_interpolation_ignores_rife_and_writes_the_asked_codec(comfy_double):
    install_rife_checkpoint(comfy_double)
    out = run(comfy_double, job(interpolate=2, interpolator="ffmpeg", codec="vp9", quality="medium",
                                adjust_fps_for_interpolation=False))
    assert out["used"]["interpolator"] == "ffmpeg" and "RIFE VFI" not in submitted_classes(comfy_double)
    assert (out["frames"], out["fps"], out["metadata"]["codec"], out["metadata"]["container"]) == (17, 16.0, "vp9", "webm")
    assert out["metadata"]["mime_type"] == "video/webm" and out["metadata"]["filename"].endswith(".webm")


def test_interpolation_one_is_no_interpolation(comfy_double):
    out = run(comfy_double, job(interpolate=1, interpolator="rife"))  # nothing to do: no checkpoint needed
    assert out["used"]["interpolator"] == "none" and out["frames"] == 9 and out["fps"] == 16.0


def private_scratch(monkeypatch, tmp_path) -> Path:
    """Job scratch folders in a folder of this test's own (other processes share the system temp folder)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_failed_ffmpeg_interpolation_leaves_nothing_behind(comfy_double, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise TenexaError(ErrorCode.GENERATION_ERROR, "ffmpeg interpolation failed: boom")

    monkeypatch.setattr(interpolation, "interpolate_video", broken)
    scratch = private_scratch(monkeypatch, tmp_path)
    with pytest.raises(TenexaError) as info:
        run(comfy_double, job(interpolate=2))
    assert info.value.code is ErrorCode.GENERATION_ERROR
    assert [p for kind in ("input", "output", "temp") for p in (comfy_double.root / kind).rglob("*") if p.is_file()] == []
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(("how", "code"), [("cancel", ErrorCode.CANCELLED), ("deadline", ErrorCode.TIMEOUT)])
def test_ffmpeg_interpolation_stops_at_a_cancel_or_the_deadline_and_cleans_up(comfy_double, monkeypatch, tmp_path, how, code):
    import threading

    from tenexa import generate as generate_module

    cancel = threading.Event()
    real = interpolation.interpolate_video

    def interrupted(*args, check, **kwargs):
        if how == "cancel":
            cancel.set()
        else:
            monkeypatch.setattr(generate_module.time, "monotonic", lambda: float("inf"))
        return real(*args, check=check, **kwargs)

    monkeypatch.setattr(interpolation, "interpolate_video", interrupted)
    scratch = private_scratch(monkeypatch, tmp_path)
    with pytest.raises(TenexaError) as info:
        generate("interp", job(interpolate=2), settings=settings_for(comfy_double), client=ComfyClient(comfy_double.url), cancel=cancel)
    assert info.value.code is code and "interpolation" in info.value.message
    assert [p for kind in ("input", "output", "temp") for p in (comfy_double.root / kind).rglob("*") if p.is_file()] == []
    assert list(scratch.iterdir()) == []
