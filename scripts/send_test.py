#!/usr/bin/env python3
"""Send one image-to-video job to a Tenexa endpoint, follow it, and save the MP4.

Needs only Python 3.9+ and ``requests``. Examples:

  export RUNPOD_API_KEY=...
  python scripts/send_test.py <ENDPOINT_ID> --image cat.png --prompt "a cat turns its head"
  python scripts/send_test.py http://127.0.0.1:8000 --image cat.png --steps 4 --frames 17
  python scripts/send_test.py <ENDPOINT_ID> --image first.png --end-image last.png --delivery url
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find _client from any working directory

import _client as client  # noqa: E402
import requests  # noqa: E402
from _client import ClientError, fmt_bytes, fmt_duration, say  # noqa: E402


def quality_value(text: str) -> int | str:
    """A preset name (high, medium, low) or a CRF number."""
    return int(text) if text.strip().isdigit() else text


# flag -> (input key, type, help). Only flags the user passes are sent; the worker fills in the rest.
GENERATE_PARAMETERS = [
    ("--prompt", "prompt", str, "positive prompt"),
    ("--negative-prompt", "negative_prompt", str, "negative prompt"),
    ("--seed", "seed", int, "random seed (worker default: random)"),
    ("--steps", "steps", int, "sampling steps (worker default 10)"),
    ("--cfg", "cfg", float, "classifier-free guidance (worker default 2.0)"),
    ("--frames", "frames", int, "number of frames, 4n+1 (worker default 81)"),
    ("--width", "width", int, "output width in pixels"),
    ("--height", "height", int, "output height in pixels"),
    ("--fps", "fps", int, "frames per second of the MP4 (worker default 16)"),
    ("--shift", "shift", float, "sampler shift"),
    ("--scheduler", "scheduler", str, "sampler scheduler name"),
    ("--lora-high", "lora_high", str, "LoRA file for the high-noise expert"),
    ("--lora-low", "lora_low", str, "LoRA file for the low-noise expert"),
    ("--lora-high-strength", "lora_high_strength", float, "strength of --lora-high"),
    ("--lora-low-strength", "lora_low_strength", float, "strength of --lora-low"),
    ("--resolution", "resolution", str, "480p, 580p or 720p (instead of --width/--height)"),
    ("--aspect-ratio", "aspect_ratio", str, "auto, 16:9, 9:16 or 1:1; the image is centre-cropped to it"),
    ("--interpolate", "interpolate", int, "frame interpolation: 2-4 times the frames (worker default 1, none)"),
    ("--interpolator", "interpolator", str, "auto, rife or ffmpeg (worker default auto)"),
    ("--codec", "codec", str, "h264 (MP4, default), h265 (MP4) or vp9 (WebM); name --output to match"),
    ("--quality", "quality", quality_value, "high, medium, low, or a CRF number (lower is better)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="send_test.py",
        description="Send an image-to-video job to a Tenexa worker, show its progress, and save the MP4.",
        epilog=client.EXIT_CODES_HELP.format(one="the job failed (its error code, message and logs tail are printed)")
        + "\n\nThe API key comes from RUNPOD_API_KEY or --api-key and is never printed.",
        formatter_class=client.HelpFormatter,
    )
    client.add_connection_arguments(parser, default_timeout=1800)
    job = parser.add_argument_group("job")
    job.add_argument("--image", required=True, metavar="PATH|URL",
                     help="start image: a local file (sent as base64) or an http(s) URL (sent as image_url)")
    job.add_argument("--end-image", metavar="PATH|URL", help="end image for first-last-frame (implies --workflow flf2v)")
    job.add_argument("--workflow", help="wan22_i2v or flf2v (worker default wan22_i2v)")
    for flag, _key, kind, text in GENERATE_PARAMETERS:
        job.add_argument(flag, type=kind, help=text)
    job.add_argument("--delivery", choices=("base64", "url"),
                     help="how the worker returns the video: base64 in the reply, or a bucket URL (input key 'output')")
    job.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any other input field; VALUE is parsed as JSON when it can be (repeatable)")
    result = parser.add_argument_group("result")
    result.add_argument("--output", "-o", default="result.mp4", metavar="PATH", help="where to write the MP4 (default result.mp4)")
    result.add_argument("--last-frame", metavar="PATH", help="also ask for the clip's last frame and write it here as a PNG")
    result.add_argument("--dry-run", action="store_true", help="print the job input (images elided) and exit without sending")
    return parser


def image_field(value: str, prefix: str) -> dict[str, str]:
    """``{prefix_url: URL}`` for http(s) URLs, else ``{prefix_base64: <file contents>}``."""
    if value.startswith(("http://", "https://")):
        return {f"{prefix}_url": value}
    path = Path(value).expanduser()
    if not path.is_file():
        raise ClientError("usage", f"image not found: {value}")
    return {f"{prefix}_base64": base64.b64encode(path.read_bytes()).decode("ascii")}


def parse_set(items: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ClientError("usage", f"--set expects KEY=VALUE, got {item!r}")
        try:
            extra[key.strip()] = json.loads(raw)
        except ValueError:
            extra[key.strip()] = raw
    return extra


def build_input(args: argparse.Namespace) -> dict[str, Any]:
    job_input: dict[str, Any] = {}
    job_input.update(image_field(args.image, "image"))
    if args.end_image:
        job_input.update(image_field(args.end_image, "end_image"))
    workflow = args.workflow or ("flf2v" if args.end_image else None)
    if workflow:
        job_input["workflow"] = workflow
    for _flag, key, _kind, _text in GENERATE_PARAMETERS:
        value = getattr(args, key)
        if value is not None:
            job_input[key] = value
    if args.delivery:
        job_input["output"] = args.delivery
    if args.last_frame:
        job_input["return_last_frame"] = True
    job_input.update(parse_set(args.set))
    return job_input


def elide_images(data: Any) -> Any:
    """A copy with every long base64 field replaced by a short marker (for printing)."""
    if isinstance(data, dict):
        return {key: (f"<{len(value)} base64 chars>" if key.endswith("_base64") and isinstance(value, str)
                      and len(value) > 64 else elide_images(value)) for key, value in data.items()}
    if isinstance(data, list):
        return [elide_images(item) for item in data]
    return data


def check_body_size(job_input: dict[str, Any], runner: client.JobRunner) -> None:
    if runner.local:
        return
    size = len(json.dumps({"input": job_input}))
    limit = client.RUNSYNC_BODY_LIMIT if runner.options.sync else client.RUN_BODY_LIMIT
    if size > limit:
        route = "/runsync" if runner.options.sync else "/run"
        raise ClientError("usage", f"the request is {fmt_bytes(size)}; RunPod's {route} accepts at most {fmt_bytes(limit)}. "
                                   "Pass the image as an http(s) URL or shrink it")


# --- saving the video -------------------------------------------------------------------------------


def _strip_query(url: str) -> str:
    """A presigned URL's query is a credential: keep it out of messages."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _write_atomically(path: Path, chunks: Any) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=str(path.parent))
    written = 0
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return written


def save_video(output: dict[str, Any], path: Path, name: str = "video") -> int:
    """Write the file from ``<name>_base64`` or ``<name>_url`` (the video, or the last frame); return its size."""
    if isinstance(output.get(f"{name}_base64"), str):
        text = output[f"{name}_base64"]
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            data = base64.b64decode(text, validate=False)
        except ValueError as exc:
            raise ClientError("protocol", f"{name}_base64 is not valid base64: {exc}") from None
        return _write_atomically(path, [data])
    url = output.get(f"{name}_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ClientError("protocol", f"no {name}_base64 or {name}_url in the output")
    try:
        # A plain GET: the bucket must never see the RunPod API key.
        with requests.get(url, stream=True, timeout=(10, 120), headers={"User-Agent": client.USER_AGENT}) as response:
            if response.status_code != 200:
                raise ClientError("download", f"downloading {_strip_query(url)} failed: HTTP {response.status_code}"
                                  + (" (the presigned URL may have expired)" if response.status_code in (403, 404) else ""))
            return _write_atomically(path, response.iter_content(chunk_size=1 << 20))
    except requests.RequestException as exc:
        raise ClientError("download", f"downloading {_strip_query(url)} failed: {client._network_reason(exc)}") from None


def verify_sha256(output: dict[str, Any], path: Path) -> str:
    """"verified" or "not provided"; a mismatch is a protocol error (the file is not what the worker made)."""
    metadata = output.get("metadata") if isinstance(output.get("metadata"), dict) else {}
    expected = metadata.get("sha256")
    if not expected:
        return "not provided"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ClientError("protocol", f"{path}: sha256 {digest[:12]}... differs from the worker's {str(expected)[:12]}...")
    return "verified"


def report_success(reply: dict[str, Any], path: Path, size: int, sha_check: str, elapsed: float) -> None:
    output = reply["output"]
    timings = output.get("timings") if isinstance(output.get("timings"), dict) else {}
    timing_text = ", ".join(f"{(name[:-2] if name.endswith('_s') else name).replace('_', ' ')} {fmt_duration(value)}"
                            for name, value in timings.items() if isinstance(value, (int, float))) or "-"
    runpod = [f"{label} {fmt_duration(reply[key] / 1000)}" for key, label in (("delayTime", "queue"), ("executionTime", "execution"))
              if isinstance(reply.get(key), (int, float))]
    width, height = output.get("width"), output.get("height")
    duration = output.get("duration_sec")
    rows = [
        ("job", f"{reply.get('id', '?')} COMPLETED in {fmt_duration(elapsed)}" + (f" (RunPod: {', '.join(runpod)})" if runpod else "")),
        ("saved", f"{path} (sha256 {sha_check})"),
        ("seed", output.get("seed", "-")),
        ("frames", output.get("frames", "-")),
        ("fps", f"{output['fps']:g}" if isinstance(output.get("fps"), (int, float)) else "-"),
        ("duration", f"{duration:.2f} s" if isinstance(duration, (int, float)) else "-"),
        ("size", fmt_bytes(size)),
        ("resolution", f"{width}x{height}" if width and height else "-"),
        ("workflow", output.get("workflow", "-")),
        ("timings", timing_text),
    ]
    if output.get("video_url"):
        expires = f" (expires {output['expires_at']})" if output.get("expires_at") else ""
        rows.insert(2, ("video url", _strip_query(output["video_url"]) + expires))
    for label, value in rows:
        say(f"  {label:<11} {value}")


def is_failed_output(output: Any) -> bool:
    return isinstance(output, dict) and (output.get("status") == "failed" or "error_code" in output)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job_input = build_input(args)
    if args.dry_run:
        client.print_json({"input": elide_images(job_input)})
        return client.EXIT_OK
    runner = client.connect(args)
    check_body_size(job_input, runner)
    reply = runner.run(job_input)
    elapsed = runner.elapsed()
    output = reply.get("output")
    status = reply.get("status")

    if status != "COMPLETED" or is_failed_output(output):
        if args.json:
            client.print_json(elide_images(reply))
        else:
            client.print_failure(reply, elapsed)
        return client.EXIT_JOB_FAILED
    if not isinstance(output, dict) or not (output.get("video_base64") or output.get("video_url")):
        keys = sorted(output) if isinstance(output, dict) else type(output).__name__
        message = f"NO_OUTPUT: the job completed but returned no video (output: {keys})"
        if args.json:
            client.print_json(elide_images(reply))
            client.warn(message)
        else:
            client.print_failure({"id": reply.get("id"), "status": "COMPLETED", "error": message}, elapsed)
        return client.EXIT_JOB_FAILED

    path = Path(args.output).expanduser()
    size = save_video(output, path)
    sha_check = verify_sha256(output, path)
    if args.last_frame:
        frame_path = Path(args.last_frame).expanduser()
        save_video(output, frame_path, "last_frame")
    if args.json:
        client.print_json(elide_images(reply))
    else:
        report_success(reply, path, size, sha_check, elapsed)
        if args.last_frame:
            say(f"  {'last frame':<11} {frame_path}")
    return client.EXIT_OK

if __name__ == "__main__":
    sys.exit(client.run_main(main))
