"""The expert split against the pinned WanVideoWrapper's own schedule code, imported in ComfyUI's interpreter.

``tenexa.wan`` reproduces each accepted scheduler's timesteps in plain Python (the handler has no torch);
here ``get_scheduler`` of the real pack (torch, numpy, scipy, diffusers at the locked versions) computes the
same schedules in a subprocess of COMFY_PYTHON (``pack_schedules.py``) and every case is compared:
the split for every accepted scheduler x steps 2..40 x shifts 1, 3, 5, 8, 9, 12, the whole timestep
sequences (bit for bit where ``wan`` claims exactness, within its margin elsewhere), off-grid shifts
and step counts up to 100, the refused on-the-boundary cases, and the Beta quantile against scipy.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tenexa import schedules, wan

HERE = Path(__file__).resolve().parent
GRID = [(s, n, shift) for s in schedules.SCHEDULERS for n in range(2, 41) for shift in (1.0, 3.0, 5.0, 8.0, 9.0, 12.0)]
_rng = random.Random(12)
OFF_GRID = [(s, _rng.randint(2, 100), round(_rng.uniform(0.5, 50.0), _rng.choice([1, 3, 6]))) for s in schedules.SCHEDULERS for _ in range(25)]
ON_THE_BOUNDARY = [("res_multistep", 10, 8.964143), ("dpm++_sde/beta", 10, 4.111842)]
QUANTILES = [i / 997 for i in range(1, 997)] + [1e-12, 1e-6, 1 - 1e-6]


@pytest.fixture(scope="module")
def pack(comfy_install):
    cases = GRID + OFF_GRID + ON_THE_BOUNDARY
    proc = subprocess.run(
        [str(comfy_install.python), str(HERE / "pack_schedules.py"), "--comfy-root", str(comfy_install.root)],
        input=json.dumps({"cases": cases, "beta_ppf": QUANTILES}), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    print(f"pack schedules computed with {out['versions']}")
    return {"timesteps": dict(zip(map(tuple, cases), out["timesteps"], strict=True)), "beta_ppf": out["beta_ppf"],
            "scheduler_list": out["scheduler_list"], "versions": out["versions"]}


def pack_split(timesteps: list[float]) -> int:
    """Wan2.2's rule applied to the pack's schedule: HIGH while t >= 900, both experts at least one step."""
    high = 0
    for t in timesteps:
        if t < wan.BOUNDARY_TIMESTEP:
            break
        high += 1
    return min(len(timesteps) - 1, max(1, high))


def test_every_accepted_scheduler_is_one_of_the_packs(pack):
    assert set(schedules.SCHEDULERS) <= set(pack["scheduler_list"])


def test_split_matches_the_pack_on_the_whole_grid(pack):
    mismatches = [(case, wan.expert_split(*case[1:], case[0]), pack_split(pack["timesteps"][case])) for case in GRID
                  if wan.expert_split(case[1], case[2], case[0]) != pack_split(pack["timesteps"][case])]
    assert mismatches == [], f"{len(mismatches)} of {len(GRID)} cases differ, e.g. {mismatches[:5]}"


@pytest.mark.parametrize("cases", [GRID, OFF_GRID], ids=["grid", "off-grid"])
def test_timesteps_match_the_pack(pack, cases):
    """Bit for bit where wan claims it (margin 0); within the margin where it does not."""
    wrong = []
    for scheduler, steps, shift in cases:
        ours, margin = schedules.scheduler_timesteps(scheduler, steps, shift)
        theirs = pack["timesteps"][(scheduler, steps, shift)]
        worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
        if worst > margin:
            wrong.append(((scheduler, steps, shift), worst))
    assert wrong == [], f"{len(wrong)} schedules differ beyond their margin, e.g. {wrong[:5]}"


def test_off_grid_splits_match_or_are_refused_honestly(pack):
    refused = []
    for scheduler, steps, shift in OFF_GRID:
        theirs = pack["timesteps"][(scheduler, steps, shift)]
        try:
            assert wan.expert_split(steps, shift, scheduler) == pack_split(theirs), (scheduler, steps, shift)
        except wan.SplitError:
            refused.append((scheduler, steps, shift))
            _, margin = schedules.scheduler_timesteps(scheduler, steps, shift)
            assert any(abs(t - 900) <= 2 * margin for t in theirs)
    assert len(refused) <= 1, refused  # a refusal needs a step within ~1e-3 of t = 900: rare


@pytest.mark.parametrize(("scheduler", "steps", "shift"), ON_THE_BOUNDARY)
def test_refused_cases_really_sit_on_the_boundary(pack, scheduler, steps, shift):
    with pytest.raises(wan.SplitError):
        wan.expert_split(steps, shift, scheduler)
    theirs = pack["timesteps"][(scheduler, steps, shift)]
    assert min(abs(t - 900) for t in theirs) < 1e-3, theirs


def test_the_issue_example_from_the_packs_own_schedule(pack):
    """10 steps at shift 9: the /beta schedule crosses t = 900 after 3 steps, the plain one after 5."""
    assert pack_split(pack["timesteps"][("dpm++_sde/beta", 10, 9.0)]) == 3 == wan.expert_split(10, 9.0, "dpm++_sde/beta")
    assert pack_split(pack["timesteps"][("dpm++_sde", 10, 9.0)]) == 5 == wan.expert_split(10, 9.0, "dpm++_sde")


def test_beta_quantile_matches_scipy(pack):
    worst = max(abs(schedules.beta_ppf(q) - theirs) for q, theirs in zip(QUANTILES, pack["beta_ppf"], strict=True))
    assert worst < 1e-13, worst
