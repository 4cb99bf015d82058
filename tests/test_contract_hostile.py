"""Hostile and broken input, fuzzing and a soak, through the real handler coroutine against the double.

Every case must end in a documented error code with a one-line message, no traceback, no file left in
ComfyUI's input/output/temp folders or our temp folder, and the next job must still work.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from comfy_double import Behaviour
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import settings_for

import handler
from tenexa.comfy import ComfyClient
from tenexa.errors import ErrorCode

CODES = {c.value for c in ErrorCode}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


GOOD = b64(png(Image.new("RGB", (64, 48), (20, 120, 200))))
_big = png(Image.new("RGB", (200, 200)).effect_spread(3))


def bomb(width=60000, height=60000) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


# (name, job input, expected code or "ok")
CORPUS = [
    ("input is a list", ["x"], "INVALID_INPUT"),
    ("input is a string", "hello", "INVALID_INPUT"),
    ("input is null", None, "INVALID_INPUT"),
    ("empty input", {}, "NO_IMAGE"),
    ("image is a number", {"image_base64": 12}, "INVALID_INPUT"),
    ("image is a dict", {"image_base64": {"a": 1}}, "INVALID_INPUT"),
    ("image is a list", {"image_base64": ["a"]}, "INVALID_INPUT"),
    ("invalid base64", {"image_base64": "!!!not-base64!!!"}, "INVALID_IMAGE"),
    ("base64 of text", {"image_base64": b64(b"hello world, not an image")}, "INVALID_IMAGE"),
    ("base64 of a PDF", {"image_base64": b64(b"%PDF-1.7\n1 0 obj<<>>endobj")}, "INVALID_IMAGE"),
    ("truncated PNG", {"image_base64": b64(_big[: len(_big) // 2])}, "INVALID_IMAGE"),
    ("truncated JPEG", {"image_base64": b64(png(Image.new("RGB", (200, 200)).effect_spread(3), "JPEG")[:300])}, "INVALID_IMAGE"),
    ("PNG signature only", {"image_base64": b64(b"\x89PNG\r\n\x1a\n")}, "INVALID_IMAGE"),
    ("decompression bomb", {"image_base64": b64(bomb())}, "IMAGE_TOO_LARGE"),
    ("too many pixels", {"image_base64": b64(bomb(9000, 9000))}, "IMAGE_TOO_LARGE"),
    ("huge base64 string", {"image_base64": "A" * (41 * 1024 * 1024)}, "IMAGE_TOO_LARGE"),
    ("data URI with junk", {"image_base64": "data:image/png;base64,@@@@"}, "INVALID_IMAGE"),
    ("CMYK JPEG converts", {"image_base64": b64(png(Image.new("CMYK", (64, 48)), "JPEG")), "frames": 9}, "ok"),
    ("RGBA converts", {"image_base64": b64(png(Image.new("RGBA", (64, 48), (1, 2, 3, 4)))), "frames": 9}, "ok"),
    ("16-bit converts", {"image_base64": b64(png(Image.new("I;16", (64, 48), 30000))), "frames": 9}, "ok"),
    ("palette converts", {"image_base64": b64(png(Image.new("P", (64, 48), 5))), "frames": 9}, "ok"),
    ("animated GIF converts", {"image_base64": b64(png(Image.new("P", (64, 48)), "GIF", save_all=True,
                                                       append_images=[Image.new("P", (64, 48), 9)])), "frames": 9}, "ok"),
    ("URL to loopback", {"image_url": "http://127.0.0.1:8188/view?filename=x"}, "URL_BLOCKED"),
    ("URL to localhost name", {"image_url": "http://localhost/x.png"}, "URL_BLOCKED"),
    ("URL to metadata service", {"image_url": "http://169.254.169.254/latest/meta-data/iam"}, "URL_BLOCKED"),
    ("URL to private 10/8", {"image_url": "http://10.1.2.3/a.png"}, "URL_BLOCKED"),
    ("URL to private 192.168", {"image_url": "https://192.168.0.1/a.png"}, "URL_BLOCKED"),
    ("URL to IPv6 loopback", {"image_url": "http://[::1]:80/a.png"}, "URL_BLOCKED"),
    ("URL with decimal IP", {"image_url": "http://2130706433/a.png"}, "URL_BLOCKED"),
    ("file scheme", {"image_url": "file:///etc/passwd"}, "URL_BLOCKED"),
    ("gopher scheme", {"image_url": "gopher://example.com/1"}, "URL_BLOCKED"),
    ("URL with credentials", {"image_url": "http://admin:pw@example.com/a.png"}, "URL_BLOCKED"),
    ("unresolvable host", {"image_url": "http://no-such-host.invalid/a.png"}, "IMAGE_FETCH_FAILED"),
    ("URL too long", {"image_url": "https://example.com/" + "a" * 5000}, "INVALID_INPUT"),
    ("both image forms", {"image_base64": GOOD, "image_url": "https://example.com/a.png"}, "INVALID_INPUT"),
    ("flf2v without end", {"image_base64": GOOD, "workflow": "flf2v"}, "NO_END_IMAGE"),
    ("bad end image", {"image_base64": GOOD, "end_image_base64": "%%%"}, "INVALID_IMAGE"),
    ("unknown workflow", {"image_base64": GOOD, "workflow": "../../etc/passwd"}, "INVALID_INPUT"),
    ("steps as string", {"image_base64": GOOD, "steps": "10"}, "INVALID_INPUT"),
    ("steps huge", {"image_base64": GOOD, "steps": 10**9}, "INVALID_INPUT"),
    ("negative frames", {"image_base64": GOOD, "frames": -81}, "INVALID_INPUT"),
    ("cfg infinity", {"image_base64": GOOD, "cfg": 1e400}, "INVALID_INPUT"),
    ("seed bool", {"image_base64": GOOD, "seed": True}, "INVALID_INPUT"),
    ("seed too big", {"image_base64": GOOD, "seed": 2**64}, "INVALID_INPUT"),
    ("width as list", {"image_base64": GOOD, "width": [832]}, "INVALID_INPUT"),
    ("prompt as dict", {"image_base64": GOOD, "prompt": {"$ne": 1}}, "INVALID_INPUT"),
    ("prompt megabytes", {"image_base64": GOOD, "prompt": "x" * 2_000_000}, "INVALID_INPUT"),
    ("prompt with NUL", {"image_base64": GOOD, "prompt": "a\x00b"}, "INVALID_INPUT"),
    ("LoRA path traversal", {"image_base64": GOOD, "lora_high": "../../../../etc/shadow"}, "INVALID_INPUT"),
    ("LoRA absolute path", {"image_base64": GOOD, "lora_low": "/runpod-volume/x.safetensors"}, "INVALID_INPUT"),
    ("LoRA windows drive", {"image_base64": GOOD, "lora_low": "C:\\x.safetensors"}, "INVALID_INPUT"),
    ("output mode unknown", {"image_base64": GOOD, "output": "ftp"}, "INVALID_INPUT"),
    ("loras not a list", {"image_base64": GOOD, "loras": "https://example.com/a.safetensors"}, "INVALID_INPUT"),
    ("loras entry a string", {"image_base64": GOOD, "loras": ["https://example.com/a.safetensors"]}, "INVALID_INPUT"),
    ("loras entry with url and name", {"image_base64": GOOD, "loras": [{"url": "https://example.com/a", "name": "a.safetensors"}]},
     "INVALID_INPUT"),
    ("loras entry with neither", {"image_base64": GOOD, "loras": [{"strength": 1.0}]}, "INVALID_INPUT"),
    ("loras entry with unknown key", {"image_base64": GOOD, "loras": [{"url": "https://example.com/a", "scale": 0.8}]}, "INVALID_INPUT"),
    ("loras strength infinity", {"image_base64": GOOD, "loras": [{"name": "a.safetensors", "strength": 1e400}]}, "INVALID_INPUT"),
    ("loras strength as string", {"image_base64": GOOD, "loras": [{"name": "a.safetensors", "strength": "1"}]}, "INVALID_INPUT"),
    ("loras expert unknown", {"image_base64": GOOD, "loras": [{"name": "a.safetensors", "expert": "mid"}]}, "INVALID_INPUT"),
    ("loras too many on one expert", {"image_base64": GOOD, "loras": [{"name": f"{i}.safetensors", "expert": "high"} for i in range(5)]},
     "INVALID_INPUT"),
    ("loras name path traversal", {"image_base64": GOOD, "loras": [{"name": "../../etc/passwd"}]}, "INVALID_INPUT"),
    ("LoRA URL as number", {"image_base64": GOOD, "loras": [{"url": 12}]}, "INVALID_INPUT"),
    ("LoRA URL too long", {"image_base64": GOOD, "loras": [{"url": "https://example.com/" + "a" * 5000}]}, "INVALID_INPUT"),
    ("LoRA URL to metadata service", {"image_base64": GOOD, "loras": [{"url": "http://169.254.169.254/latest/meta-data/"}]}, "URL_BLOCKED"),
    ("LoRA URL to ComfyUI on loopback", {"image_base64": GOOD, "loras": [{"url": "http://127.0.0.1:8188/view?filename=x"}]}, "URL_BLOCKED"),
    ("LoRA URL file scheme", {"image_base64": GOOD, "loras": [{"url": "file:///runpod-volume/models/loras/x.safetensors"}]}, "URL_BLOCKED"),
    ("LoRA URL with credentials", {"image_base64": GOOD, "loras": [{"url": "https://u:p@example.com/a.safetensors"}]}, "URL_BLOCKED"),
    ("LoRA URL unresolvable", {"image_base64": GOOD, "loras": [{"url": "http://no-such-host.invalid/a.safetensors"}]}, "LORA_FETCH_FAILED"),
    ("prompt full of JSON and control chars", {"image_base64": GOOD, "frames": 9,
                                               "prompt": '"}, "1": {"class_type": "X"}, {{}} \\u0000? \t\r\n\x1b[31m ${HOME} `rm -rf /`'}, "ok"),
    ("unknown keys are ignored", {"image_base64": GOOD, "frames": 9, "__proto__": {"x": 1}, "class_type": "Evil"}, "ok"),
    # presets, interpolation and output options
    ("resolution unknown", {"image_base64": GOOD, "resolution": "4k"}, "INVALID_INPUT"),
    ("resolution as number", {"image_base64": GOOD, "resolution": 720}, "INVALID_INPUT"),
    ("resolution with width", {"image_base64": GOOD, "resolution": "480p", "width": 832}, "INVALID_INPUT"),
    ("aspect ratio unknown", {"image_base64": GOOD, "aspect_ratio": "21:9"}, "INVALID_INPUT"),
    ("aspect ratio as ratio number", {"image_base64": GOOD, "aspect_ratio": 1.77}, "INVALID_INPUT"),
    ("aspect ratio with both sides", {"image_base64": GOOD, "aspect_ratio": "1:1", "width": 64, "height": 96}, "INVALID_INPUT"),
    ("interpolate zero", {"image_base64": GOOD, "interpolate": 0}, "INVALID_INPUT"),
    ("interpolate huge", {"image_base64": GOOD, "interpolate": 10**6}, "INVALID_INPUT"),
    ("interpolate as string", {"image_base64": GOOD, "interpolate": "2x"}, "INVALID_INPUT"),
    ("interpolate as bool", {"image_base64": GOOD, "interpolate": True}, "INVALID_INPUT"),
    ("interpolator unknown", {"image_base64": GOOD, "interpolate": 2, "interpolator": "film"}, "INVALID_INPUT"),
    ("interpolator rife without checkpoint", {"image_base64": GOOD, "frames": 9, "interpolate": 2, "interpolator": "rife"}, "MODEL_MISSING"),
    ("adjust fps as string", {"image_base64": GOOD, "adjust_fps_for_interpolation": "false"}, "INVALID_INPUT"),
    ("codec unknown", {"image_base64": GOOD, "codec": "prores"}, "INVALID_INPUT"),
    ("codec path-like", {"image_base64": GOOD, "codec": "../../h264-mp4"}, "INVALID_INPUT"),
    ("quality out of the codec's range", {"image_base64": GOOD, "quality": 99}, "INVALID_INPUT"),
    ("quality negative", {"image_base64": GOOD, "codec": "vp9", "quality": -5}, "INVALID_INPUT"),
    ("quality NaN-like", {"image_base64": GOOD, "quality": 1e400}, "INVALID_INPUT"),
    ("quality as dict", {"image_base64": GOOD, "quality": {"crf": 1}}, "INVALID_INPUT"),
    ("return_last_frame as string", {"image_base64": GOOD, "return_last_frame": "yes"}, "INVALID_INPUT"),
    ("interpolation and options all at once", {"image_base64": GOOD, "frames": 9, "interpolate": 2, "codec": "vp9",
                                               "quality": "low", "return_last_frame": True, "aspect_ratio": "9:16", "width": 64}, "ok"),
    # issue 12: requests the pinned node pack would run wrongly, crash on, or that fit no GPU
    ("prompt travel", {"image_base64": GOOD, "prompt": "a cat walks | a cat sleeps"}, "INVALID_INPUT"),
    ("EchoShot marker with one shot", {"image_base64": GOOD, "prompt": "[1] a cat"}, "INVALID_INPUT"),
    ("EchoShot markers", {"image_base64": GOOD, "prompt": "[1] a cat [2] a dog"}, "INVALID_INPUT"),
    ("weight syntax crashing float()", {"image_base64": GOOD, "prompt": "(cat:1.2.3)"}, "INVALID_INPUT"),
    ("time in parentheses read as a weight", {"image_base64": GOOD, "prompt": "a clock at (10:30)"}, "INVALID_INPUT"),
    ("negative prompt is literal", {"image_base64": GOOD, "frames": 9, "negative_prompt": "blur | [1] (x:2)"}, "ok"),
    ("frames past MAX_FRAMES", {"image_base64": GOOD, "frames": 401}, "INVALID_INPUT"),
    ("frames past any clip", {"image_base64": GOOD, "frames": 5000}, "INVALID_INPUT"),
    ("241 frames at 1920", {"image_base64": GOOD, "frames": 241, "width": 1920, "height": 1920}, "INVALID_INPUT"),
    ("size over the token budget", {"image_base64": GOOD, "width": 1920, "height": 1080}, "INVALID_INPUT"),
    ("a pack scheduler without a reproduced schedule", {"image_base64": GOOD, "scheduler": "flowmatch_pusa"}, "INVALID_INPUT"),
    ("shift putting a step on the expert boundary", {"image_base64": GOOD, "scheduler": "res_multistep", "steps": 10,
                                                     "shift": 8.964143}, "INVALID_INPUT"),
    ("lora_name mixed with lora_high", {"image_base64": GOOD, "lora_name": "a.safetensors", "lora_high": "b.safetensors"},
     "INVALID_INPUT"),
    ("lora_name path traversal", {"image_base64": GOOD, "lora_name": "../../secret"}, "INVALID_INPUT"),
    ("lora_name maps to both experts", {"image_base64": GOOD, "frames": 9, "lora_name": "style.safetensors"}, "ok"),
    ("beta scheduler", {"image_base64": GOOD, "frames": 9, "scheduler": "dpm++_sde/beta"}, "ok"),
]


@pytest.fixture
def worker(comfy_double, monkeypatch):
    monkeypatch.setattr(handler, "SETTINGS", settings_for(comfy_double, COMFY_EXEC_TIMEOUT="10", BUCKET_SECRET_ACCESS_KEY="s3cr3t-value-123"))
    monkeypatch.setattr(handler, "CLIENT", ComfyClient(comfy_double.url, crash_grace=2.0))
    (comfy_double.root / "comfy.log").write_text("token=abcdef123456 loaded\nBUCKET_SECRET_ACCESS_KEY=s3cr3t-value-123\n")
    return comfy_double


def run_job(job_input, job_id="hostile"):
    return asyncio.run(handler.handler({"id": job_id, "input": job_input}))


def temp_leftovers():
    return sorted(p.name for p in Path(tempfile.gettempdir()).glob("tenexa-job-*"))


def comfy_leftovers(double):
    return [p for kind in ("input", "output", "temp") for p in (double.root / kind).rglob("*") if p.is_file()]


def assert_clean_failure(out, expected):
    assert out["status"] == "failed", out
    assert out["error_code"] == expected, out["error"]
    assert out["error"] == f"{expected}: {out['error_message']}"
    assert "\n" not in out["error"] and "Traceback" not in json.dumps(out)
    assert "s3cr3t-value-123" not in json.dumps(out) and "abcdef123456" not in out["logs_tail"]


@pytest.mark.parametrize("name,job_input,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_corpus(worker, name, job_input, expected):
    before = temp_leftovers()
    out = run_job(job_input)
    if expected == "ok":
        assert out["status"] == "completed", out
        assert out["frames"] == (job_input.get("interpolate") or 1) * 8 + 1
    else:
        assert_clean_failure(out, expected)
        # every failure in the corpus is the request's: nothing reached ComfyUI
        assert worker.calls.prompts == [] and worker.calls.uploads == [], name
    assert comfy_leftovers(worker) == []
    assert temp_leftovers() == before
    assert run_job({"image_base64": GOOD, "frames": 9})["status"] == "completed", "the next job still works"


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 40


def test_prompt_stays_a_string_in_the_graph(worker):
    nasty = '"}, "1": {"class_type": "X"}, {{}} \x1b[31m'
    assert run_job({"image_base64": GOOD, "frames": 9, "prompt": nasty, "negative_prompt": nasty})["status"] == "completed"
    graph = worker.calls.prompts[-1]["prompt"]
    texts = [n["inputs"].get("positive_prompt") for n in graph.values() if "positive_prompt" in n["inputs"]]
    assert texts == [nasty]
    assert all(set(n) == {"class_type", "inputs"} or set(n) <= {"class_type", "inputs", "_meta"} for n in graph.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["image_base64", "image_url", "end_image_base64", "workflow", "prompt", "seed", "steps", "cfg", "frames",
                        "width", "height", "fps", "shift", "scheduler", "lora_high", "loras", "output", "test", "diagnose", "length",
                        "resolution", "aspect_ratio", "interpolate", "interpolator", "adjust_fps_for_interpolation", "codec",
                        "quality", "return_last_frame"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, json_values, max_size=6) | json_values)
def test_fuzzed_inputs_never_crash(worker, job_input):
    if isinstance(job_input, dict) and (job_input.get("test") is True or job_input.get("diagnose") is True):
        return  # those are the other modes, tested elsewhere
    out = run_job(job_input)
    assert out["status"] in ("completed", "failed")
    if out["status"] == "failed":
        assert out["error_code"] in CODES and out["error_code"] != "INTERNAL_ERROR", out["error"]
        assert "\n" not in out["error"]
    assert comfy_leftovers(worker) == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


SOAK_JOBS = 200


def test_soak_sequential_jobs(worker):
    """200 jobs (every fifth a failure): no growth in fds, threads, memory or files."""
    for _ in range(20):  # warm up caches and pools before measuring
        run_job({"image_base64": GOOD, "frames": 5})
    gc.collect()
    fds, threads, rss, temps = _open_fds(), threading.active_count(), _rss_kb(), temp_leftovers()
    for i in range(SOAK_JOBS):
        job = {"image_base64": GOOD, "frames": 5, "seed": i} if i % 5 else {"image_base64": "@@@"}
        out = run_job(job, job_id=f"soak-{i}")
        assert out["status"] == ("completed" if i % 5 else "failed")
    gc.collect()
    assert _open_fds() <= fds + 3
    assert threading.active_count() <= threads + 2
    growth_mb = (_rss_kb() - rss) / 1024
    assert growth_mb < 40, f"RSS grew {growth_mb:.1f} MB over {SOAK_JOBS} jobs"
    assert comfy_leftovers(worker) == [] and temp_leftovers() == temps
    print(f"soak: {SOAK_JOBS} jobs, fds {fds}->{_open_fds()}, threads {threads}->{threading.active_count()}, RSS +{growth_mb:.1f} MB")


def test_concurrent_jobs_do_not_mix(worker):
    """Two jobs at once in one worker: each gets its own upload names, prompt and output."""
    red = b64(png(Image.new("RGB", (64, 48), (255, 0, 0))))
    blue = b64(png(Image.new("RGB", (96, 48), (0, 0, 255))))

    async def both():
        return await asyncio.gather(
            handler.handler({"id": "job-red", "input": {"image_base64": red, "frames": 9, "seed": 1}}),
            handler.handler({"id": "job-blue", "input": {"image_base64": blue, "frames": 13, "seed": 2}}),
        )

    worker.behaviour = Behaviour("success", node_seconds=0.05)
    red_out, blue_out = asyncio.run(both())
    assert (red_out["frames"], red_out["seed"]) == (9, 1) and (blue_out["frames"], blue_out["seed"]) == (13, 2)
    assert red_out["prompt_id"] != blue_out["prompt_id"] and red_out["video_base64"] != blue_out["video_base64"]
    assert red_out["width"] / red_out["height"] != blue_out["width"] / blue_out["height"]
    uploads = worker.calls.uploads[-2:]
    assert len(set(uploads)) == 2 and all(u.startswith("tenexa/job-") for u in uploads)
    assert comfy_leftovers(worker) == []
