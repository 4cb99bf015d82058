"""Interpolation on the real ComfyUI with tiny weights: RIFE 4.7 (random weights of the real architecture, at the
path the pack reads) inside the graph, and the worker's ffmpeg fallback on the real VHS's lossless output.
``pytest -k interpolat`` selects these; each is one small Wan run (64x64, 5 frames, 2 steps)."""

from __future__ import annotations

import base64
import io
import uuid
from dataclasses import replace

import av
from support import RecordingClient

from tenexa import interpolation
from tenexa.generate import generate

from .test_wan_cpu import START_PNG

FRAMES, SIZE, STEPS = 5, 64, 2


def job(prompt: str, **fields) -> dict:
    return {"image_base64": base64.b64encode(START_PNG).decode(), "prompt": prompt, "frames": FRAMES, "steps": STEPS,
            "width": SIZE, "height": SIZE, "seed": 11, "fps": 16, **fields}


def decoded(response: dict) -> tuple[int, float, str]:
    with av.open(io.BytesIO(base64.b64decode(response["video_base64"]))) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate), stream.codec_context.name


def test_rife_interpolation_doubles_frames_at_double_fps(comfy_server, cpu_settings, rife_checkpoint, test_prompt):
    client = RecordingClient(cpu_settings.comfy_url)
    progress: list[dict] = []
    settings = replace(cpu_settings, progress_interval=0.0)
    response = generate(f"it-rife-{uuid.uuid4().hex[:6]}", job(test_prompt, interpolate=2, interpolator="rife"),
                        settings=settings, client=client, send_progress=progress.append)

    assert response["used"]["interpolator"] == "rife"
    assert (response["frames"], response["fps"]) == (2 * FRAMES - 1, 32.0)  # (n - 1) * 2 + 1 frames at twice the rate
    assert decoded(response) == (2 * FRAMES - 1, 32.0, "h264")
    assert abs(response["duration_sec"] - (2 * FRAMES - 1) / 32.0) < 1e-3
    assert client.ran(interpolation.RIFE_CLASS), client.results[-1].timeline
    phases = [p["phase"] for p in progress]
    assert "interpolating" in phases
    assert phases.index("decoding") < phases.index("interpolating") < phases.index("delivering")


def test_ffmpeg_interpolation_fallback_on_the_real_lossless_output(comfy_server, cpu_settings, test_prompt):
    client = RecordingClient(cpu_settings.comfy_url)
    response = generate(f"it-ffmpeg-{uuid.uuid4().hex[:6]}", job(test_prompt, interpolate=2, interpolator="ffmpeg", codec="vp9"),
                        settings=cpu_settings, client=client)
    assert response["used"]["interpolator"] == "ffmpeg"
    assert interpolation.RIFE_CLASS not in [spec["class_type"] for spec in client.graphs[-1].values()]
    assert (response["frames"], response["fps"]) == (2 * FRAMES - 1, 32.0)
    assert decoded(response) == (2 * FRAMES - 1, 32.0, "vp9")
    assert (response["metadata"]["container"], response["metadata"]["mime_type"]) == ("webm", "video/webm")
    assert response["timings"]["interpolate_s"] > 0
