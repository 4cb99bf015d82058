"""Download throughput: tenexa.provision against a plain single-stream download of the same files.

A local HTTP server (in its own process, so it does not share the GIL with the clients) serves a set of
generated files. Optionally each connection is capped (``--per-stream-mib``) to imitate a CDN that limits a
single stream, which is the situation that decides cold-start time on RunPod. Baseline: one ``requests``
stream per file, one file after another, no verification. Provisioner: ``tenexa.provision.provision`` with
``--workers`` files at once, each written to ``.part``, verified by size and sha256, renamed.

    python bench/download.py                          # 4 files, 240 MiB, uncapped and 40 MiB/s per stream
    python bench/download.py --sizes-mib 512,256 --per-stream-mib 0,25 --workers 4

Prints a table and writes bench/results/download-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import _common  # also puts the repository on sys.path
import requests
from _common import RESULTS

from tenexa.manifest import ModelEntry
from tenexa.provision import Downloader, provision

BLOCK = 256 * 1024


def serve(root: str, port_queue: multiprocessing.Queue, per_stream_bytes: int) -> None:
    """Serve files under ``root`` with Range support; ``per_stream_bytes`` > 0 caps each connection's rate."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = Path(root) / self.path.lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = path.stat().st_size
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            began, sent = time.monotonic(), 0
            with open(path, "rb") as fh:
                fh.seek(start)
                while block := fh.read(BLOCK):
                    self.wfile.write(block)
                    sent += len(block)
                    if per_stream_bytes:
                        ahead = sent / per_stream_bytes - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def make_files(root: Path, sizes_mib: list[int]) -> list[tuple[str, int, str]]:
    """Files of pseudo-random content (not compressible, not all zeros); returns (name, size, sha256)."""
    files = []
    seed = os.urandom(BLOCK)
    for i, mib in enumerate(sizes_mib):
        name = f"model_{i}.safetensors"
        digest = hashlib.sha256()
        with open(root / name, "wb") as fh:
            for j in range(mib * 1024 * 1024 // BLOCK):
                block = hashlib.sha256(seed + j.to_bytes(8, "little") + i.to_bytes(4, "little")).digest() * (BLOCK // 32)
                fh.write(block)
                digest.update(block)
        files.append((name, mib * 1024 * 1024, digest.hexdigest()))
    return files


def plain_download(base: str, files: list[tuple[str, int, str]], dest: Path) -> float:
    t0 = time.monotonic()
    with requests.Session() as session:
        for name, _, _ in files:
            with session.get(f"{base}/{name}", stream=True, timeout=60) as resp, open(dest / name, "wb") as fh:
                resp.raise_for_status()
                for chunk in resp.iter_content(BLOCK):
                    fh.write(chunk)
    return time.monotonic() - t0


def provisioner_download(base: str, files: list[tuple[str, int, str]], dest: Path, workers: int) -> float:
    entries = [ModelEntry(name, "diffusion_models", name, f"{base}/{name}", size, sha, ("bench",)) for name, size, sha in files]
    t0 = time.monotonic()
    report = provision(entries, dest_root=dest, workers=workers, downloader=Downloader(progress_every=1e9))
    elapsed = time.monotonic() - t0
    failed = [o.error for o in report.outcomes if o.status != "downloaded"]
    if failed:
        raise SystemExit(f"provisioner failed: {failed}")
    return elapsed


def run(sizes: list[int], caps: list[float], workers: int = 4, repeat: int = 2) -> dict:
    """Both modes at every cap; prints the table, writes the JSON and returns the report."""
    logging.basicConfig(level=logging.WARNING)
    total = sum(sizes) * 1024 * 1024

    rows = []
    with tempfile.TemporaryDirectory(prefix="tenexa-bench-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        files = make_files(src, sizes)
        for cap in caps:
            queue: multiprocessing.Queue = multiprocessing.Queue()
            server = multiprocessing.Process(target=serve, args=(str(src), queue, int(cap * 1024 * 1024)), daemon=True)
            server.start()
            base = f"http://127.0.0.1:{queue.get(timeout=10)}"
            try:
                for mode in ("plain single stream", f"tenexa.provision x{workers}"):
                    best = float("inf")
                    for _ in range(repeat):
                        dest = Path(tmp) / "dest"
                        shutil.rmtree(dest, ignore_errors=True)
                        dest.mkdir()
                        if mode.startswith("plain"):
                            best = min(best, plain_download(base, files, dest))
                        else:
                            best = min(best, provisioner_download(base, files, dest, workers))
                    rows.append(
                        {
                            "mode": mode,
                            "per_stream_cap_mib_s": cap or None,
                            "files": len(files),
                            "total_mib": total / 2**20,
                            "seconds": round(best, 3),
                            "mib_s": round(total / 2**20 / best, 1),
                        }
                    )
            finally:
                server.terminate()
                server.join()

    print(f"{'mode':<24} {'cap/stream':>11} {'files':>5} {'MiB':>7} {'seconds':>8} {'MiB/s':>8}")
    for r in rows:
        cap = f"{r['per_stream_cap_mib_s']:.0f} MiB/s" if r["per_stream_cap_mib_s"] else "none"
        print(f"{r['mode']:<24} {cap:>11} {r['files']:>5} {r['total_mib']:>7.0f} {r['seconds']:>8.2f} {r['mib_s']:>8.1f}")
    args = {
        "sizes_mib": ",".join(map(str, sizes)),
        "per_stream_mib": ",".join(f"{c:g}" for c in caps),
        "workers": workers,
        "repeat": repeat,
    }
    report = {**_common.report_header("download"), "args": args, "rows": rows}
    out = _common.write_report(RESULTS / f"download-{_common.utc_stamp()}.json", report)
    print(f"wrote {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="96,64,48,32", help="file sizes in MiB, comma separated")
    parser.add_argument("--per-stream-mib", default="0,40", help="per-connection caps in MiB/s to try (0 = uncapped)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode; the best is reported")
    args = parser.parse_args(argv)
    run([int(s) for s in args.sizes_mib.split(",")], [float(c) for c in args.per_stream_mib.split(",")], args.workers, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
