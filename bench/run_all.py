"""Every Tenexa benchmark in one command: one table, one JSON with the machine, the date and the commit.

    .venv/bin/python bench/run_all.py            # full run (under 10 minutes on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # fewer repetitions (under 3 minutes); still >= 30 jobs per overhead case
    .venv/bin/python bench/run_all.py --only latency,overhead

Sections, in order (each also writes its own JSON in bench/results/):
  latency       import time and idle memory; test mode and diagnose latency (bench/latency.py)
  overhead      worker overhead per job: self-test on a real ComfyUI on CPU, generate on the protocol double (bench/overhead.py)
  gpu_generate  real Wan2.2 generations (bench/gpu_generate.py); skipped, with the reason, without an NVIDIA GPU
  features      the added time of frame interpolation and of segment chaining per second of output, beside the base job (bench/features.py)
  cold_start    entrypoint.sh to a ready handler with a real ComfyUI on CPU (bench/cold_start.py)
  delivery      base64 / bucket delivery time and memory (bench/delivery.py)
  download      provisioner vs single-stream download (bench/download.py)

latency and overhead share one real ComfyUI on CPU and one local API (``python handler.py --rp_serve_api``).
A section that cannot run here is recorded as ``skipped`` with its reason; one that fails as ``error`` with
the error, and the command then exits 1. Nothing is skipped silently.

Writes bench/results/all.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import _common
import cold_start
import delivery
import download
import features
import gpu_generate
import latency
import overhead
from _common import BenchmarkSkipped

SECTIONS = ("latency", "overhead", "gpu_generate", "features", "cold_start", "delivery", "download")

# Repetitions per mode. The overhead cases keep >= 30 jobs even in --quick (the minimum).
SIZES = {
    "quick": {
        "import_runs": 5,
        "runpod_runs": 3,
        "test_jobs": 50,
        "diagnose_jobs": 3,
        "overhead_jobs": 30,
        "selftest_api_jobs": 10,
        "features_repeats": 1,
        "cold_start_runs": 1,
        "delivery_sizes": [5],
        "download": {"sizes": [32, 16], "caps": [0.0], "workers": 4, "repeat": 1},
    },
    "full": {
        "import_runs": 15,
        "runpod_runs": 5,
        "test_jobs": 200,
        "diagnose_jobs": 10,
        "overhead_jobs": 50,
        "selftest_api_jobs": 30,
        "features_repeats": 3,
        "cold_start_runs": 2,
        "delivery_sizes": [5, 20, 60],
        "download": {"sizes": [96, 64, 48, 32], "caps": [0.0, 40.0], "workers": 4, "repeat": 2},
    },
}


class Sections:
    """Runs each section, recording status (ok / skipped / error), its reason and its duration."""

    def __init__(self, only: set[str]):
        self.only = only
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn: Callable[[], dict]) -> dict | None:
        if name not in self.only:
            self.results[name] = {"status": "not selected", "reason": "left out by --only"}
            return None
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        try:
            report = fn()
            entry = {"status": "ok", "report": report}
            if report.get("skipped"):
                entry["partly_skipped"] = report["skipped"]
        except BenchmarkSkipped as skip:
            entry = {"status": "skipped", "reason": str(skip)}
            print(f"SKIPPED: {name}: {skip}", flush=True)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            entry = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            print(f"ERROR: {name}: {type(exc).__name__}: {exc}", flush=True)
        entry["seconds"] = round(time.monotonic() - started, 1)
        self.results[name] = entry
        return entry.get("report")


def run_latency_and_overhead(sections: Sections, size: dict, work: Path) -> None:
    """latency and overhead against one real ComfyUI on CPU (else the double, self-test skipped) and one local API."""
    if not {"latency", "overhead"} & sections.only:
        for name in ("latency", "overhead"):
            sections.run(name, dict)
        return
    # Import time first, on a machine not yet busy with ComfyUI or the local API.
    startup = latency.startup(size["import_runs"], size["runpod_runs"]) if "latency" in sections.only else None
    with ExitStack() as stack:
        try:
            target = stack.enter_context(_common.real_comfyui(work))
            missing = None
        except BenchmarkSkipped as skip:
            missing = str(skip)
            print(f"note: {skip}; test mode and diagnose run against the protocol double, the self-test overhead is skipped")
            target = stack.enter_context(_common.protocol_double(work / "ComfyUI"))
        api = stack.enter_context(_common.local_api(target, work))
        volume = work / "volume"

        def latency_section() -> dict:
            report = {**_common.report_header("latency"), "targets": latency.TARGETS}
            if missing:
                report["comfyui_note"] = f"no real ComfyUI ({missing}); measured against the protocol double"
            report["startup"] = startup
            report["test_mode"] = latency.test_mode(target, api, size["test_jobs"], volume)
            report["diagnose"] = latency.diagnose_latency(target, api, size["diagnose_jobs"], volume)
            report["local_api_rss_mb"] = {
                "idle": round(api.idle_rss_bytes / 1e6, 1),
                "after_jobs": round(_common.rss_bytes(api.pid) / 1e6, 1),
            }
            latency.print_rows(report)
            _common.write_report(_common.RESULTS / "latency.json", report)
            return report

        def overhead_section() -> dict:
            report = {**_common.report_header("overhead"), "targets": {"overhead_median_ms": overhead.TARGET_OVERHEAD_MS}}
            if missing:
                report["skipped"] = {"selftest": missing}
                print(f"SKIPPED: self-test overhead: {missing}")
            else:
                report["selftest"] = overhead.selftest_overhead(target, api, size["overhead_jobs"], size["selftest_api_jobs"], volume)
            with ExitStack() as inner:
                (work / "double").mkdir(exist_ok=True)
                double = inner.enter_context(_common.protocol_double(work / "double" / "ComfyUI"))
                (work / "api2").mkdir(exist_ok=True)
                api2 = inner.enter_context(_common.local_api(double, work / "api2"))
                report["generate"] = overhead.generate_overhead(double, api2, size["overhead_jobs"], volume)
            overhead.print_rows(report)
            _common.write_report(_common.RESULTS / "overhead.json", report)
            return report

        sections.run("latency", latency_section)
        sections.run("overhead", overhead_section)


# ------------------------------------------------------------------------------------------------- summary


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """One row per headline figure: value, baseline beside it, target and whether it is met."""
    rows: list[dict] = []

    def add(bench: str, figure: str, value: str, baseline: str = "-", target: str = "-", met: str = "-") -> None:
        rows.append({"benchmark": bench, "figure": figure, "value": value, "baseline": baseline, "target": target, "met": met})

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    for name, entry in results.items():
        if entry["status"] != "ok":
            add(name, "(whole benchmark)", entry["status"].upper())
            rows[-1]["note"] = entry.get("reason") or entry.get("error", "")
        for part, reason in (entry.get("partly_skipped") or {}).items():
            add(name, part, "SKIPPED")
            rows[-1]["note"] = reason
    lat = (results.get("latency") or {}).get("report")
    if lat:
        s, t, d = lat["startup"], lat["test_mode"], lat["diagnose"]
        tg = latency.TARGETS
        add(
            "latency",
            "import handler (median)",
            f"{s['import_handler']['median_ms']:.0f} ms",
            f"deps only {s['import_dependency_floor']['median_ms']:.0f} ms; python -c pass {s['python_c_pass_wall']['median_ms']:.0f} ms",
            f"<= {tg['import_ms']:.0f} ms",
            yes(s["import_handler"]["median_ms"] <= tg["import_ms"]),
        )
        if s.get("import_runpod"):
            add("latency", "import runpod (lazy; serving only)", f"{s['import_runpod']['median_ms']:.0f} ms")
        add(
            "latency",
            "RSS after import handler",
            f"{s['rss_after_import_handler_mb']} MB",
            f"bare python {s['rss_bare_interpreter_mb']} MB",
        )
        add(
            "latency",
            "local API server RSS idle / after jobs",
            f"{lat['local_api_rss_mb']['idle']} / {lat['local_api_rss_mb']['after_jobs']} MB",
        )
        base = f"GET /system_stats {t['baseline_get_system_stats']['median_ms']:.1f} ms"
        add(
            "latency",
            "test mode in process (handler on a loop)",
            f"{t['handler_on_event_loop']['median_ms']:.1f} ms",
            base,
            f"<= {tg['test_in_process_ms']:.0f} ms",
            yes(t["handler_on_event_loop"]["median_ms"] <= tg["test_in_process_ms"]),
        )
        add(
            "latency",
            "test mode in process, ComfyUI down",
            f"{t['health_in_process_comfy_down']['median_ms']:.1f} ms",
            f"refused connect {t['baseline_refused_connection']['median_ms']:.1f} ms",
            f"<= {tg['test_in_process_ms']:.0f} ms",
            yes(t["health_in_process_comfy_down"]["median_ms"] <= tg["test_in_process_ms"]),
        )
        if "local_api_runsync" in t:
            add(
                "latency",
                "test mode via local API /runsync",
                f"{t['local_api_runsync']['median_ms']:.1f} ms",
                f"GET /openapi.json {t['baseline_local_api_openapi']['median_ms']:.1f} ms",
                f"<= {tg['test_local_api_ms']:.0f} ms",
                yes(t["local_api_runsync"]["median_ms"] <= tg["test_local_api_ms"]),
            )
        base = f"GET /object_info {d['baseline_get_object_info']['median_ms']:.0f} ms"
        for key, label in (
            ("in_process_without_selftest", "diagnose in process"),
            ("in_process_with_selftest", "diagnose + self-test in process"),
            ("local_api_without_selftest", "diagnose via local API"),
            ("local_api_with_selftest", "diagnose + self-test via local API"),
        ):
            if key in d:
                add("latency", label, f"{d[key]['median_ms']:.0f} ms", base)
    ovh = (results.get("overhead") or {}).get("report")
    if ovh:
        target = overhead.TARGET_OVERHEAD_MS

        def over(label: str, fig: dict) -> None:
            add(
                "overhead",
                label,
                f"{fig['overhead_median_ms']:.1f} ms (p95 paired {fig['overhead_vs_raw']['p95_ms']:.1f})",
                f"raw {fig['raw']['median_ms']:.1f} ms, worker {fig['worker']['median_ms']:.1f} ms",
                f"<= {target:.0f} ms",
                yes(fig["overhead_median_ms"] <= target),
            )

        if "selftest" in ovh:
            over("self-test, real ComfyUI, in process", ovh["selftest"]["in_process"])
            api = ovh["selftest"].get("local_api")
            if api:
                add(
                    "overhead",
                    "self-test via local API (diagnose)",
                    f"{api['wall']['median_ms']:.0f} ms wall",
                    f"transport {api['transport']['median_ms']:.1f} ms + diagnose {api['diagnose_own_work']['median_ms']:.0f} ms "
                    f"+ self-test {api['selftest_in_worker']['median_ms']:.0f} ms",
                )
        gen = ovh.get("generate") or {}
        if "in_process" in gen:
            over("generate (double), in process", gen["in_process"])
        if "local_api" in gen:
            over("generate (double), via local API", gen["local_api"])
    feat = (results.get("features") or {}).get("report")
    if feat:
        cases = feat["generate"]["cases"]
        base = cases["base"]
        for name, case in cases.items():
            if name != "base":
                add("features", f"generate 64x64 + {name} (tiny Wan, CPU)",
                    f"{case['added_s_per_output_second']:+.2f} s per output s ({case['added_s']:+.2f} s)",
                    f"base job {base['median_s']:.2f} s for {base['output_seconds']} s of video")
        chain = feat["generate"].get("chaining")
        if chain:
            add("features", "17 frames as two chained windows (tiny Wan, CPU)",
                f"{chain['added_s_per_output_second']:+.2f} s per output s ({chain['added_s']:+.2f} s)",
                f"same clip in one window {chain['one_window_median_s']:.2f} s")
        rife, ff = feat["rife_480p"], feat["ffmpeg_480p"]
        add("features", "RIFE x2 at 832x480 (CPU)", f"{rife['added_s_per_output_second']:+.2f} s per output s",
            f"graph without RIFE {rife['without_rife_median_s']:.2f} s")
        add("features", "ffmpeg x2 at 832x480 (CPU)", f"{ff['added_s_per_output_second']:+.2f} s per output s",
            f"plain H.264 encode {ff['plain_encode_median_s']:.2f} s")
    cold = (results.get("cold_start") or {}).get("report")
    if cold:
        for i, r in enumerate(cold["runs"], 1):
            e = r["events_s"]
            add("cold_start", f"run {i}: handler ready", f"{e['handler_ready']:.1f} s", f"ComfyUI ready {e['comfyui_ready']:.1f} s")
    dlv = (results.get("delivery") or {}).get("report")
    if dlv:
        bare = {r["size_bytes"]: r for r in dlv["rows"] if r["method"] == "bare_base64"}
        for r in dlv["rows"]:
            if r["method"] != "bare_base64":
                b = bare.get(r["size_bytes"])
                add(
                    "delivery",
                    f"{r['method']} {r['size_bytes'] / 1e6:.0f} MB",
                    f"{r['seconds'] * 1000:.0f} ms, RSS x{r['rss_x_video']}",
                    f"bare base64 {b['seconds'] * 1000:.0f} ms, x{b['rss_x_video']}" if b else "-",
                )
    dl = (results.get("download") or {}).get("report")
    if dl:
        plain = {r["per_stream_cap_mib_s"]: r for r in dl["rows"] if r["mode"].startswith("plain")}
        for r in dl["rows"]:
            if not r["mode"].startswith("plain"):
                cap = r["per_stream_cap_mib_s"]
                p = plain.get(cap)
                add(
                    "download",
                    f"{r['mode']}, cap {cap or 'none'} MiB/s",
                    f"{r['mib_s']} MiB/s",
                    f"single stream {p['mib_s']} MiB/s" if p else "-",
                )
    gpu = (results.get("gpu_generate") or {}).get("report")
    if gpu:
        for run in gpu["runs"]:
            add(
                "gpu_generate",
                run["case"] + (" (cold)" if run.get("cold") else ""),
                f"{run['total_s']:.1f} s, peak {run['vram']['peak_gb']} GB",
                f"expected {run['expected'].get('wan_facts_warm_e2e_lightning_s') or run['expected']['e2e_s_estimate']} s",
            )
    return rows


def print_summary(rows: list[dict]) -> None:
    _common.print_table(
        ["benchmark", "figure", "value", "baseline (same run)", "target", "met"],
        [[r["benchmark"], r["figure"], r["value"], r["baseline"], r["target"], r["met"]] for r in rows],
    )
    for r in rows:
        if r.get("note"):
            print(f"{r['value']}: {r['benchmark']} {r['figure']}: {r['note']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: under 3 minutes on 2 cores")
    parser.add_argument("--only", help=f"comma-separated sections to run (default all): {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=_common.RESULTS / "all.json", help="where the combined JSON goes")
    parser.add_argument("--comfy-url", default="http://127.0.0.1:8188", help="ComfyUI with the real weights, for gpu_generate")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    started = time.monotonic()
    header = _common.report_header("all")
    print(
        f"Tenexa benchmarks ({mode}) at {header['commit']} on {header['machine']['cpu_model']}, {header['machine']['cpus']} cores, "
        f"{header['machine']['ram_gb']} GB RAM, Python {header['machine']['python']}"
    )
    sections = Sections(only)

    with tempfile.TemporaryDirectory(prefix="tenexa-bench-") as tmp:
        run_latency_and_overhead(sections, size, Path(tmp))
    sections.run("gpu_generate", lambda: gpu_generate.run(args.comfy_url))
    sections.run("features", lambda: features.run(size["features_repeats"]))
    sections.run("cold_start", lambda: cold_start.run(size["cold_start_runs"]))
    sections.run("delivery", lambda: delivery.run(size["delivery_sizes"]))
    dl = size["download"]
    sections.run("download", lambda: download.run(dl["sizes"], dl["caps"], dl["workers"], dl["repeat"]))

    rows = summary_rows(sections.results)
    print(f"\n=== summary ({mode}, {time.monotonic() - started:.0f} s) ===")
    print_summary(rows)
    report = {
        **header,
        "mode": mode,
        "seconds": round(time.monotonic() - started, 1),
        "sizes": size,
        "summary": rows,
        "sections": sections.results,
    }
    path = _common.write_report(args.out, report)
    print(f"wrote {_common.relative(path)}")
    errors = [name for name, entry in sections.results.items() if entry["status"] == "error"]
    if errors:
        print(f"errors in: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
