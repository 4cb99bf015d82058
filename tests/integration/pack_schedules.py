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
import importlib
import json
import os
import sys
import types
from pathlib import Path


def import_schedulers(comfy_root: Path) -> types.ModuleType:
    """The wrapper's schedulers module, imported as part of a package (it uses relative imports)."""
    sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # comfy.model_management must not look for CUDA
    pkg = types.ModuleType("tenexa_wvw")
    pkg.__path__ = [str(comfy_root / "custom_nodes" / "ComfyUI-WanVideoWrapper")]
    sys.modules["tenexa_wvw"] = pkg
    return importlib.import_module("tenexa_wvw.wanvideo.schedulers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-root", type=Path, default=Path(os.environ.get("COMFY_ROOT", "~/.cache/tenexa/ComfyUI")).expanduser())
    args = parser.parse_args(argv)
    request = json.load(sys.stdin)
    schedulers = import_schedulers(args.comfy_root.resolve())

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
