"""Synthetic weights with the real files' tensor names, shapes and dtypes, for timing the real graph on a GPU.

Run with ComfyUI's interpreter (torch, safetensors and the wrapper's VAE class are needed):

    python bench/gpu_weights.py --comfy-root ComfyUI --models-dir DIR --report FILE [--blocks 40] [--device cuda] \\
        [--prompt TEXT ...]

Writes, under the exact names ``models.json`` gives (so the shipped graphs bind unchanged):

- ``diffusion_models/Wan2_2-I2V-A14B-{HIGH,LOW}_fp8_e4m3fn_scaled_KJ.safetensors``: the A14B expert as Kijai ships
  it, fp8 e4m3fn *scaled*. Tensor names and shapes are those of the pinned wrapper's ``WanModel`` for the
  values its loader derives from the file (``nodes_model_loading.py``: dim 5120 from ``patch_embedding`` ->
  40 heads, 40 layers; ffn 13824 from ``blocks.0.ffn.0.bias``; in_channels 36; no ``text_embedding``-less or
  ``k_img`` keys, so cross-attention type ``t2v`` as for the real Wan2.2 I2V experts). Each of the 10 linear
  weights of a block is ``F8_E4M3`` with a 0-dim ``F32`` ``<module>.scale_weight`` beside it (the loader's
  scaled-fp8 detection and ``CustomLinear`` multiply by it), plus the ``scaled_fp8`` marker (an empty
  ``F8_E4M3`` tensor). Everything else is ``BF16``: that is an inference, not a reading of the file (fp8 blocks
  14.05 GB + bf16 rest 0.47 GB = 14.53 GB, the size Kijai's A14B fp8_scaled files are listed at).
- ``loras/``: the two Wan2.2-Lightning Seko-V1 rank-64 files (high and low noise) under ``models.json``'s names:
  for every linear of every block ``diffusion_model.blocks.N.<module>.lora_down.weight`` ``[64, in]`` and
  ``.lora_up.weight`` ``[out, 64]`` in ``F32`` and a 0-dim 8-byte ``.alpha`` (8.0). This layout gives a file of exactly
  1,226,977,424 bytes, the size ``models.json`` records for the real files (``lora_A``/``lora_B`` names, bf16,
  4-byte alphas or no alphas all give other sizes); F64 vs I64 for the alpha cannot be told from the size.
- ``vae/Wan2_1_VAE_bf16.safetensors``: the tensors of the wrapper's own Wan2.1 VAE class (full, not the pruned
  light VAE), seeded values, saved in bf16 as shipped (126.9 M parameters, 254 MB).
- the T5 text encoder is NOT written: like the integration tier, the graph runs with
  ``TENEXA_TEXT_ENCODER=cache`` and reads random ``[8, 4096]`` embeddings of the job's prompts from the
  wrapper's disk cache (the T5 tokenizer files are not in the vendored sources). Its cost per job is
  0.5-1 s on a GPU (wan-facts.md §6.3) and is missing from every figure.

Values are seeded random numbers scaled so activations stay finite through 40 blocks: linear weights
of variance ``1/fan_in`` (uniform, so bounded; the fp8 payload spans the e4m3 range and ``scale_weight`` brings it
back), biases 0, norm weights 1, modulations of variance ``1/dim``. The values change no kernel, shape or transfer: timing is real, output is noise.

``--blocks N`` writes only blocks 0..N-1 (the CPU smoke run uses 2 at full width); the loader then needs the
proof's probe to build that many layers (see ``bench/comfy_probe``). Files are streamed tensor by tensor
(at most ``CHUNK_BYTES`` of one tensor in host memory), generated on ``--device`` (cuda on the GPU machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_WAN = REPO / "tests" / "integration"  # the integration tier's VAE import and embedding cache, shared

# Wan2.2-I2V-A14B (wan-facts.md §1, the wrapper's loader): what the real experts are.
DIM, FFN, LAYERS, IN_CHANNELS, TEXT_DIM, FREQ_DIM, OUT_PATCH = 5120, 13824, 40, 36, 4096, 256, 64
LORA_RANK, LORA_ALPHA = 64, 8.0
FP8_PAYLOAD_SPREAD = 256.0  # unit-variance values times 256: the stored fp8 values span e4m3's +-443 of 448
CHUNK_BYTES = 64 << 20

# safetensors dtype -> bytes. ``DTYPE_ORDER`` is the library's enum order: it writes tensors sorted by dtype
# (descending) then name, and so do we, so a header is byte-for-byte the length the library's would be.
DTYPE_BYTES = {"F8_E4M3": 1, "BF16": 2, "F32": 4, "F64": 8}
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name
    init: str  # "linear" (std 1/sqrt(fan_in)), "fp8_linear", "normal" (std value), "modulation", "zeros", "ones", "const"
    value: float = 0.0  # the constant of "const", the std of "normal"

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for s in self.shape:
            n *= s
        return n


def _linear(prefix: str, out_f: int, in_f: int, fp8: bool) -> list[TensorSpec]:
    if not fp8:
        return [TensorSpec(f"{prefix}.weight", (out_f, in_f), "BF16", "linear"), TensorSpec(f"{prefix}.bias", (out_f,), "BF16", "zeros")]
    scale = 1.0 / (in_f**0.5) / FP8_PAYLOAD_SPREAD
    return [
        TensorSpec(f"{prefix}.weight", (out_f, in_f), "F8_E4M3", "fp8_linear"),
        TensorSpec(f"{prefix}.scale_weight", (), "F32", "const", scale),
        TensorSpec(f"{prefix}.bias", (out_f,), "BF16", "zeros"),
    ]


def expert_spec(blocks: int = LAYERS) -> list[TensorSpec]:
    """Every tensor of a Wan2.2-I2V-A14B expert in Kijai's fp8_e4m3fn_scaled_KJ layout, blocks 0..blocks-1."""
    d = DIM
    spec = [
        TensorSpec("scaled_fp8", (0,), "F8_E4M3", "zeros"),
        TensorSpec("patch_embedding.weight", (d, IN_CHANNELS, 1, 2, 2), "BF16", "linear"),
        TensorSpec("patch_embedding.bias", (d,), "BF16", "zeros"),
        *_linear("text_embedding.0", d, TEXT_DIM, fp8=False),
        *_linear("text_embedding.2", d, d, fp8=False),
        *_linear("time_embedding.0", d, FREQ_DIM, fp8=False),
        *_linear("time_embedding.2", d, d, fp8=False),
        *_linear("time_projection.1", 6 * d, d, fp8=False),
        *_linear("head.head", OUT_PATCH, d, fp8=False),
        TensorSpec("head.modulation", (1, 2, d), "BF16", "modulation"),
    ]
    for i in range(blocks):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):  # Wan2.2 A14B is "t2v"-type: cross-attention k/v are [d, d]
            for proj in ("q", "k", "v", "o"):
                spec += _linear(f"{b}.{attn}.{proj}", d, d, fp8=True)
            spec += [TensorSpec(f"{b}.{attn}.norm_q.weight", (d,), "BF16", "ones"), TensorSpec(f"{b}.{attn}.norm_k.weight", (d,), "BF16", "ones")]
        spec += _linear(f"{b}.ffn.0", FFN, d, fp8=True) + _linear(f"{b}.ffn.2", d, FFN, fp8=True)
        spec += [TensorSpec(f"{b}.norm3.weight", (d,), "BF16", "ones"), TensorSpec(f"{b}.norm3.bias", (d,), "BF16", "zeros"),
                 TensorSpec(f"{b}.modulation", (1, 6, d), "BF16", "modulation")]
    return spec


def lora_spec(blocks: int = LAYERS) -> list[TensorSpec]:
    """Wan2.2-Lightning Seko-V1 rank-64 LoRA layout (size-checked against models.json at 40 blocks)."""
    spec = []
    modules = [(f"{attn}.{p}", DIM, DIM) for attn in ("self_attn", "cross_attn") for p in "qkvo"]
    modules += [("ffn.0", FFN, DIM), ("ffn.2", DIM, FFN)]
    for i in range(blocks):
        for module, out_f, in_f in modules:
            m = f"diffusion_model.blocks.{i}.{module}"
            spec += [
                TensorSpec(f"{m}.lora_down.weight", (LORA_RANK, in_f), "F32", "linear"),
                TensorSpec(f"{m}.lora_up.weight", (out_f, LORA_RANK), "F32", "normal", 0.01),  # small: a gentle delta
                TensorSpec(f"{m}.alpha", (), "F64", "const", LORA_ALPHA),
            ]
    return spec


# ------------------------------------------------------------------------------------------------ the writer


def ordered(spec: list[TensorSpec]) -> list[TensorSpec]:
    return sorted(spec, key=lambda t: (-DTYPE_ORDER.index(t.dtype), t.name))


def header_bytes(spec: list[TensorSpec]) -> bytes:
    header, offset = {}, 0
    for t in ordered(spec):
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def planned_size(spec: list[TensorSpec]) -> int:
    """The file size ``write`` produces (and the safetensors library would) for this spec."""
    return 8 + len(header_bytes(spec)) + sum(t.nbytes for t in spec)


def spec_digest(spec: list[TensorSpec], seed: int) -> str:
    return hashlib.sha256(header_bytes(spec) + repr([(t.init, t.value) for t in spec]).encode() + str(seed).encode()).hexdigest()


def _torch():
    import torch  # here, not at the top: the spec and the planned sizes need no torch (the unit tests run without it)

    return torch


def _tiny_wan():
    sys.path.insert(0, str(TINY_WAN))
    import tiny_wan

    return tiny_wan


def _chunks(t: TensorSpec, seed: int, device: str) -> Iterator:
    """The tensor's values in row chunks of at most CHUNK_BYTES, generated on ``device``, returned on the CPU."""
    torch = _torch()
    torch_dtype = {"F8_E4M3": torch.float8_e4m3fn, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}[t.dtype]
    if not t.shape or t.nbytes <= CHUNK_BYTES:
        row_chunks = [t.shape]
    else:
        rows_per_chunk = max(1, CHUNK_BYTES // (t.nbytes // t.shape[0]))
        row_chunks = [(min(rows_per_chunk, t.shape[0] - r), *t.shape[1:]) for r in range(0, t.shape[0], rows_per_chunk)]
    gen = torch.Generator(device=device).manual_seed(seed ^ zlib.crc32(t.name.encode()))
    fan_in = 1
    for s in t.shape[1:]:
        fan_in *= s
    for shape in row_chunks:
        if t.init == "zeros":
            values = torch.zeros(shape, device=device)
        elif t.init == "ones":
            values = torch.ones(shape, device=device)
        elif t.init == "const":
            values = torch.full(shape, t.value, device=device, dtype=torch.float64)
        else:  # uniform on [-sqrt(3), sqrt(3)] (unit variance, bounded), then scaled: twice as fast as randn on a CPU
            values = torch.rand(shape, generator=gen, device=device).sub_(0.5).mul_(2 * 3**0.5)
            values.mul_({"normal": t.value, "modulation": DIM**-0.5, "fp8_linear": FP8_PAYLOAD_SPREAD}.get(t.init, fan_in**-0.5))
        yield values.to(torch_dtype).cpu()


def write(path: Path, spec: list[TensorSpec], seed: int, device: str = "cpu") -> dict:
    """Stream ``spec`` into a safetensors file; skipped when the same spec and seed were written there before."""
    marker = path.with_name(path.name + ".tenexa-synth")
    digest = spec_digest(spec, seed)
    size = planned_size(spec)
    if path.is_file() and path.stat().st_size == size and marker.is_file() and marker.read_text() == digest:
        return {"file": path.name, "bytes": size, "tensors": len(spec), "seconds": 0.0, "reused": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    torch = _torch()
    header = header_bytes(spec)
    with path.open("wb", buffering=16 << 20) as out:
        out.write(struct.pack("<Q", len(header)) + header)
        for t in ordered(spec):
            for chunk in _chunks(t, seed, device):
                out.write(chunk.reshape(-1).view(torch.uint8).numpy())
    seconds = time.monotonic() - started
    if path.stat().st_size != size:
        raise RuntimeError(f"{path}: wrote {path.stat().st_size} bytes, planned {size}")
    marker.write_text(digest)
    return {"file": path.name, "bytes": size, "tensors": len(spec), "seconds": round(seconds, 2),
            "mb_per_s": round(size / 1e6 / max(seconds, 1e-9), 1), "reused": False}


VAE_MARKER = "wan2.1-vae-full-bf16-uniform-seed0"


def vae_state(comfy_root: Path) -> dict:
    """The wrapper's full Wan2.1 VAE (the class's own tensor names and shapes), filled with seeded values.

    The class builds its layers with ComfyUI's ``disable_weight_init`` ops, so its parameters start as
    uninitialised memory (NaN and garbage, seen: the first convolution returned NaN): every tensor is set here.
    Convolution weights get variance 1/fan_in, biases 0, the RMS norms' gammas 1. Keys without the ``model.``
    prefix; the loader adds it when absent, so either form loads the same.
    """
    torch = _torch()
    vae = _tiny_wan().wrapper_module(comfy_root, "wanvideo.wan_video_vae").WanVideoVAE(dtype=torch.float32, pruning_rate=0.0)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, value in vae.state_dict().items():
        kind = name.rsplit(".", 1)[-1]
        if kind == "bias":
            filled = torch.zeros(value.shape)
        elif kind == "gamma":
            filled = torch.ones(value.shape)
        else:
            fan_in = value[0].numel()
            filled = torch.rand(value.shape, generator=gen).sub_(0.5).mul_(2 * 3**0.5 / fan_in**0.5)
        state[name.removeprefix("model.")] = filled.to(torch.bfloat16).contiguous()
    return state


def write_vae(path: Path, comfy_root: Path) -> dict:
    """``vae_state`` in bf16, as shipped (126.9 M parameters, 254 MB)."""
    marker = path.with_name(path.name + ".tenexa-synth")
    if path.is_file() and marker.is_file() and marker.read_text() == VAE_MARKER:
        return {"file": path.name, "bytes": path.stat().st_size, "seconds": 0.0, "reused": True}
    started = time.monotonic()
    state = vae_state(comfy_root)
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    marker.write_text(VAE_MARKER)
    return {"file": path.name, "bytes": path.stat().st_size, "tensors": len(state),
            "params_m": round(sum(v.numel() for v in state.values()) / 1e6, 1), "seconds": round(time.monotonic() - started, 2), "reused": False}


def build(comfy_root: Path, models_dir: Path, blocks: int, device: str, prompts: list[str]) -> dict:
    files = _tiny_wan().manifest_files()
    report: dict = {"blocks": blocks, "layers_real": LAYERS, "dim": DIM, "device": device, "files": {}, "embeds": []}
    started = time.monotonic()
    for index, name in enumerate(sorted(files["diffusion_models"])):
        spec = expert_spec(blocks)
        report["files"][name] = write(models_dir / "diffusion_models" / name, spec, seed=1 + index, device=device)
        report["files"][name]["fp8_tensors"] = sum(t.dtype == "F8_E4M3" and t.shape != (0,) for t in spec)
    for index, name in enumerate(sorted(files["loras"])):
        report["files"][name] = write(models_dir / "loras" / name, lora_spec(blocks), seed=3 + index, device=device)
    for name in files["vae"]:
        report["files"][name] = write_vae(models_dir / "vae" / name, comfy_root)
    report["text_encoders_not_written"] = files.get("text_encoders", [])
    report["embeds"] = _tiny_wan().cache_embeddings(comfy_root, prompts)
    report["seconds"] = round(time.monotonic() - started, 2)
    report["bytes"] = sum(f["bytes"] for f in report["files"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-root", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--blocks", type=int, default=LAYERS, help="transformer blocks to write (40 = the real depth)")
    parser.add_argument("--device", default="cuda" if _torch().cuda.is_available() else "cpu", help="where random values are made")
    parser.add_argument("--prompt", action="append", default=[], help="cache a random embedding for this prompt (repeatable)")
    parser.add_argument("--report", type=Path, required=True, help="where the report (JSON) goes")
    args = parser.parse_args(argv)
    report = build(args.comfy_root.resolve(), args.models_dir, args.blocks, args.device, args.prompt)
    args.report.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {report['bytes'] / 1e9:.2f} GB of weights in {report['seconds']} s on {args.device}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
