#!/usr/bin/env python3
"""Ask a Tenexa endpoint how it is doing: a quick health check, or a full report in sections.

Needs only Python 3.9+ and ``requests``. Examples:

  export RUNPOD_API_KEY=...
  python scripts/diagnose.py <ENDPOINT_ID> --test        # quick: is ComfyUI up, disk, volume
  python scripts/diagnose.py <ENDPOINT_ID>               # full report
  python scripts/diagnose.py <ENDPOINT_ID> --selftest    # full report + a tiny generation
  python scripts/diagnose.py <ENDPOINT_ID> --verify-hashes   # full report + sha256 of every model file (minutes)
  python scripts/diagnose.py http://127.0.0.1:8000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find _client from any working directory

import _client as client  # noqa: E402
from _client import fmt_bytes, fmt_duration, one_line, say  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diagnose.py",
        description="Check a Tenexa worker: quick health (--test) or a full diagnostic report.",
        epilog=client.EXIT_CODES_HELP.format(
            one="the worker answered but is degraded (ComfyUI down, models or nodes missing or of the\n"
                "       wrong size, too little host RAM, a workflow invalid, the selftest failed, or the\n"
                "       diagnose job itself failed)")
        .replace("  0    success", "  0    healthy")
        + "\n\nThe API key comes from RUNPOD_API_KEY or --api-key and is never printed.",
        formatter_class=client.HelpFormatter,
    )
    client.add_connection_arguments(parser, default_timeout=600)
    mode = parser.add_argument_group("mode")
    choice = mode.add_mutually_exclusive_group()
    choice.add_argument("--test", action="store_true", help="quick health check (input {\"test\": true})")
    choice.add_argument("--selftest", action="store_true", help="full report plus a tiny end-to-end generation")
    mode.add_argument("--verify-hashes", action="store_true",
                      help="also hash every model file whose sha256 the manifest knows (minutes for ~30 GB)")
    return parser


# --- rendering helpers: every value may be missing or oddly shaped -----------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(show(item) for item in value) if value else "(none)"
    if isinstance(value, dict):
        return one_line(", ".join(f"{key}={show(inner)}" for key, inner in value.items()), 160) or "(none)"
    return str(value)


def show_quantity(key: str, value: Any) -> str:
    """Sizes: keys ending in _gb/_mb are already scaled; vram_*/bytes are raw bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key.endswith("_gb"):
            return f"{value:.1f} GB"
        if key.endswith("_mb"):
            return f"{value:.1f} MB"
        if key.startswith(("vram", "torch_vram", "ram")) or key.endswith("bytes"):
            return fmt_bytes(value)
    return show(value)


def label(key: str) -> str:
    """``free_gb`` -> ``free``: the unit shows in the value."""
    for suffix in ("_gb", "_mb", "_bytes"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return key.replace("_", " ")


def heading(title: str) -> None:
    say("")
    say(title)
    say("-" * len(title))


def row(name: str, value: Any, indent: int = 2) -> None:
    say(f"{' ' * indent}{name:<22} {value if isinstance(value, str) else show(value)}")


def mark(ok: bool | None) -> str:
    return "OK  " if ok else ("FAIL" if ok is False else "?   ")


def pair(device: dict[str, Any], base: str) -> str | None:
    """"free / total" from ``<base>_free``/``<base>_total`` (bytes) or ``..._gb`` (GB)."""
    for unit in ("", "_gb"):
        free, total = device.get(f"{base}_free{unit}"), device.get(f"{base}_total{unit}")
        if free is not None or total is not None:
            return f"{show_quantity(base + '_free' + unit, free)} / {show_quantity(base + '_total' + unit, total)}"
    return None


# --- the report --------------------------------------------------------------------------------------

SECTION_KEYS = {"status", "comfyui_reachable", "comfyui_url", "system", "disk", "volume_mounted", "models", "manifest", "host_memory",
                "node_check", "workflow_checks", "settings", "selftest", "healthy", "handler_version", "comfyui_up", "seconds"}


def render_comfyui(report: dict[str, Any]) -> None:
    system = _dict(report.get("system"))
    heading("ComfyUI")
    row("reachable", mark(report.get("comfyui_reachable", report.get("comfyui_up"))).strip())
    if report.get("comfyui_url"):
        row("url", report["comfyui_url"])
    info = _dict(system.get("system"))  # raw /system_stats nests versions under "system"; accept both shapes
    for key in ("comfyui_version", "pytorch_version", "python_version", "embedded_python", "os", "error",
                "object_info_error"):
        value = system.get(key, info.get(key))
        if value is not None:
            row(label(key), one_line(value, 80))
    if report.get("handler_version") is not None:
        row("handler version", report["handler_version"])


def render_gpu(report: dict[str, Any]) -> None:
    heading("GPU and VRAM")
    system = _dict(report.get("system"))
    devices = _list(system.get("devices"))
    if not devices:
        row("devices", "none reported")
    for device in devices:
        device = _dict(device)
        say(f"  {one_line(device.get('name', '?'), 70)} ({device.get('type', '?')})")
        for base, name in (("vram", "vram free / total"), ("torch_vram", "torch vram free / total")):
            text = pair(device, base)
            if text:
                row(name, text, indent=4)
    ram = pair(system, "ram") or pair(_dict(system.get("system")), "ram")
    if ram:
        row("ram free / total", ram)


def render_disk(report: dict[str, Any]) -> None:
    heading("Disk and volume")
    disk = report.get("disk")
    if isinstance(disk, dict):
        for key, value in disk.items():
            if isinstance(value, dict):
                say(f"  {key}")
                for inner_key, inner in value.items():
                    row(label(inner_key), show_quantity(inner_key, inner), indent=4)
            else:
                row(label(key), show_quantity(key, value))
    elif disk is not None:
        row("disk", disk)
    if "disk_free_gb" in report:
        row("disk free", show_quantity("disk_free_gb", report["disk_free_gb"]))
    row("volume mounted", report.get("volume_mounted"))


def render_models(report: dict[str, Any]) -> None:
    heading("Models")
    manifest = _dict(report.get("manifest"))
    present, missing = _list(manifest.get("present")), _list(manifest.get("missing"))
    if manifest:
        row("manifest present", f"{len(present)} file(s)")
        row("manifest missing", f"{len(missing)} file(s)")
        for item in missing:
            item = _dict(item) or {"name": item}
            where = "/".join(str(part) for part in (item.get("folder"), item.get("file")) if part)
            say(f"    MISSING  {item.get('name', '?')}" + (f"  ({where})" if where else ""))
        for item in _list(manifest.get("wrong_size")):
            item = _dict(item)
            say(f"    SIZE     {item.get('name', '?')}  ({item.get('path', '?')}: {show_quantity('bytes', item.get('size'))},"
                f" expected {show_quantity('bytes', item.get('expected'))})")
        for item in _list(manifest.get("hash_mismatch")):
            item = _dict(item)
            say(f"    SHA256   {item.get('name', '?')}  ({item.get('path', '?')} does not match the manifest)")
        if "verified" in manifest:
            row("sha256 verified", show(_list(manifest.get("verified"))))
            row("sha256 unknown", show(_list(manifest.get("unverifiable"))))
    models = _dict(report.get("models"))
    for folder, content in models.items():
        if isinstance(content, dict):
            local, volume = _list(content.get("local")), _list(content.get("volume"))
            row(folder, f"{len(local)} local, {len(volume)} on volume")
            for name in local:
                say(f"    local   {name}")
            for name in volume:
                say(f"    volume  {name}")
        else:
            row(folder, f"{len(_list(content))} file(s)")
            for name in _list(content):
                say(f"    {name}")
    if not manifest and not models:
        row("models", "not reported")


def render_host_memory(report: dict[str, Any]) -> None:
    memory = _dict(report.get("host_memory"))
    if not memory:
        return
    heading("Host memory")
    row("ram total / needed", f"{show_quantity('total_gb', memory.get('ram_total_gb'))} / {show_quantity('need_gb', memory.get('need_gb'))}"
        f"  {mark(memory.get('ok')).strip()}")
    for part, gb in _dict(memory.get("parts_gb")).items():
        row(part, show_quantity("part_gb", gb), indent=4)
    if memory.get("reason"):
        row("reason", one_line(memory["reason"], 200))


def render_nodes(report: dict[str, Any]) -> None:
    heading("Nodes")
    nodes = _dict(report.get("node_check"))
    if not nodes:
        row("node check", "not reported")
        return
    if nodes.get("checked") is False:
        row("node check", "not checked (ComfyUI unreachable)")
        return
    row("required available", f"{len(_list(nodes.get('required_available')))} node class(es)")
    row("required missing", show(_list(nodes.get("required_missing"))))


def _workflow_ok(check: dict[str, Any]) -> bool | None:
    if "valid" in check:  # None: the worker could not check it (ComfyUI down), which is reported elsewhere
        return None if check["valid"] is None else bool(check["valid"])
    missing_models = any(_list(v) for v in _dict(check.get("missing_models")).values())
    if check.get("exists") is False or _list(check.get("missing_nodes")) or missing_models or _list(check.get("errors")):
        return False
    return None


def render_workflows(report: dict[str, Any]) -> None:
    heading("Workflows")
    checks = _dict(report.get("workflow_checks"))
    if not checks:
        row("workflow checks", "not reported")
    for name, check in checks.items():
        check = _dict(check)
        ok = _workflow_ok(check)
        details = []
        if check.get("exists") is False:
            details.append("file missing")
        if check.get("nodes") is not None:
            details.append(f"{check['nodes']} nodes")
        say(f"  {mark(ok)}  {name}" + (f"  ({', '.join(details)})" if details else ""))
        if _list(check.get("missing_nodes")):
            say(f"        missing nodes: {show(check['missing_nodes'])}")
        for folder, files in _dict(check.get("missing_models")).items():
            if _list(files):
                say(f"        missing {folder}: {show(files)}")
        for error in _list(check.get("errors")):
            say(f"        error: {one_line(error, 200)}")


def render_settings(report: dict[str, Any]) -> None:
    heading("Effective settings")
    settings = _dict(report.get("settings"))
    if not settings:
        row("settings", "not reported")
    for key, value in settings.items():
        row(key, value)


def _selftest_ok(selftest: Any) -> bool:
    return bool(selftest.get("ok")) if isinstance(selftest, dict) else bool(selftest)


def render_selftest(report: dict[str, Any]) -> None:
    if "selftest" not in report:
        return
    heading("Selftest")
    data = _dict(report.get("selftest"))
    ok = _selftest_ok(report.get("selftest"))
    row("result", "passed" if ok else "FAILED")
    if isinstance(data.get("seconds"), (int, float)):
        row("time", fmt_duration(data["seconds"]))
    video = _dict(data.get("video"))
    if video:
        row("video", f"{video.get('frames', '?')} frames @ {video.get('fps', '?')} fps, "
                     f"{video.get('width', '?')}x{video.get('height', '?')}, {show_quantity('bytes', video.get('bytes'))}")
    if data.get("error"):
        code = f"{data['error_code']}: " if data.get("error_code") else ""
        row("error", one_line(code + str(data["error"]), 200))


def render_other(report: dict[str, Any]) -> None:
    other = {key: value for key, value in report.items() if key not in SECTION_KEYS}
    if other:
        heading("Other")
        for key, value in other.items():
            row(key, value)


def find_problems(report: dict[str, Any]) -> list[str]:
    """Everything in a diagnose report that makes the worker degraded, one line each."""
    problems: list[str] = []
    if report.get("comfyui_reachable", report.get("comfyui_up")) is False:
        problems.append("ComfyUI not reachable")
    manifest = _dict(report.get("manifest"))
    missing = _list(manifest.get("missing"))
    if missing:
        problems.append(f"{len(missing)} model file(s) from the manifest missing")
    for key, what in (("wrong_size", "with the wrong size"), ("hash_mismatch", "with the wrong sha256")):
        if _list(manifest.get(key)):
            problems.append(f"{len(manifest[key])} model file(s) {what}")
    if _dict(report.get("host_memory")).get("ok") is False:
        problems.append(f"not enough host RAM: {one_line(report['host_memory'].get('reason', ''), 160)}")
    missing_nodes = _list(_dict(report.get("node_check")).get("required_missing"))
    if missing_nodes:
        problems.append(f"{len(missing_nodes)} required node class(es) missing: {show(missing_nodes)}")
    for name, check in _dict(report.get("workflow_checks")).items():
        if _workflow_ok(_dict(check)) is False:
            problems.append(f"workflow {name} invalid")
    if "selftest" in report and not _selftest_ok(report["selftest"]):
        problems.append("selftest failed")
    return problems


def assess_report(report: dict[str, Any]) -> tuple[bool, list[str]]:
    """(healthy, problems). The worker's own ``healthy`` decides when present (it knows which checks
    are optional); otherwise any problem found here means degraded."""
    problems = find_problems(report)
    healthy = report["healthy"] if isinstance(report.get("healthy"), bool) else not problems
    if not healthy and not problems:
        problems.append("the worker reports healthy=false")
    return healthy, problems


def assess_test(report: dict[str, Any]) -> bool:
    ok = report.get("ok")
    return ok if isinstance(ok, bool) else bool(report.get("comfyui_up"))


def render_report(report: dict[str, Any]) -> bool:
    """Print the full report in sections and a verdict; return healthy."""
    render_comfyui(report)
    render_gpu(report)
    render_disk(report)
    render_models(report)
    render_host_memory(report)
    render_nodes(report)
    render_workflows(report)
    render_settings(report)
    render_selftest(report)
    render_other(report)
    healthy, problems = assess_report(report)
    say("")
    say(f"Verdict: {'HEALTHY' if healthy else 'DEGRADED'}")
    for problem in problems:
        say(f"  - {problem}")
    return healthy


def render_test(report: dict[str, Any]) -> bool:
    ok = assess_test(report)
    say(f"Health check: {'OK' if ok else 'DEGRADED'}")
    row("comfyui up", report.get("comfyui_up"))
    row("disk free", show_quantity("disk_free_gb", report.get("disk_free_gb")))
    row("volume mounted", report.get("volume_mounted"))
    row("handler version", report.get("handler_version"))
    for key, value in report.items():
        if key not in {"status", "ok", "comfyui_up", "disk_free_gb", "volume_mounted", "handler_version"}:
            row(label(key), value)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job_input: dict[str, Any] = {"test": True} if args.test else {"diagnose": True}
    if args.selftest:
        job_input["selftest"] = True
    if args.verify_hashes and not args.test:
        job_input["verify_hashes"] = True
    runner = client.connect(args)
    reply = runner.run(job_input)
    report = reply.get("output")
    if reply.get("status") != "COMPLETED" or not isinstance(report, dict) or report.get("status") == "failed":
        if args.json:
            client.print_json(reply)
        else:
            client.print_failure(reply, runner.elapsed())
            if reply.get("status") == "COMPLETED":
                say(f"  output   {one_line(json.dumps(report), 200)}")
        return client.EXIT_JOB_FAILED
    if args.json:
        client.print_json(reply)
        healthy = assess_test(report) if args.test else assess_report(report)[0]
        return client.EXIT_OK if healthy else client.EXIT_JOB_FAILED
    took = f" (diagnose took {fmt_duration(report['seconds'])})" if isinstance(report.get("seconds"), (int, float)) else ""
    say(f"Tenexa worker at {runner.api.endpoint.describe()}, answered in {fmt_duration(runner.elapsed())}{took}")
    healthy = render_test(report) if args.test else render_report(report)
    return client.EXIT_OK if healthy else client.EXIT_JOB_FAILED


if __name__ == "__main__":
    sys.exit(client.run_main(main))
