"""safetensors files written byte by byte (no torch in the handler's environment): Wan-shaped LoRAs and impostors."""

from __future__ import annotations

import json
import math
import random
import struct

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}


def safetensors(tensors: dict[str, tuple[str, list[int]]], *, seed: int = 0, metadata: dict | None = None) -> bytes:
    """A valid safetensors file: ``{name: (dtype, shape)}``, data filled with seeded random bytes."""
    rng = random.Random(seed)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset, chunks = 0, []
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        chunks.append(rng.randbytes(size))
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the writer pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def wan_lora_tensors(dim: int = 192, *, blocks: int = 2, rank: int = 4, style: str = "peft",
                     ffn: int | None = None) -> dict[str, tuple[str, list[int]]]:
    """LoRA tensors for the self/cross-attention and FFN of ``blocks`` Wan blocks, in one of the spellings
    the pinned loaders read: ``peft`` (diffusion_model.*.lora_A/B.weight), ``kohya`` (lora_unet_blocks_0_*
    .lora_down/up.weight + alpha), or ``lightx2v`` (lora_down/up + alpha + diff/diff_b on norms and biases)."""
    ffn = ffn or 2 * dim
    tensors: dict[str, tuple[str, list[int]]] = {}
    for block in range(blocks):
        modules = [(f"blocks.{block}.{attn}.{proj}", dim, dim) for attn in ("self_attn", "cross_attn") for proj in "qkvo"]
        modules += [(f"blocks.{block}.ffn.0", ffn, dim), (f"blocks.{block}.ffn.2", dim, ffn)]
        for path, out, inp in modules:
            if style == "kohya":
                stem = "lora_unet_" + path.replace(".", "_")
                tensors[f"{stem}.lora_down.weight"] = ("F16", [rank, inp])
                tensors[f"{stem}.lora_up.weight"] = ("F16", [out, rank])
                tensors[f"{stem}.alpha"] = ("F32", [])
            elif style == "lightx2v":
                stem = f"diffusion_model.{path}"
                tensors[f"{stem}.lora_down.weight"] = ("BF16", [rank, inp])
                tensors[f"{stem}.lora_up.weight"] = ("BF16", [out, rank])
                tensors[f"{stem}.alpha"] = ("BF16", [])
                tensors[f"{stem}.diff_b"] = ("BF16", [out])
            else:
                stem = f"diffusion_model.{path}"
                tensors[f"{stem}.lora_A.weight"] = ("F32", [rank, inp])
                tensors[f"{stem}.lora_B.weight"] = ("F32", [out, rank])
        if style == "lightx2v":
            tensors[f"diffusion_model.blocks.{block}.self_attn.norm_q.diff"] = ("BF16", [dim])
            tensors[f"diffusion_model.blocks.{block}.norm3.diff_b"] = ("BF16", [dim])
            tensors[f"diffusion_model.blocks.{block}.diff_m"] = ("BF16", [1, 6, dim])
    if style == "lightx2v":
        tensors["diffusion_model.head.head.diff_b"] = ("BF16", [64])
        tensors["diffusion_model.patch_embedding.diff_b"] = ("BF16", [dim])
        tensors["diffusion_model.time_projection.1.diff_b"] = ("BF16", [6 * dim])
    return tensors


def wan_lora(dim: int = 192, *, seed: int = 0, **kw) -> bytes:
    return safetensors(wan_lora_tensors(dim, **kw), seed=seed)
