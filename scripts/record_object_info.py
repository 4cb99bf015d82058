#!/usr/bin/env python3
"""Record ``/object_info`` for the classes Tenexa uses from a running ComfyUI.

    python scripts/record_object_info.py [--url http://127.0.0.1:8188] [--out tenexa/data/object_info.json]

Records every class the shipped workflows use, the classes binding may add to them (RIFE interpolation,
the last-frame PNG, segment joins) and the classes the selftest graph uses, stamped with the ComfyUI
version and the commits of ComfyUI and the node packs. Commits come from ``stack.lock`` (KEY=value lines:
COMFYUI_COMMIT, WANVIDEOWRAPPER_COMMIT, VHS_COMMIT, KJNODES_COMMIT, FRAME_INTERPOLATION_COMMIT) when it
has them, else from the command-line flags. Record against a ComfyUI with no models installed, so the model
file listings in the file stay empty (the validator checks model names only against a live listing).

Uses only ``requests`` and the standard library.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tenexa.workflows import ADDED_CLASSES, required_classes  # noqa: E402 - after the sys.path line above

SELFTEST_CLASSES = ("LoadImage", "ImageScale", "RepeatImageBatch", "VHS_VideoCombine", "SaveVideo", "CreateVideo")
LOCK_KEYS = {
    "COMFYUI_COMMIT": "comfyui_commit",
    "WANVIDEOWRAPPER_COMMIT": "wanvideowrapper_commit",
    "VHS_COMMIT": "vhs_commit",
    "KJNODES_COMMIT": "kjnodes_commit",
    "FRAME_INTERPOLATION_COMMIT": "frame_interpolation_commit",
}


def read_stack_lock(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, blank lines and quotes allowed) -> {stamp field: value}."""
    stamp: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if key in LOCK_KEYS:
            stamp[LOCK_KEYS[key]] = value.strip().strip("'\"")
    return stamp


def record(url: str, classes: list[str], stamp: dict[str, str], timeout: float = 30.0) -> dict:
    stats = requests.get(f"{url}/system_stats", timeout=timeout)
    stats.raise_for_status()
    info = requests.get(f"{url}/object_info", timeout=timeout)
    info.raise_for_status()
    everything = info.json()
    missing = [c for c in classes if c not in everything]
    if missing:
        raise SystemExit(f"ComfyUI at {url} lacks {', '.join(missing)}: is every node pack installed?")
    return {
        "recorded": {
            "comfyui_version": stats.json().get("system", {}).get("comfyui_version"),
            **stamp,
            "classes": len(classes),
            "recorded_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "tool": "scripts/record_object_info.py",
        },
        "object_info": {c: everything[c] for c in classes},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="ComfyUI base URL")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tenexa" / "data" / "object_info.json")
    parser.add_argument("--stack-lock", type=Path, default=REPO_ROOT / "stack.lock")
    for key, field in LOCK_KEYS.items():
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, help=f"used when stack.lock has no {key}")
    args = parser.parse_args(argv)

    stamp = {field: getattr(args, field) for field in LOCK_KEYS.values() if getattr(args, field)}
    if args.stack_lock.is_file():
        stamp.update(read_stack_lock(args.stack_lock))
    absent = [key for key, field in LOCK_KEYS.items() if field not in stamp]
    if absent:
        parser.error(f"no stack.lock and no flags for {', '.join(absent)}")

    classes = sorted(set(required_classes()) | set(ADDED_CLASSES) | set(SELFTEST_CLASSES))
    data = record(args.url.rstrip("/"), classes, stamp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"recorded {len(classes)} classes from {args.url} (ComfyUI {data['recorded']['comfyui_version']}) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
