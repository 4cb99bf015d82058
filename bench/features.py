"""What frame interpolation and segment chaining add to a job, per second of output, beside the base generation
in the same run.

Two parts, both on a real ComfyUI on CPU:

- **generate** (``tenexa.generate.generate`` in process, tiny random weights as in the integration tier,
  64x64, 9 frames, 2 steps): the base job, the same job with ``interpolate: 2`` by RIFE (random weights of the
  real RIFE 4.7 architecture) and by ffmpeg; and a 17-frame clip made in one window beside the same clip made
  as two chained windows of 9 (``MAX_WINDOW_FRAMES=9``), so the cost of chaining is the difference between two
  jobs that return the same video length. Jobs run round-robin so that drift hits every case alike; the figure
  is the median wall time, and the added time divided by the seconds of video the job returns.
- **interpolation alone at 480p** (832x480, 17 frames at 16 fps -> 33 frames at 32 fps): RIFE in a ComfyUI graph
  (LoadImage -> ImageScale -> RepeatImageBatch -> [RIFE VFI x2] -> VHS h264) with and without the RIFE node,
  and the worker's ffmpeg pass (``tenexa.interpolation.interpolate_video`` on an FFV1 file of a moving bar)
  beside a plain PyAV H.264 encode of the same frames. RIFE's cost does not depend on what the frames show;
  minterpolate's does (the bar moves 8 px per frame).

The tiny Wan model says nothing about a real generation's time (bench/gpu_generate.py measures that); the
480p part is what interpolation costs at the size real jobs run, on this CPU. On a GPU RIFE is far faster.

    .venv/bin/python bench/features.py [--repeats 3]

Prints a table and writes bench/results/features.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import _common
from _common import BenchmarkSkipped, ComfyTarget

TINY_WAN = _common.TESTS / "integration" / "tiny_wan.py"
IMAGE = _common.REPO / "example_image.png"
PROMPT = "bench: a red ball rolls across a table"
BASE_JOB = {"frames": 9, "width": 64, "height": 64, "steps": 2, "seed": 7, "fps": 16, "prompt": PROMPT}
# name: (request fields over BASE_JOB, MAX_WINDOW_FRAMES of the worker or None for its default)
CASES = {
    "base": ({}, None),
    "rife x2": ({"interpolate": 2, "interpolator": "rife"}, None),
    "ffmpeg x2": ({"interpolate": 2, "interpolator": "ffmpeg"}, None),
    "17 frames, one window": ({"frames": 17}, None),
    "17 frames, two windows": ({"frames": 17}, 9),
}
CHAINING = ("17 frames, one window", "17 frames, two windows")  # same output; the difference is what chaining adds
HD_SIZE, HD_FRAMES = (832, 480), 17


def _tiny_wan(python: Path, root: Path, args: list[str]) -> dict:
    proc = subprocess.run([str(python), str(TINY_WAN), "--comfy-root", str(root), *args], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"tiny_wan.py failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


@contextmanager
def tiny_stack(work: Path) -> Iterator[tuple[ComfyTarget, object]]:
    """A real ComfyUI on CPU reading tiny random-weight models, with a random RIFE 4.7 checkpoint in the pack."""
    from tenexa.config import load_settings
    from tenexa.interpolation import rife_checkpoint
    from tenexa.request import DEFAULT_NEGATIVE_PROMPT

    root, python = _common.comfy_install()
    if not (root / "custom_nodes" / "ComfyUI-Frame-Interpolation").is_dir():
        raise BenchmarkSkipped(f"{root} has no ComfyUI-Frame-Interpolation; reinstall the stack (scripts/install_stack.py)")
    models = work / "models"
    report = _tiny_wan(python, root, ["--models-dir", str(models), "--prompt", PROMPT, "--prompt", DEFAULT_NEGATIVE_PROMPT])
    written = [Path(p) for p in report["embeds"]]
    written += [Path(p) for p in _tiny_wan(python, root, ["--rife-checkpoint", str(rife_checkpoint(root))])["rife"]]
    extra = work / "extra_model_paths.yaml"
    folders = "\n".join(f"    {f}: {f}" for f in ("diffusion_models", "vae", "loras", "text_encoders"))
    extra.write_text(f"tenexa_bench:\n    base_path: {models}\n{folders}\n")
    try:
        with _common.real_comfyui(work, ("--extra-model-paths-config", str(extra))) as target:
            settings = load_settings({**_common.worker_env(target, work / "volume"), "COMFY_EXEC_TIMEOUT": "900",
                                      "TENEXA_ATTENTION": "sdpa", "TENEXA_VAE_PRECISION": "fp32", "TENEXA_TEXT_ENCODER": "cache"})
            yield target, settings
    finally:
        for path in written:  # only what this run wrote into the ComfyUI tree
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ generate


def generate_cases(settings, repeats: int) -> dict:
    from tenexa.comfy import ComfyClient
    from tenexa.generate import generate

    client = ComfyClient(settings.comfy_url)
    image = base64.b64encode(IMAGE.read_bytes()).decode()

    def job(extra: dict, window: int | None) -> dict:
        worker = replace(settings, max_window_frames=window) if window else settings
        return generate(f"bench-{uuid.uuid4().hex[:6]}", {"image_base64": image, **BASE_JOB, **extra}, settings=worker, client=client)

    for case in CASES.values():  # warm-up: model loads, the RIFE checkpoint, PyAV's first import
        job(*case)
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    last: dict[str, dict] = {}
    for _ in range(repeats):
        for name, case in CASES.items():
            started = time.monotonic()
            last[name] = job(*case)
            samples[name].append(time.monotonic() - started)
    base = statistics.median(samples["base"])
    rows = {}
    for name, values in samples.items():
        response = last[name]
        median = statistics.median(values)
        rows[name] = {
            "median_s": round(median, 3),
            "samples_s": [round(v, 3) for v in values],
            "frames": response["frames"],
            "fps": response["fps"],
            "output_seconds": response["duration_sec"],
            "interpolator": response["used"]["interpolator"],
            "windows": response["used"].get("segments") or [response["frames"]],
            "added_s": round(median - base, 3),
            "added_s_per_output_second": round((median - base) / response["duration_sec"], 3),
        }
    one, two = (rows[name] for name in CHAINING)
    chaining = {"one_window_median_s": one["median_s"], "two_windows_median_s": two["median_s"],
                "added_s": round(two["median_s"] - one["median_s"], 3),
                "added_s_per_output_second": round((two["median_s"] - one["median_s"]) / two["output_seconds"], 3)}
    return {"job": BASE_JOB, "repeats": repeats, "cases": rows, "chaining": chaining}


# ------------------------------------------------------------------------------------------------ 480p alone


def rife_alone(target: ComfyTarget, settings, repeats: int) -> dict:
    """RIFE x2 at 832x480 in a ComfyUI graph, beside the same graph without it."""
    from tenexa import workflows
    from tenexa.comfy import ComfyClient
    from tenexa.diagnostics import selftest_graph
    from tenexa.pipeline import run_graph
    from tenexa.workspace import JobWorkspace

    client = ComfyClient(target.url)

    def graph(workspace: JobWorkspace, rife: bool) -> dict:
        g = selftest_graph(workspace.input_name("in.png"), workspace.output_prefix)
        for node in g.values():
            inputs = node["inputs"]
            if node["class_type"] == "ImageScale":
                inputs["width"], inputs["height"] = HD_SIZE
            elif node["class_type"] == "RepeatImageBatch":
                inputs["amount"] = HD_FRAMES
            elif node["class_type"] == "VHS_VideoCombine":
                inputs["frame_rate"] = 32 if rife else 16
        (video_id,) = [n for n, node in g.items() if node["class_type"] == "VHS_VideoCombine"]
        if rife:
            workflows.insert_rife(g, video_id, 2)
        return g

    def once(rife: bool) -> tuple[float, int]:
        workspace = JobWorkspace(target.root, "bench-rife")
        try:
            started = time.monotonic()
            result = run_graph(client, graph(workspace, rife), workspace=workspace, images={"in.png": IMAGE.read_bytes()},
                               deadline=time.monotonic() + 1800)
            return time.monotonic() - started, result.video.frames
        finally:
            workspace.cleanup()

    once(True)  # warm-up: loads the checkpoint
    samples: dict[bool, list[float]] = {False: [], True: []}
    frames = {}
    for _ in range(repeats):
        for rife in (False, True):
            seconds, frames[rife] = once(rife)
            samples[rife].append(seconds)
    base, with_rife = statistics.median(samples[False]), statistics.median(samples[True])
    output_s = frames[True] / 32
    return {"size": list(HD_SIZE), "frames_in": HD_FRAMES, "frames_out": frames[True], "repeats": repeats,
            "without_rife_median_s": round(base, 3), "with_rife_median_s": round(with_rife, 3),
            "added_s": round(with_rife - base, 3), "added_s_per_output_second": round((with_rife - base) / output_s, 3),
            "added_s_per_new_frame": round((with_rife - base) / (frames[True] - HD_FRAMES), 3)}


def ffmpeg_alone(work: Path, repeats: int) -> dict:
    """The worker's minterpolate x2 + H.264 encode at 832x480, beside a plain H.264 encode of the same frames."""
    import av
    from PIL import Image, ImageDraw

    from tenexa import formats, interpolation

    width, height = HD_SIZE
    source = work / "hd.mkv"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("ffv1", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, formats.LOSSLESS_PIX_FMT
        for i in range(HD_FRAMES):
            img = Image.new("RGB", (width, height), (40, 60 + 5 * i, 90))
            ImageDraw.Draw(img).rectangle([100 + 8 * i, 80, 220 + 8 * i, 400], fill=(240, 240, 240))
            out.mux(stream.encode(av.VideoFrame.from_image(img)))
        out.mux(stream.encode(None))
    fmt = formats.video_format("h264")

    def plain() -> float:
        started = time.monotonic()
        with av.open(str(source)) as inp, av.open(str(work / "plain.mp4"), "w") as out:
            stream = out.add_stream("libx264", rate=Fraction(16))
            stream.width, stream.height, stream.pix_fmt = width, height, formats.PIX_FMT
            stream.options = {"crf": str(fmt.crf("high"))}
            for frame in inp.decode(video=0):
                out.mux(stream.encode(frame.reformat(format=formats.PIX_FMT)))
            out.mux(stream.encode(None))
        return time.monotonic() - started

    def interpolated() -> float:
        started = time.monotonic()
        interpolation.interpolate_video(source, work / "interp.mp4", multiplier=2, fps=32.0, video_format=fmt, crf=fmt.crf("high"))
        return time.monotonic() - started

    plain(), interpolated()  # warm-up
    base = statistics.median([plain() for _ in range(repeats)])
    with_ffmpeg = statistics.median([interpolated() for _ in range(repeats)])
    frames_out = interpolation.interpolated_frames(HD_FRAMES, 2)
    return {"size": list(HD_SIZE), "frames_in": HD_FRAMES, "frames_out": frames_out, "repeats": repeats,
            "plain_encode_median_s": round(base, 3), "minterpolate_and_encode_median_s": round(with_ffmpeg, 3),
            "added_s": round(with_ffmpeg - base, 3), "added_s_per_output_second": round((with_ffmpeg - base) / (frames_out / 32), 3)}


# ------------------------------------------------------------------------------------------------ report


def run(repeats: int) -> dict:
    report = _common.report_header("features")
    with tempfile.TemporaryDirectory(prefix="tenexa-bench-features-") as tmp:
        work = Path(tmp)
        with tiny_stack(work) as (target, settings):
            report["generate"] = generate_cases(replace(settings, progress_interval=60.0), repeats)
            report["rife_480p"] = rife_alone(target, settings, repeats)
        report["ffmpeg_480p"] = ffmpeg_alone(work, repeats)
    print_rows(report)
    _common.write_report(_common.RESULTS / "features.json", report)
    return report


def print_rows(report: dict) -> None:
    rows = []
    for name, case in report["generate"]["cases"].items():
        rows.append([f"generate 64x64, {case['frames']} frames out ({name})", f"{case['median_s']:.2f} s",
                     f"{case['added_s']:+.2f} s", f"{case['added_s_per_output_second']:+.2f} s"])
    chain = report["generate"]["chaining"]
    rows.append(["chaining: 17 frames as two windows of 9, vs one window", f"{chain['two_windows_median_s']:.2f} s",
                 f"{chain['added_s']:+.2f} s (vs {chain['one_window_median_s']:.2f} s in one window)",
                 f"{chain['added_s_per_output_second']:+.2f} s"])
    rife, ff = report["rife_480p"], report["ffmpeg_480p"]
    rows.append([f"RIFE x2 at 832x480, {rife['frames_in']} -> {rife['frames_out']} frames (graph)",
                 f"{rife['with_rife_median_s']:.2f} s", f"{rife['added_s']:+.2f} s (vs {rife['without_rife_median_s']:.2f} s without)",
                 f"{rife['added_s_per_output_second']:+.2f} s"])
    rows.append([f"ffmpeg x2 at 832x480, {ff['frames_in']} -> {ff['frames_out']} frames (worker)",
                 f"{ff['minterpolate_and_encode_median_s']:.2f} s",
                 f"{ff['added_s']:+.2f} s (vs plain encode {ff['plain_encode_median_s']:.2f} s)", f"{ff['added_s_per_output_second']:+.2f} s"])
    _common.print_table(["case", "median", "added vs baseline", "added per second of output"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        run(args.repeats)
    except BenchmarkSkipped as skip:
        print(f"SKIPPED: {skip}")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
