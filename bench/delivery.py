"""Time and peak memory of video delivery: base64 inline, URL upload (moto S3 on loopback), bare base64.

Each figure comes from its own child process, so the peak RSS of one case cannot hide in another's:
one run measures wall time and the peak-RSS growth over the child's state after imports (VmHWM after
resetting it through /proc/self/clear_refs, so Linux only),
a second run measures the tracemalloc peak (Python allocations only). "bare" is
``base64.b64encode(open(f, "rb").read()).decode()`` on the same file, the naive way.

    .venv/bin/python bench/delivery.py            # 5, 20, 60 MB; prints a table, writes bench/results/delivery.json
    .venv/bin/python bench/delivery.py --sizes 5  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import free_port

REPO_ROOT = _common.REPO
RESULTS = _common.RESULTS / "delivery.json"
METHODS = ("bare_base64", "deliver_base64", "deliver_url")
BUCKET = "bench"

CHILD = r"""
import base64, json, os, sys, time, tracemalloc
from pathlib import Path
method, path, use_tracemalloc = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
from tenexa.config import load_settings
from tenexa.delivery import deliver
settings = load_settings({"MAX_RESPONSE_MB": "1000", "BUCKET_ENDPOINT_URL": os.environ.get("BENCH_S3", ""),
                          "BUCKET_NAME": "bench", "BUCKET_ACCESS_KEY_ID": "bench", "BUCKET_SECRET_ACCESS_KEY": "bench"})
if method == "deliver_url":  # build the boto3 client and its thread pool before the baseline
    warm = path.with_name("warm.bin"); warm.write_bytes(b"x")
    deliver(warm, job_id="warm", mode="url", settings=settings)
def run():
    if method == "bare_base64":
        return base64.b64encode(open(path, "rb").read()).decode()
    return deliver(path, job_id="bench", mode=method.split("_")[1], settings=settings)
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
if use_tracemalloc:
    tracemalloc.start()
# Peak RSS of the operation alone: reset the kernel's high-water mark (VmHWM), then compare it with the
# RSS before the call. ru_maxrss cannot be reset and would still hold the import-time peak.
base = status_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
started = time.perf_counter()
result = run()
seconds = time.perf_counter() - started
out = {"seconds": seconds, "rss_growth_bytes": (status_kib("VmHWM") - base) * 1024}
if use_tracemalloc:
    out["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
print(json.dumps(out))
"""


def start_moto() -> tuple[subprocess.Popen, str]:
    import boto3
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(300):
        try:
            requests.get(f"{url}/moto-api/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(
        Bucket=BUCKET
    )
    return proc, url


def measure(method: str, path: Path, s3_url: str, traced: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "BENCH_S3": s3_url}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(path), "1" if traced else "0"], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: list[int]) -> dict:
    """Every method at every size; prints the table, writes the JSON and returns the report."""
    moto, s3_url = start_moto()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mb in sizes:
                path = Path(tmp) / f"video_{mb}mb.mp4"
                path.write_bytes(os.urandom(mb * 1_000_000))  # random bytes: nothing compresses, like H.264
                for method in METHODS:
                    timed = measure(method, path, s3_url, traced=False)
                    traced = measure(method, path, s3_url, traced=True)
                    size = path.stat().st_size
                    rows.append(
                        {
                            "method": method,
                            "size_bytes": size,
                            "seconds": round(timed["seconds"], 4),
                            "rss_growth_bytes": timed["rss_growth_bytes"],
                            "tracemalloc_peak_bytes": traced["tracemalloc_peak_bytes"],
                            "rss_x_video": round(timed["rss_growth_bytes"] / size, 2),
                            "tracemalloc_x_video": round(traced["tracemalloc_peak_bytes"] / size, 2),
                        }
                    )
                    print(f"  {mb:>3} MB {method:<15} done", file=sys.stderr)
    finally:
        moto.terminate()
        moto.wait(timeout=10)

    print(f"{'video':>8} {'method':<15} {'seconds':>8} {'peak RSS +MB':>13} {'x video':>8} {'tracemalloc MB':>15} {'x video':>8}")
    for r in rows:
        print(
            f"{r['size_bytes'] / 1e6:>6.0f}MB {r['method']:<15} {r['seconds']:>8.3f} {r['rss_growth_bytes'] / 1e6:>13.1f} "
            f"{r['rss_x_video']:>8.2f} {r['tracemalloc_peak_bytes'] / 1e6:>15.1f} {r['tracemalloc_x_video']:>8.2f}"
        )
    report = {
        **_common.report_header("delivery"),
        "s3": "moto server on 127.0.0.1 (in-memory backend)",
        "notes": "seconds and peak RSS growth from one child run, tracemalloc peak from a second; url includes sha256 and presigning",
        "rows": rows,
    }
    _common.write_report(RESULTS, report)
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 60], help="video sizes in MB (10^6 bytes)")
    args = parser.parse_args(argv)
    run(args.sizes)


if __name__ == "__main__":
    main()
