"""Build tiny random-weight stand-ins for every model the shipped workflows load, so the real graphs run on CPU.

Run with ComfyUI's interpreter (it has torch and the wrapper's VAE code):

    $COMFY_PYTHON tests/integration/tiny_wan.py --comfy-root $COMFY_ROOT --models-dir DIR \\
        [--prompt TEXT ...] [--report FILE]
    $COMFY_PYTHON tests/integration/tiny_wan.py --comfy-root $COMFY_ROOT --rife-checkpoint PATH

Writes, under the EXACT file names ``models.json`` lists (so the graphs bind unchanged):
- ``diffusion_models/``: a Wan2.2-I2V-shaped transformer per expert (30 blocks, dim 192, ffn 384,
  in_channels 36, cross-attention k/v [D, D]; the loader derives the architecture from these shapes);
- ``vae/``: the wrapper's Wan2.1 VAE at 75 % pruning ("lightVAE", 8 M params), random init, or the full
  VAE when the light one cannot be built;
- ``loras/``: rank-4 LoRAs on every block's self-attention;
- ``text_encoders/``: a placeholder file (the graph runs with ``text_encoder=cache``, which removes the
  T5 loader; the file exists only so the manifest's names are all present);
- the wrapper's text embedding disk cache: ``<sha256(prompt.strip())>.pt`` for each prompt (a list with
  one [L, 4096] tensor), in ``custom_nodes/ComfyUI-WanVideoWrapper/text_embed_cache``. These files are
  inside the ComfyUI tree: the report lists exactly the files written, and the caller deletes them.
- with ``--rife-checkpoint PATH``: the state dict of ComfyUI-Frame-Interpolation's own ``IFNet`` at
  architecture 4.7 (what ``rife47.pth`` loads into), randomly initialised, written to PATH unless a file is
  there already (then nothing is written, and the report's ``rife`` list is empty).

Facts behind the shapes: ../../../shared/reference/tiny-wan-on-cpu.md (same pinned stack).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from pack_import import comfy_on_cpu, wrapper_module  # beside this script: on sys.path when it runs
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
DIM, FFN, BLOCKS, IN_CHANNELS, TEXT_DIM, FREQ_DIM, OUT_PATCH = 192, 384, 30, 36, 4096, 256, 64
LORA_RANK = 4
EMBED_DIR = Path("custom_nodes") / "ComfyUI-WanVideoWrapper" / "text_embed_cache"


def manifest_files() -> dict[str, list[str]]:
    data = json.loads((REPO_ROOT / "models.json").read_text(encoding="utf-8"))
    files: dict[str, list[str]] = {}
    for entry in data["models"]:
        files.setdefault(entry["folder"], []).append(entry["file"])
    return files


def _matrix(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.02


def tiny_transformer(seed: int) -> dict[str, torch.Tensor]:
    """State dict of a Wan2.2-I2V-A14B-shaped model at toy size (829 tensors, ~14.6 M params)."""
    gen = torch.Generator().manual_seed(seed)
    d, sd = DIM, {}
    for name in ("patch_embedding", "original_patch_embedding", "expanded_patch_embedding"):
        sd[f"{name}.weight"] = _matrix(gen, d, IN_CHANNELS, 1, 2, 2)
        sd[f"{name}.bias"] = torch.zeros(d)
    sd["text_embedding.0.weight"], sd["text_embedding.0.bias"] = _matrix(gen, d, TEXT_DIM), torch.zeros(d)
    sd["text_embedding.2.weight"], sd["text_embedding.2.bias"] = _matrix(gen, d, d), torch.zeros(d)
    sd["time_embedding.0.weight"], sd["time_embedding.0.bias"] = _matrix(gen, d, FREQ_DIM), torch.zeros(d)
    sd["time_embedding.2.weight"], sd["time_embedding.2.bias"] = _matrix(gen, d, d), torch.zeros(d)
    sd["time_projection.1.weight"], sd["time_projection.1.bias"] = _matrix(gen, 6 * d, d), torch.zeros(6 * d)
    sd["head.head.weight"], sd["head.head.bias"] = _matrix(gen, OUT_PATCH, d), torch.zeros(OUT_PATCH)
    sd["head.modulation"] = torch.randn(1, 2, d, generator=gen) / d**0.5
    for i in range(BLOCKS):
        p = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):  # cross-attention k/v must be [D, D] (text is projected to D)
            for proj in ("q", "k", "v", "o"):
                sd[f"{p}.{attn}.{proj}.weight"] = _matrix(gen, d, d)
                sd[f"{p}.{attn}.{proj}.bias"] = torch.zeros(d)
            sd[f"{p}.{attn}.norm_q.weight"] = torch.ones(d)
            sd[f"{p}.{attn}.norm_k.weight"] = torch.ones(d)
        sd[f"{p}.ffn.0.weight"], sd[f"{p}.ffn.0.bias"] = _matrix(gen, FFN, d), torch.zeros(FFN)
        sd[f"{p}.ffn.2.weight"], sd[f"{p}.ffn.2.bias"] = _matrix(gen, d, FFN), torch.zeros(d)
        sd[f"{p}.norm3.weight"], sd[f"{p}.norm3.bias"] = torch.ones(d), torch.zeros(d)
        sd[f"{p}.modulation"] = torch.randn(1, 6, d, generator=gen) / d**0.5
    return sd


def tiny_lora(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(BLOCKS):
        for proj in ("q", "k", "v", "o"):
            p = f"diffusion_model.blocks.{i}.self_attn.{proj}"
            sd[f"{p}.lora_A.weight"] = torch.randn(LORA_RANK, DIM, generator=gen) * 0.01
            sd[f"{p}.lora_B.weight"] = torch.randn(DIM, LORA_RANK, generator=gen) * 0.01
    return sd


def random_vae(comfy_root: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The wrapper's own Wan2.1 VAE class with random weights: light (75 % pruned) if possible, else full."""
    vae_module = wrapper_module(comfy_root, "wanvideo.wan_video_vae")
    torch.manual_seed(0)
    try:
        return finite_init(vae_module.WanVideoVAE(dtype=torch.float32, pruning_rate=0.75).state_dict()), "light"
    except Exception as exc:  # noqa: BLE001 - fall back to the full VAE, say why
        print(f"light VAE failed ({exc!r}); building the full VAE", file=sys.stderr)
        return finite_init(vae_module.WanVideoVAE(dtype=torch.float32, pruning_rate=0.0).state_dict()), "full"


def finite_init(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Fill every float tensor with values a forward pass keeps finite.

    The wrapper builds the VAE without initialising its parameters (uninitialised memory: values up to 1e38 and
    NaN), so a decode of such weights is NaN and every frame comes out black, which makes frames of a tiny run
    indistinguishable. Weights get N(0, 1/fan_in), biases 0, norm scales (gamma) 1.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            out[name] = tensor
        elif name.endswith("gamma"):
            out[name] = torch.ones_like(tensor)
        elif name.endswith("bias") or tensor.dim() < 2:
            out[name] = torch.zeros_like(tensor)
        else:
            fan_in = tensor[0].numel()
            out[name] = torch.randn(tensor.shape, generator=gen) / fan_in**0.5
    return out


def write_random_rife(comfy_root: Path, path: Path, seed: int = 400) -> list[str]:
    """Random weights of the real RIFE 4.7 architecture, saved the way rife47.pth is (a plain state dict)."""
    if path.exists():
        return []
    comfy_on_cpu(comfy_root)
    arch_file = comfy_root / "custom_nodes" / "ComfyUI-Frame-Interpolation" / "vfi_models" / "rife" / "rife_arch.py"
    module_spec = importlib.util.spec_from_file_location("tenexa_rife_arch", arch_file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    torch.manual_seed(seed)
    state = module.IFNet(arch_ver="4.7").state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return [str(path)]


def embed_file(comfy_root: Path, prompt: str) -> Path:
    digest = hashlib.sha256(prompt.strip().encode("utf-8")).hexdigest()
    return comfy_root / EMBED_DIR / f"{digest}.pt"


def cache_embeddings(comfy_root: Path, prompts: list[str], seed: int = 300) -> list[str]:
    """Write a random [8, 4096] embedding for each prompt not cached yet; returns the files written."""
    written: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    for prompt in dict.fromkeys(prompts):  # unique, in order
        path = embed_file(comfy_root, prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # never overwrite (or later delete) an embedding someone else cached
            torch.save([torch.randn(8, TEXT_DIM, generator=gen) * 0.1], path)
            written.append(str(path))
    return written


def build(comfy_root: Path, models_dir: Path, prompts: list[str]) -> dict:
    files = manifest_files()
    written: list[str] = []

    def save(folder: str, name: str, sd: dict[str, torch.Tensor]) -> None:
        path = models_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        written.append(str(path))

    for index, name in enumerate(sorted(files.get("diffusion_models", []))):
        save("diffusion_models", name, tiny_transformer(seed=100 + index))
    for index, name in enumerate(sorted(files.get("loras", []))):
        save("loras", name, tiny_lora(seed=200 + index))
    vae_sd, vae_kind = random_vae(comfy_root)
    for name in files.get("vae", []):
        save("vae", name, vae_sd)
    for name in files.get("text_encoders", []):
        save("text_encoders", name, {"placeholder": torch.zeros(1)})

    return {"models": written, "embeds": cache_embeddings(comfy_root, prompts), "vae": vae_kind}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-root", type=Path, default=Path(os.environ.get("COMFY_ROOT", "~/.cache/tenexa/ComfyUI")).expanduser())
    parser.add_argument("--models-dir", type=Path, help="where the model folders go (not needed with --embeds-only)")
    parser.add_argument("--embeds-only", action="store_true", help="only cache embeddings for the given prompts")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt to cache an embedding for (repeatable)")
    parser.add_argument("--report", type=Path, help="write the list of files written here (JSON)")
    parser.add_argument("--rife-checkpoint", type=Path, help="only write random RIFE 4.7 weights to this path")
    args = parser.parse_args(argv)
    root = args.comfy_root.resolve()
    if args.rife_checkpoint:
        report = {"models": [], "embeds": [], "rife": write_random_rife(root, args.rife_checkpoint)}
    elif args.embeds_only:
        report = {"models": [], "embeds": cache_embeddings(root, args.prompt)}
    elif args.models_dir is None:
        parser.error("--models-dir is required unless --embeds-only")
    else:
        report = build(root, args.models_dir, args.prompt)
    text = json.dumps(report, indent=1)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
