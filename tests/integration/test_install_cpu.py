"""The real pinned stack as scripts/install_stack.py left it: complete, and a second run changes nothing.

CI runs the installer before the tests; here it runs again over that install. It must only re-check (pip check,
the markers), unpack nothing, run no pip install and no boot, and leave every file as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tenexa.config import REPO_ROOT

INSTALLER = REPO_ROOT / "scripts" / "install_stack.py"


def _install_paths(comfy_install):
    venv = comfy_install.python.parent.parent
    stamp = comfy_install.root / ".tenexa-stack.json"
    if not stamp.is_file():
        message = f"{comfy_install.root} was not made by scripts/install_stack.py (no {stamp.name}): nothing to rerun over"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return venv, stamp


def test_the_installed_stack_is_the_locked_one(comfy_install):
    venv, stamp_path = _install_paths(comfy_install)
    stamp = json.loads(stamp_path.read_text())
    sys.path.insert(0, str(INSTALLER.parent))
    try:
        import install_stack
    finally:
        sys.path.pop(0)
    comps = install_stack.components(install_stack.read_stack_lock())
    assert stamp["commits"] == {c.key: c.commit for c in comps}
    assert stamp["lock_sha256"] == install_stack.sha256_file(REPO_ROOT / "requirements-stack.lock")
    for c in comps[1:]:
        marker = comfy_install.root / "custom_nodes" / c.name / ".tenexa-source.json"
        assert json.loads(marker.read_text())["commit"] == c.commit
    torch = subprocess.run([str(comfy_install.python), "-c", "import sys, torch; print(torch.__version__, '%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=120)
    version, python = torch.stdout.split()
    assert version.split("+")[0] == install_stack.read_stack_lock()["TORCH_VERSION"] and python == stamp["python"]


def test_second_run_over_a_complete_install_is_a_no_op(comfy_install, record_property):
    venv, _ = _install_paths(comfy_install)
    watched = [p for p in (comfy_install.root / ".tenexa-stack.json", venv / ".tenexa-venv.json", venv / "tenexa-pip-install.log",
                           *(comfy_install.root / "custom_nodes").glob("*/.tenexa-source.json")) if p.exists()]
    before = {p: p.stat().st_mtime_ns for p in watched}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(INSTALLER), "--comfy-root", str(comfy_install.root), "--venv", str(venv)],
                            capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    record_property("rerun_s", round(seconds, 1))
    print(f"\ninstall_stack.py rerun over the complete install: {seconds:.1f} s")
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout
    assert not any(word in result.stdout for word in ("unpacking", "installing", "creating", "boot check:"))
    assert {p: p.stat().st_mtime_ns for p in watched} == before
