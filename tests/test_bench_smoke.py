"""The benchmarks' code paths with tiny counts, so they do not rot: shapes of their reports, never timings.

Everything runs against the protocol double (no real ComfyUI, no GPU); the real-ComfyUI paths are the same
functions with another target. About 15 s.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import gpu_generate  # noqa: E402
import latency  # noqa: E402
import overhead  # noqa: E402
import run_all  # noqa: E402

FIGURE = {"n", "median_ms", "p95_ms", "min_ms", "max_ms", "mean_ms"}


def test_statistics_and_header():
    assert _common.percentile([1, 2, 3, 4], 50) == 2.5
    assert _common.percentile([5], 95) == 5
    fig = _common.summarize([0.001, 0.002, 0.003])
    assert set(fig) == FIGURE and fig["median_ms"] == 2.0 and fig["n"] == 3
    header = _common.report_header("x")
    assert {"benchmark", "date", "commit", "machine", "load_average_1_5_15m"} <= set(header)
    assert {"cpu_model", "cpus", "ram_gb", "python", "os"} <= set(header["machine"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    with _common.protocol_double(work / "ComfyUI") as double, _common.local_api(double, work) as api:
        yield double, api, work


def test_overhead_paths(stack):
    double, api, work = stack
    selftest = overhead.selftest_overhead(double, api, jobs=2, api_jobs=1, volume=work / "volume", warmup=0)
    generate = overhead.generate_overhead(double, api, jobs=2, volume=work / "volume", warmup=0)
    for fig in (selftest["in_process"], generate["in_process"], generate["local_api"]):
        assert {"worker", "raw", "overhead_vs_raw", "overhead_median_ms", "comfy_execution", "worker_minus_execution"} <= set(fig)
        assert set(fig["worker"]) == FIGURE and fig["worker"]["n"] == 2
    assert {"wall", "transport", "diagnose_own_work", "selftest_in_worker"} <= set(selftest["local_api"])
    report = {"selftest": selftest, "generate": generate}
    assert len(overhead.rows(report)) == 4
    rows = run_all.summary_rows({"overhead": {"status": "ok", "report": report}})
    assert [r["figure"] for r in rows if r["benchmark"] == "overhead"][0] == "self-test, real ComfyUI, in process"
    assert all(r["met"] in ("yes", "NO", "-") for r in rows)
    assert not list((double.root / "input").rglob("*.png")), "raw-baseline uploads are cleaned up"


def test_latency_paths(stack):
    double, api, work = stack
    import handler

    before = handler.SETTINGS
    test_mode = latency.test_mode(double, api, jobs=2, volume=work / "volume")
    diagnose = latency.diagnose_latency(double, api, jobs=1, volume=work / "volume")
    assert handler.SETTINGS is before, "the in-process worker is put back as it was"
    assert {
        "health_in_process",
        "handler_on_event_loop",
        "health_in_process_comfy_down",
        "local_api_runsync",
        "baseline_get_system_stats",
        "baseline_local_api_openapi",
    } <= set(test_mode)
    assert {"in_process_with_selftest", "local_api_without_selftest", "baseline_get_object_info"} <= set(diagnose)
    startup = latency.startup(runs=1, runpod_runs=0)
    assert set(startup["import_handler"]) == FIGURE and startup["rss_after_import_handler_mb"] > startup["rss_bare_interpreter_mb"]
    assert startup["top_imports"] and {"module", "cumulative_ms"} == set(startup["top_imports"][0])
    report = {"startup": startup, "test_mode": test_mode, "diagnose": diagnose, "local_api_rss_mb": {"idle": 1.0, "after_jobs": 1.0}}
    assert latency.rows(report)
    assert any(r["figure"] == "import handler (median)" for r in run_all.summary_rows({"latency": {"status": "ok", "report": report}}))


def test_gpu_benchmark_follows_a_prompt_against_the_double(stack, tmp_path):
    double, _, _ = stack
    report = gpu_generate.run(double.url, resolutions=["480p"], steps=[4], gpu_check=False, frames=5, out=tmp_path / "gpu.json")
    run = json.loads((tmp_path / "gpu.json").read_text())["runs"][0]
    assert run == json.loads(json.dumps(report["runs"][0]))
    assert run["used"]["steps"] == 4 and run["experts"]["high"]["node"] == "220" and run["experts"]["low"]["node"] == "540"
    assert run["experts"]["high"]["steps"] >= 1 and run["total_s"] > 0 and run["comfy_execution_s"] is not None
    assert run["expected"]["forwards"] == 5 and run["expected"]["wan_facts_warm_e2e_lightning_s"] == [20, 30]


def test_gpu_analysis_of_a_recorded_timeline():
    graph = {"1": {"class_type": "WanVideoModelLoader"}, "2": {"class_type": "WanVideoSampler"}, "3": {"class_type": "WanVideoSampler"}}
    events = [(0.0, "execution_cached", {"nodes": []}), (0.1, "executing", {"node": "1"}), (5.1, "executing", {"node": "2"})]
    events += [(6.1 + 2 * i, "progress", {"node": "2", "value": i + 1, "max": 4}) for i in range(2)]
    events += [(9.0, "executing", {"node": "3"})] + [(10.0 + 3 * i, "progress", {"node": "3", "value": i + 3, "max": 4}) for i in range(2)]
    events += [(14.0, "executing", {"node": None})]
    timeline = gpu_generate.Timeline(0.0, events, done_at=14.0)
    history = {"status": {"messages": [["execution_start", {"timestamp": 1000}], ["execution_success", {"timestamp": 14900}]]}}
    out = gpu_generate.analyze(timeline, graph, "2", "3", history)
    assert out["model_load_s"] == 5.0 and out["total_s"] == 14.0 and out["comfy_execution_s"] == 13.9
    assert out["experts"]["high"] == {"node": "2", "steps": 2, "progress_max": 4, "s_per_step": 2.0, "first_step_s": 1.0, "node_s": 3.9,
                                      "step_gaps_s": [2.0], "weights_load_s": None}
    assert out["experts"]["low"]["s_per_step"] == 3.0


def test_gpu_benchmark_says_why_it_cannot_run(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(_common.BenchmarkSkipped, match="no NVIDIA GPU"):
        gpu_generate.gpu_info()
    assert gpu_generate.main(["--comfy-url", f"http://127.0.0.1:{_common.free_port()}"]) == 2


def test_run_all_records_a_skip_with_its_reason(tmp_path):
    out = tmp_path / "all.json"
    # Where a GPU exists, no ComfyUI answers on this free port: skipped either way, never silently.
    assert run_all.main(["--only", "gpu_generate", "--out", str(out), "--comfy-url", f"http://127.0.0.1:{_common.free_port()}"]) == 0
    report = json.loads(out.read_text())
    assert {"benchmark", "date", "commit", "machine", "mode", "summary", "sections"} <= set(report)
    gpu = report["sections"]["gpu_generate"]
    assert gpu["status"] == "skipped" and gpu["reason"]
    assert {r["benchmark"] for r in report["summary"]} >= set(run_all.SECTIONS)
    assert all(report["sections"][name]["status"] == "not selected" for name in run_all.SECTIONS if name != "gpu_generate")


def test_features_paths_against_the_double(stack, tmp_path):
    """bench/features.py's measuring code against the double (the real run uses a tiny-weight ComfyUI)."""
    import features

    from tenexa.interpolation import rife_checkpoint

    double, _, work = stack
    checkpoint = rife_checkpoint(double.root)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"the double never reads it")
    settings = _common.worker_settings(double, work / "volume")
    generate = features.generate_cases(settings, repeats=1)
    assert set(generate["cases"]) == set(features.CASES)
    assert generate["cases"]["rife x2"]["interpolator"] == "rife" and generate["cases"]["ffmpeg x2"]["interpolator"] == "ffmpeg"
    assert generate["cases"]["rife x2"]["frames"] == 17 and generate["cases"]["base"]["added_s"] == 0.0
    one, two = (generate["cases"][name] for name in features.CHAINING)
    assert (one["frames"], one["windows"]) == (17, [17]) and (two["frames"], two["windows"]) == (17, [9, 9])
    assert generate["chaining"]["added_s"] == round(two["median_s"] - one["median_s"], 3)
    rife = features.rife_alone(double, settings, repeats=1)
    assert rife["frames_out"] == 33 and rife["added_s_per_new_frame"] is not None
    ffmpeg = features.ffmpeg_alone(tmp_path, repeats=1)
    assert ffmpeg["frames_out"] == 33 and ffmpeg["minterpolate_and_encode_median_s"] > 0
    report = {"generate": generate, "rife_480p": rife, "ffmpeg_480p": ffmpeg}
    features.print_rows(report)
    rows = run_all.summary_rows({"features": {"status": "ok", "report": report}})
    figures = [r["figure"] for r in rows if r["benchmark"] == "features"]
    assert figures[-1] == "ffmpeg x2 at 832x480 (CPU)" and "17 frames as two chained windows (tiny Wan, CPU)" in figures
