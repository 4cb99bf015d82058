#!/usr/bin/env python3
"""Validate API-format ComfyUI workflows against recorded (or live) node schemas.

    python scripts/validate_workflow.py [--object-info FILE | --url URL [--check-files]] workflow.json ...

Prints one line per problem (node id, class, input, what is wrong) and exits 1 if any workflow has one,
0 when all are clean. Default schemas: ``tenexa/data/object_info.json`` (recorded from the pinned stack).
``--url`` reads ``/object_info`` from a running ComfyUI; add ``--check-files`` to also require every model
file name to be on that server's disk. Uses only the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tenexa.validator import DEFAULT_OBJECT_INFO, load_object_info, validate  # noqa: E402 - after the sys.path line above


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--object-info", type=Path, default=None, help=f"recorded schemas (default {DEFAULT_OBJECT_INFO.relative_to(REPO_ROOT)})")
    source.add_argument("--url", help="read /object_info from this running ComfyUI instead")
    parser.add_argument("--check-files", action="store_true", help="with --url: model file names must exist on that server")
    parser.add_argument("workflows", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.check_files and not args.url:
        parser.error("--check-files needs --url (recorded schemas do not list the deployment's files)")

    if args.url:
        with urllib.request.urlopen(f"{args.url.rstrip('/')}/object_info", timeout=60) as resp:
            object_info = json.load(resp)
    else:
        object_info = load_object_info(args.object_info or DEFAULT_OBJECT_INFO)

    failed = False
    for path in args.workflows:
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{path}: cannot read as JSON: {exc}")
            failed = True
            continue
        problems = validate(graph, object_info, check_files=args.check_files)
        for problem in problems:
            print(f"{path}: {problem}")
        if problems:
            failed = True
        else:
            print(f"{path}: ok ({len(graph)} nodes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
