"""What the GPU proof carries to a bare GPU machine, and the rehearsal of that machine's Python here.

The GPU machine (the device tool's ``nvidia-h200`` kind) reaches nothing outside itself: its ``python3`` (3.12) has
torch and a fixed list of packages (``GPU_IMAGE_PACKAGES``), and every call may carry at most 64 MiB of files from
the repository. So the proof carries, in one ignored folder of the repository (``.gpu_payload/``):

- ``sources.tar.xz``: ComfyUI and the three node packs, repacked from the vendor archives (sha256-checked
  against their ``SHA256SUMS``) without the folders no run imports (``SOURCE_EXCLUDES``: example workflows,
  tests, docs), as ``ComfyUI/`` with ``ComfyUI/custom_nodes/<pack>/``;
- ``site.tar.xz``: the packages ComfyUI, the packs and the worker import that the image lacks (``CARRIED``),
  unpacked from their manylinux cp312 wheels with ``pip install --target`` here, so the machine only
  extracts a folder and puts it on ``PYTHONPATH`` (xz packs the shared libraries of PyAV and the static
  ffmpeg ~30 % smaller than the wheels' zip);
- ``payload.json``: what is in it, measured, with the archives' sha256.

``--prepare`` (``python bench/gpu_proof.py --prepare``) writes the folder; the GPU run unpacks it
(``unpack``). Nothing here is committed: the folder is git-ignored and produced by the command.

The rehearsal: ``launch --rehearsal-view DIR`` runs ComfyUI (or the weight synthesis) with its site-packages
replaced by a folder of links to only the installed distributions the GPU machine will have (the image's
packages with their own dependencies, and the carried ones), so the CPU smoke run proves here that ComfyUI,
the packs, the synthesis and the worker import and run with exactly those. Versions can still differ there
(its torch is 2.11, the lock's 2.9.1): the rehearsal checks presence, not versions.

Standard library only (it runs on the GPU machine before anything is unpacked).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAYLOAD_DIR = REPO / ".gpu_payload"
DEFAULT_VENDOR = REPO.parent / "shared" / "vendor" / "comfyui-stack"
CARRY_LIMIT_MIB = 64.0  # everything one device call carries: the repository's files plus the carried folders

# The pinned stack (stack.lock): vendor archive name prefix -> where it goes under ComfyUI/.
SOURCES = {
    "ComfyUI": ".",
    "ComfyUI-WanVideoWrapper": "custom_nodes/ComfyUI-WanVideoWrapper",
    "ComfyUI-VideoHelperSuite": "custom_nodes/ComfyUI-VideoHelperSuite",
    "ComfyUI-KJNodes": "custom_nodes/ComfyUI-KJNodes",
}
STACK_KEYS = {"ComfyUI": "COMFYUI", "ComfyUI-WanVideoWrapper": "WANVIDEOWRAPPER", "ComfyUI-VideoHelperSuite": "VHS",
              "ComfyUI-KJNodes": "KJNODES"}
# Top-level folders of a source tree that nothing imports at run time (7 MB of the wrapper are example workflows).
SOURCE_EXCLUDES = ("example_workflows", "tests", "tests-unit", "docs", ".github", ".ci")
CUSTOM_NODES = tuple(Path(dest).name for dest in SOURCES.values() if dest != ".")

# The GPU machine's python3 packages: the device tool's KINDS.md, "Python packages already there", as read on a
# machine running the 'cuda' image on 2026-11-17 (torch 2.11.0+cu130, transformers 5.17.0, numpy 2.5.2 in its
# pip list row). Names as pip normalises them.
GPU_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())

# What the image lacks and the run imports, pinned as requirements-stack.lock pins them unless noted. Found by
# the rehearsal (the CPU smoke run fails on anything missing from this list).
CARRIED = {
    "av": "18.1.0",  # ComfyUI's video types import it at start-up; the worker probes the MP4 with it
    "imageio-ffmpeg": "0.5.1",  # NOT the lock's 0.8.1 (a 68 MB wheel, 173 MB unpacked): VHS only runs the ffmpeg
    # binary it finds, and 0.5.1's (27 MB wheel) is a static ffmpeg with libx264, all the h264-mp4 format needs
    "websocket-client": "1.9.2",  # the worker's ComfyUI client
    "torchsde": "0.2.6",  # comfy/k_diffusion/sampling.py imports it at start-up
    "trampoline": "0.1.2",  # torchsde's dependency
    "diffusers": "0.42.1",  # the wrapper's schedulers
    "ftfy": "6.3.1",  # the wrapper's text tokenizer module
    "wcwidth": "0.9.4",  # ftfy's dependency
    "gguf": "0.19.0",  # the wrapper's custom_linear imports its gguf helpers unconditionally
    "pydantic": "2.14.4",  # comfy_config, read when ComfyUI loads a node pack
    "pydantic-core": "2.50.5",
    "pydantic-settings": "2.16.3",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "python-dotenv": "1.2.4",
}
# Left out although ComfyUI lists them: each is optional at run time and none is on the Wan path.
NOT_CARRIED = {
    "comfyui-frontend-package": "the web UI; ComfyUI is started with --front-end-root on an empty folder",
    "comfyui-workflow-templates": "template browser of the web UI (ComfyUI logs that it is missing)",
    "comfyui-embedded-docs": "node docs of the web UI",
    "comfy-kitchen": "a 68 MB wheel; ComfyUI's own quantized ops fall back without it, the wrapper's fp8 path never uses it",
    "alembic, sqlalchemy, mako": "ComfyUI's optional sqlite database (it logs a warning and runs without)",
    "kornia, kornia-rs, spandrel": "core nodes this graph does not use (morphology, canny, upscale models)",
    "sageattention": "no build for this GPU and torch can be carried; the proof runs attention sdpa",
}
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux2010_x86_64", "manylinux1_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def mib(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 2)


# --------------------------------------------------------------------------------------------- the rehearsal


def _requirements(distribution: str) -> list[str]:
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [normalize(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r]


def allowed_distributions() -> frozenset[str]:
    """The image's packages with what they need as installed here, and the carried ones.

    An image package's own dependencies come with it on the GPU machine, whatever their names in this
    environment's newer versions (huggingface-hub 2.x here needs httpx2; the image's 1.33 uses httpx).
    """
    image, todo = set(), list(GPU_IMAGE_PACKAGES)
    while todo:
        name = todo.pop()
        if name not in image:
            image.add(name)
            todo.extend(_requirements(name))
    return frozenset(image | {normalize(name) for name in CARRIED})  # a carried package's needs are carried too


def is_available_on_gpu(distribution: str, allowed: frozenset[str] | None = None) -> bool:
    """On the GPU image or carried. torch's own CUDA wheels count as the image's torch (cu12 here, cu13 there)."""
    name = normalize(distribution)
    return name in (allowed if allowed is not None else allowed_distributions()) or name.startswith("nvidia-")


def build_rehearsal_view(view: Path) -> dict:
    """A folder of links to the installed distributions the GPU machine will have, and to nothing else.

    Each allowed distribution's top-level entries (packages, modules, ``.libs`` folders, its ``.dist-info``) are
    linked into ``view``; an interpreter whose only third-party path is ``view`` then finds exactly those,
    and ``importlib.util.find_spec`` answers ``None`` for the rest, as it will there.
    """
    allowed, linked, left_out = allowed_distributions(), set(), set()
    view.mkdir(parents=True, exist_ok=True)
    for dist in importlib.metadata.distributions():
        name = normalize(dist.metadata["Name"] or "")
        if not is_available_on_gpu(name, allowed):
            left_out.add(name)
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if top in linked or top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            source = Path(dist.locate_file(top))
            if source.exists():
                (view / top).symlink_to(source, target_is_directory=source.is_dir())
                linked.add(top)
    return {"linked": len(linked), "left_out": sorted(left_out)}


def enter_rehearsal(view: Path) -> dict:
    """Replace this interpreter's site-packages with the rehearsal view (before importing anything third-party).

    The view is built once and shared by every process of a run (ComfyUI, the weight synthesis, the worker).
    """
    done = view / ".tenexa-rehearsal.json"
    if done.is_file():
        report = json.loads(done.read_text())
    else:
        report = build_rehearsal_view(view)
        done.write_text(json.dumps(report))
    sys.path[:] = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p] + [str(view)]
    importlib.invalidate_caches()
    return report


def run_script(script: Path, args: list[str], rehearsal_view: Path | None, cwd: Path | None = None) -> None:
    """Run ``script`` in this process as ``python SCRIPT ARGS`` would, optionally in the rehearsal."""
    if rehearsal_view is not None:
        report = enter_rehearsal(rehearsal_view)
        print(f"[tenexa gpu proof] rehearsal: only the GPU machine's packages; left out: {', '.join(report['left_out'])}",
              file=sys.stderr, flush=True)
    os.chdir(cwd or script.parent)
    sys.path.insert(0, str(script.parent))
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


# --------------------------------------------------------------------------------------------- the payload


def read_sha256sums(vendor: Path) -> dict[str, str]:
    sums = {}
    for line in (vendor / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def stack_commits() -> dict[str, str]:
    values = {}
    for line in (REPO / "stack.lock").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def vendor_archives(vendor: Path) -> dict[str, Path]:
    """The archive of each pinned repository, at the commit stack.lock pins, with its sha256 checked."""
    commits, sums, found = stack_commits(), read_sha256sums(vendor), {}
    for name, key in STACK_KEYS.items():
        archive = vendor / f"{name}-{commits[f'{key}_COMMIT']}.tar.gz"
        if not archive.is_file():
            raise FileNotFoundError(f"{archive} is missing (stack.lock pins {key}_COMMIT={commits[f'{key}_COMMIT']})")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if sums.get(archive.name) != digest:
            raise ValueError(f"{archive.name}: sha256 {digest} does not match SHA256SUMS ({sums.get(archive.name)})")
        found[name] = archive
    return found


def _source_members(archive: Path, dest: str):
    """Members of a GitHub-layout archive (one top folder) moved under ComfyUI/<dest>, excluded folders left out."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            top, _, rest = member.name.partition("/")
            if not rest or rest.split("/", 1)[0] in SOURCE_EXCLUDES:
                continue
            member.name = str(Path("ComfyUI") / dest / rest)
            yield member, (tar.extractfile(member) if member.isfile() else None)


def build_sources(vendor: Path, out: Path, preset: int = 6) -> dict:
    archives = vendor_archives(vendor)
    with tarfile.open(out, "w:xz", preset=preset) as tar:
        for name, archive in archives.items():
            for member, data in _source_members(archive, SOURCES[name]):
                tar.addfile(member, data)
    return {
        "archives": {a.name: hashlib.sha256(a.read_bytes()).hexdigest() for a in archives.values()},
        "excluded_top_folders": list(SOURCE_EXCLUDES),
    }


def pip_target_command(target: Path) -> list[str]:
    """pip installing the carried wheels for the GPU machine's CPython 3.12 on x86_64 into ``target``."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:", "--no-compile",
           "--target", str(target), "--python-version", "3.12", "--implementation", "cp"]
    for platform in WHEEL_PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + [f"{name}=={version}" for name, version in sorted(CARRIED.items())]


def build_site(out: Path, preset: int = 6) -> dict:
    with tempfile.TemporaryDirectory(prefix="tenexa-gpu-site-") as tmp:
        site = Path(tmp) / "site"
        subprocess.run(pip_target_command(site), check=True)
        unpacked = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        with tarfile.open(out, "w:xz", preset=preset) as tar:
            tar.add(site, arcname="site")
    return {"packages": dict(sorted(CARRIED.items())), "unpacked_mib": mib(unpacked)}


def repository_mib() -> float:
    """Size of what the device tool sends besides carried folders: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    return mib(sum((REPO / os.fsdecode(p)).stat().st_size for p in listed if p and (REPO / os.fsdecode(p)).is_file()))


def measure(payload: Path) -> dict:
    items = {p.name: mib(p.stat().st_size) for p in sorted(payload.iterdir()) if p.is_file()}
    repo = repository_mib()
    total = round(sum(items.values()) + repo, 2)
    return {"items_mib": items, "repository_mib": repo, "total_mib": total, "limit_mib": CARRY_LIMIT_MIB,
            "fits": total <= CARRY_LIMIT_MIB}


def prepare(vendor: Path = DEFAULT_VENDOR, payload: Path = PAYLOAD_DIR, preset: int = 6) -> dict:
    """Write the payload folder (sources + site + manifest) and measure what one device call would carry."""
    payload.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest = {"sources": build_sources(vendor, payload / "sources.tar.xz", preset),
                "site": build_site(payload / "site.tar.xz", preset),
                "not_carried": NOT_CARRIED, "gpu_python": "3.12 (x86_64, manylinux)", "xz_preset": preset}
    manifest["seconds"] = round(time.monotonic() - started, 1)
    (payload / "payload.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["carry"] = measure(payload)
    (payload / "payload.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def unpack(payload: Path, work: Path) -> dict:
    """Extract sources and site into ``work`` (once per payload: a warm machine's second call reuses them)."""
    manifest = (payload / "payload.json").read_bytes()
    stamp = work / ".payload.sha256"
    digest = hashlib.sha256(manifest).hexdigest()
    started = time.monotonic()
    if not (stamp.is_file() and stamp.read_text() == digest):
        for name in ("ComfyUI", "site"):
            shutil.rmtree(work / name, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        for item in ("sources.tar.xz", "site.tar.xz"):
            with tarfile.open(payload / item, "r:xz") as tar:
                tar.extractall(work, filter="data")
        stamp.write_text(digest)
        reused = False
    else:
        reused = True
    return {"comfy_root": work / "ComfyUI", "site": work / "site", "seconds": round(time.monotonic() - started, 1),
            "reused": reused}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    launch = sub.add_parser("launch", help="run a script (ComfyUI's main.py, gpu_weights.py) as gpu_proof.py needs it")
    launch.add_argument("--rehearsal-view", type=Path, help="run with only the packages the GPU machine will have "
                        "(a folder of links, built on first use)")
    launch.add_argument("script", type=Path)
    launch.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    sub.add_parser("measure", help="print what one device call carries with the current payload")
    args = parser.parse_args(argv)
    if args.command == "launch":
        run_script(args.script.resolve(), [a for a in args.args if a != "--"], args.rehearsal_view)
    else:
        print(json.dumps(measure(PAYLOAD_DIR), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
