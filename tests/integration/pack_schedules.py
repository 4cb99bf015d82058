"""Print the pinned WanVideoWrapper's own timesteps for a list of (scheduler, steps, shift), as JSON.

Run with ComfyUI's interpreter (it has torch, numpy, scipy and diffusers at the locked versions):

    $COMFY_PYTHON tests/integration/pack_schedules.py --comfy-root $COMFY_ROOT < cases.json > timesteps.json

Input: {"cases": [[scheduler, steps, shift], ...], "beta_ppf": [q, ...]}. Output: {"timesteps": [[t, ...], ...],
"beta_ppf": [scipy.stats.beta.ppf(q, 0.6, 0.6), ...], "versions": {...}}. The timesteps are what
``get_scheduler`` in ``wanvideo/schedulers/__init__.py`` returns for a full run (start_step 0, end_step -1),
i.e. the sequence WanVideoSampler walks through; nothing is copied from the pack, it is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pack_import import wrapper_module  # beside this script: on sys.path when it runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-root", type=Path, default=Path(os.environ.get("COMFY_ROOT", "~/.cache/tenexa/ComfyUI")).expanduser())
    args = parser.parse_args(argv)
    request = json.load(sys.stdin)
    schedulers = wrapper_module(args.comfy_root.resolve(), "wanvideo.schedulers")

    import diffusers
    import numpy
    import scipy
    import scipy.stats
    import torch

    out = {"timesteps": [], "beta_ppf": [float(scipy.stats.beta.ppf(q, 0.6, 0.6)) for q in request.get("beta_ppf", [])],
           "scheduler_list": list(schedulers.scheduler_list),
           "versions": {"torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
                        "diffusers": diffusers.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    for scheduler, steps, shift in request["cases"]:
        _, timesteps, _, _ = schedulers.get_scheduler(scheduler, steps, 0, -1, shift, torch.device("cpu"))
        out["timesteps"].append([float(t) for t in timesteps.tolist()])
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
