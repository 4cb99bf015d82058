"""LoRAs by URL: download through the SSRF-safe fetcher, prove the file is a Wan LoRA for this model, cache it.

A request's ``loras`` entries that carry a ``url`` become cached files ComfyUI lists
(``tenexa-url/<sha256>.safetensors``) before the graph is bound. The file is checked without torch:

- **safetensors**: 8-byte little-endian header length, a JSON header of ``{name: {dtype, shape,
  data_offsets}}``, and a data section that those offsets cover exactly (what the safetensors library
  itself insists on). The header is checked as soon as it has arrived, so a wrong file stops downloading.
- **a Wan LoRA for this model**: every tensor name must be a LoRA tensor (``lora_A``/``lora_B``,
  ``lora_down``/``lora_up``, ``alpha``, ``diff``, ``diff_b`` in the spellings ComfyUI's loader reads) of a
  module of the Wan transformer, under one of the prefixes WanVideoWrapper's ``standardize_lora_key_format``
  maps (``diffusion_model.``, ``transformer.``, ``pipe.dit.``, ``base_model.model.``, ``lora_unet_``…);
  shapes must fit the experts' hidden size (``LORA_MODEL_DIM``, 5120 for A14B) and at most 40 blocks;
  at least one weight must touch a transformer block. Refused on purpose: LoHa/LoKr/DoRA/OFT tensors (the
  graph's unmerged LoRA path in the pinned wrapper applies only plain up/down pairs and diffs) and diffusers
  module names (``attn1``/``attn2``: the pinned wrapper maps both onto cross-attention).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from tenexa.config import Settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.fetch import FetchCodes, UrlPolicy, fetch
from tenexa.logs import log
from tenexa.lora_cache import CacheEntry, LoraCache
from tenexa.request import GenerateRequest

LORA_CODES = FetchCodes(ErrorCode.LORA_FETCH_FAILED, ErrorCode.LORA_TOO_LARGE)
MAX_HEADER_BYTES = 16 * 1024 * 1024  # ~100 000 tensor entries; a rank-64 A14B LoRA's header is ~200 KB
MAX_BLOCKS = 40  # transformer blocks of each A14B expert
LOCK_MARGIN_S = 30.0  # a waiter allows the downloading job its whole deadline plus this

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _invalid(field: str, problem: str) -> TenexaError:
    return TenexaError(ErrorCode.INVALID_LORA, f"{field}: {problem}", details={"field": field})


def _show(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "…")


# ------------------------------------------------------------------------------------------ safetensors


def header_length(prefix: bytes, field: str) -> int:
    (length,) = struct.unpack("<Q", prefix[:8])
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise _invalid(field, "not a safetensors file (no header of a plausible length at the start)")
    return length


def parse_header(raw: bytes, field: str) -> dict[str, Tensor]:
    """The header's tensors, each with a dtype we know, a shape, and offsets whose span matches the shape."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid(field, "not a safetensors file (the header is not JSON)") from None
    if not isinstance(data, dict):
        raise _invalid(field, "not a safetensors file (the header is not a JSON object)")
    tensors = {}
    for name, info in data.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (dtype not in DTYPE_BYTES or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _invalid(field, f"not a safetensors file (entry {_show(name)} is malformed)")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _invalid(field, f"not a safetensors file (entry {_show(name)}: its offsets do not match its shape)")
        tensors[name] = Tensor(name, dtype, tuple(shape), offsets[0], offsets[1])
    if not tensors:
        raise _invalid(field, "the safetensors file holds no tensors")
    return tensors


def check_layout(tensors: dict[str, Tensor], data_bytes: int, field: str) -> None:
    """The tensors tile the data section exactly: no gap, no overlap, nothing past the end, nothing after."""
    position = 0
    for tensor in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if tensor.start != position:
            raise _invalid(field, f"not a valid safetensors file (tensor {_show(tensor.name)} overlaps or leaves a gap)")
        position = tensor.end
    if position != data_bytes:
        raise _invalid(field, f"not a valid safetensors file (the tensors cover {position} of {data_bytes} data bytes)")


# ------------------------------------------------------------------------------------------ Wan LoRA keys

# Tensor-name endings ComfyUI's LoRA loader reads (comfy/weight_adapter/lora.py, comfy/lora.py), longest first.
_ROLES = sorted([
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"), (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"), (".lora_B", "up"), (".lora_A", "down"),
    (".alpha", "alpha"), (".diff", "diff"), (".diff_b", "diff_b"),
], key=lambda item: -len(item[0]))
_UNSUPPORTED = re.compile(r"\.(hada_|lokr_|oft_|boft_|dora_scale|lora_mid|set_weight|reshape_weight|[ab][12]\.weight$)")
_DIFFUSERS = re.compile(r"\.(attn1|attn2|to_q|to_k|to_v|to_out|ffn\.net)\.")
_PREFIXES = ("diffusion_model.", "transformer.", "pipe.dit.", "base_model.model.")
_UNDERSCORE_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_")
_UNDERSCORED = [  # underscore spellings (Fun / kohya / lycoris) -> module path
    (re.compile(r"blocks_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img|norm_q|norm_k|norm_k_img)"), r"blocks.\1.\2.\3"),
    (re.compile(r"blocks_(\d+)_(self_attn|cross_attn)_to_out_0"), r"blocks.\1.\2.o"),
    (re.compile(r"blocks_(\d+)_ffn_(?:net_)?(0|2)(?:_proj)?"), r"blocks.\1.ffn.\2"),
    (re.compile(r"blocks_(\d+)_(norm3|modulation)"), r"blocks.\1.\2"),
    (re.compile(r"(text_embedding|time_embedding)_(0|2)"), r"\1.\2"),
    (re.compile(r"time_projection_1"), "time_projection.1"),
    (re.compile(r"head_head"), "head.head"),
    (re.compile(r"patch_embedding"), "patch_embedding"),
]


@dataclass(frozen=True)
class ModuleKind:
    kind: str  # linear | vector (norm weights) | table (modulation) | conv (patch embedding)
    out: str | None  # "D", "6D" or None (not checked: e.g. the FFN width)
    inp: str | None


# Modules of the Wan transformer (wanvideo/modules/model.py) and the dims their weights have.
_MODULES = [
    (re.compile(r"blocks\.(\d+)\.(?:self_attn|cross_attn)\.(?:q|k|v|o|k_img|v_img)"), ModuleKind("linear", "D", "D")),
    (re.compile(r"blocks\.(\d+)\.ffn\.0"), ModuleKind("linear", None, "D")),
    (re.compile(r"blocks\.(\d+)\.ffn\.2"), ModuleKind("linear", "D", None)),
    (re.compile(r"blocks\.(\d+)\.(?:self_attn|cross_attn)\.(?:norm_q|norm_k|norm_k_img)"), ModuleKind("vector", "D", None)),
    (re.compile(r"blocks\.(\d+)\.norm3"), ModuleKind("vector", "D", None)),
    (re.compile(r"blocks\.(\d+)\.modulation"), ModuleKind("table", "D", None)),
    (re.compile(r"head\.modulation"), ModuleKind("table", "D", None)),
    (re.compile(r"head\.head"), ModuleKind("linear", None, "D")),
    (re.compile(r"(?:text|time)_embedding\.0"), ModuleKind("linear", "D", None)),
    (re.compile(r"(?:text|time)_embedding\.2"), ModuleKind("linear", "D", "D")),
    (re.compile(r"time_projection\.1"), ModuleKind("linear", "6D", "D")),
    (re.compile(r"patch_embedding"), ModuleKind("conv", "D", None)),
    (re.compile(r"img_emb\.proj\.(?:1)"), ModuleKind("linear", None, None)),
    (re.compile(r"img_emb\.proj\.3"), ModuleKind("linear", "D", None)),
    (re.compile(r"img_emb\.proj\.0"), ModuleKind("vector", None, None)),
    (re.compile(r"img_emb\.proj\.4"), ModuleKind("vector", "D", None)),
]


def _split_role(name: str) -> tuple[str, str] | None:
    for suffix, role in _ROLES:
        if name.endswith(suffix):
            return name[: -len(suffix)], role
    return None


def _module_path(stem: str) -> str | None:
    for prefix in _UNDERSCORE_PREFIXES:
        if stem.startswith(prefix):
            rest = stem[len(prefix):]
            for pattern, template in _UNDERSCORED:
                if pattern.fullmatch(rest):
                    return pattern.sub(template, rest)
            return None
    for prefix in _PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def _module(path: str) -> tuple[ModuleKind, int | None] | None:
    for pattern, kind in _MODULES:
        match = pattern.fullmatch(path)
        if match:
            return kind, int(match.group(1)) if match.groups() else None
    return None


@dataclass(frozen=True)
class LoraSummary:
    tensors: int
    modules: int
    block_modules: int
    rank: int | None


def check_wan_lora(tensors: dict[str, Tensor], dim: int, field: str) -> LoraSummary:
    """Every tensor is a LoRA tensor of a Wan module, with shapes for hidden size ``dim``; refuse otherwise."""
    modules: dict[str, dict[str, Tensor]] = {}
    kinds: dict[str, tuple[ModuleKind, int | None]] = {}
    for name, tensor in tensors.items():
        normalized = name.replace(".default.", ".").replace(".diff_m", ".modulation.diff")  # as the wrapper does
        if _UNSUPPORTED.search(normalized):
            raise _invalid(field, f"tensor {_show(name)} is a LoHa/LoKr/DoRA/OFT-style tensor; the worker's unmerged LoRA path "
                                  "applies only plain LoRA (up/down, alpha) and diff tensors")
        if _DIFFUSERS.search(normalized):
            raise _invalid(field, f"tensor {_show(name)} uses diffusers module names (attn1/attn2/to_q…), which the pinned "
                                  "WanVideoWrapper does not map onto Wan's self-attention; use a ComfyUI-format Wan LoRA")
        split = _split_role(normalized)
        path = _module_path(split[0]) if split else None
        found = _module(path) if path is not None else None
        if split is None or found is None:
            raise _invalid(field, f"tensor {_show(name)} is not a LoRA tensor of the Wan transformer "
                                  "(expected names like diffusion_model.blocks.0.self_attn.q.lora_A.weight)")
        if found[1] is not None and found[1] >= MAX_BLOCKS:
            raise _invalid(field, f"tensor {_show(name)} is for block {found[1]}; the model has {MAX_BLOCKS}")
        role = split[1]
        if role in modules.setdefault(path, {}):
            raise _invalid(field, f"tensor {_show(name)} repeats the {role} of {path} under another spelling")
        modules[path][role] = tensor
        kinds[path] = found
    ranks = {_check_module(path, roles, kinds[path][0], dim, field) for path, roles in modules.items()} - {None}
    in_blocks = [p for p, roles in modules.items() if kinds[p][1] is not None and kinds[p][0].kind == "linear"
                 and ({"up", "down"} <= set(roles) or "diff" in roles)]
    if not in_blocks:
        raise _invalid(field, "no LoRA weights for the transformer blocks (not a LoRA for this model)")
    return LoraSummary(len(tensors), len(modules), len(in_blocks), max(ranks) if ranks else None)


def _check_module(path: str, roles: dict[str, Tensor], kind: ModuleKind, dim: int, field: str) -> int | None:
    """Shapes of one module's tensors against the model; returns the LoRA rank (None for diff-only modules)."""
    size = {"D": dim, "6D": 6 * dim, None: None}
    out, inp = size[kind.out], size[kind.inp]

    def refuse(tensor: Tensor, needs: str) -> TenexaError:
        return _invalid(field, f"tensor {_show(tensor.name)} has shape {list(tensor.shape)}; {needs} for this model "
                               f"(hidden size {dim}): a LoRA for another model?")

    for role, tensor in roles.items():
        if role != "alpha" and tensor.dtype not in FLOAT_DTYPES:
            raise _invalid(field, f"tensor {_show(tensor.name)} has dtype {tensor.dtype}; LoRA weights are floating point")
    if "alpha" in roles and math.prod(roles["alpha"].shape) != 1:
        raise refuse(roles["alpha"], "alpha must be a single number")
    up, down = roles.get("up"), roles.get("down")
    if kind.kind in ("vector", "table") and (up or down):
        raise refuse(up or down, f"{path} takes only diff tensors")
    if (up is None) != (down is None):
        raise _invalid(field, f"{path} has a LoRA {'up' if up else 'down'} tensor without its {'down' if up else 'up'}")
    rank = None
    if up is not None and down is not None:
        plain = kind.kind == "linear"
        if (plain and (len(up.shape) != 2 or len(down.shape) != 2)) or len(up.shape) < 2 or len(down.shape) < 2:
            raise refuse(up, "LoRA up/down weights are matrices")
        if out is not None and up.shape[0] != out:
            raise refuse(up, f"{path} needs {out} output rows")
        if plain and inp is not None and down.shape[1] != inp:
            raise refuse(down, f"{path} needs {inp} input columns")
        if down.shape[0] != up.shape[1]:
            raise _invalid(field, f"{path}: up rank {up.shape[1]} does not match down rank {down.shape[0]}")
        rank = down.shape[0]
    diff, diff_b = roles.get("diff"), roles.get("diff_b")
    if diff is not None:
        expected = {"linear": (out, inp), "vector": (out,), "table": (None, None, out), "conv": (out,)}[kind.kind]
        shape = diff.shape[:1] if kind.kind == "conv" else diff.shape
        if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected, strict=True)):
            raise refuse(diff, f"{path}'s weight diff does not fit")
    if diff_b is not None and (len(diff_b.shape) != 1 or (out is not None and diff_b.shape[0] != out)):
        raise refuse(diff_b, f"{path}'s bias diff needs {out} values")
    return rank


# ------------------------------------------------------------------------------------------ downloading


class LoraDownload:
    """A ``fetch`` sink: writes the file, hashes it, and checks the header the moment it has arrived."""

    def __init__(self, path: Path, field: str, dim: int, cancel: threading.Event | None = None):
        self.field, self.dim, self.cancel = field, dim, cancel
        self.size = 0
        self.tensors: dict[str, Tensor] | None = None
        self.summary: LoraSummary | None = None
        self._header_len: int | None = None
        self._head = bytearray()
        self._sha = hashlib.sha256()
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by finish() or close()

    def write(self, chunk: bytes) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TenexaError(ErrorCode.CANCELLED, f"cancelled while downloading {self.field}")
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise TenexaError(ErrorCode.LORA_FETCH_FAILED, f"{self.field}: cannot write to the LoRA cache ({exc.strerror})") from None
        self._sha.update(chunk)
        self.size += len(chunk)
        if self.tensors is None:
            self._inspect(chunk)

    def _inspect(self, chunk: bytes) -> None:
        self._head += chunk
        if self._header_len is None and len(self._head) >= 8:
            self._header_len = header_length(bytes(self._head[:8]), self.field)
        if self._header_len is not None and len(self._head) >= 8 + self._header_len:
            self.tensors = parse_header(bytes(self._head[8: 8 + self._header_len]), self.field)
            self.summary = check_wan_lora(self.tensors, self.dim, self.field)
            self._head = bytearray()

    def finish(self) -> str:
        """Close the file and check that the data section matches the header; returns the sha256."""
        self.close()
        if self.tensors is None or self._header_len is None:
            raise _invalid(self.field, "not a safetensors file (it ends before its header does)")
        check_layout(self.tensors, self.size - 8 - self._header_len, self.field)
        return self._sha.hexdigest()

    def close(self) -> None:
        self._file.close()


def fetch_lora(url: str, field: str, *, cache: LoraCache, policy: UrlPolicy, settings: Settings,
               cancel: threading.Event | None = None) -> CacheEntry:
    """The cached file for ``url``, downloading and checking it first when it is not cached yet."""
    entry = cache.lookup(url)
    if entry is not None:
        return entry
    try:
        return _download(url, field, cache=cache, policy=policy, settings=settings, cancel=cancel)
    except OSError as exc:  # the cache's filesystem (full, read-only, gone); download errors are TenexaErrors already
        raise TenexaError(ErrorCode.LORA_FETCH_FAILED, f"{field}: cannot use the LoRA cache at {cache.root} ({exc.strerror})") from None


def _download(url: str, field: str, *, cache: LoraCache, policy: UrlPolicy, settings: Settings,
              cancel: threading.Event | None) -> CacheEntry:
    timeout = settings.lora_url_timeout
    with cache.url_lock(url, timeout=timeout + LOCK_MARGIN_S, field=field):
        entry = cache.lookup(url)  # another job may have fetched it while this one waited
        if entry is not None:
            return entry
        part = cache.new_part()
        download = LoraDownload(part, field, settings.lora_model_dim, cancel)
        try:
            max_bytes = min(int(settings.max_lora_mb * 1e6), cache.limit_bytes)
            fetch(url, field, download.write, max_bytes=max_bytes, timeout=timeout, codes=LORA_CODES, policy=policy)
            sha256 = download.finish()
            entry = cache.add(part, sha256=sha256, url=url)
        finally:
            download.close()
            part.unlink(missing_ok=True)
    summary = download.summary
    assert summary is not None  # finish() refuses a file whose header was never checked
    log.info("LoRA %s: cached %s (%d bytes, %d tensors, %d block modules, rank %s)", field, entry.sha256[:12], entry.size,
             summary.tensors, summary.block_modules, summary.rank)
    return entry


def fetch_loras(request: GenerateRequest, settings: Settings, *, policy: UrlPolicy | None = None,
                cache: LoraCache | None = None, cancel: threading.Event | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> GenerateRequest:
    """The request with every LoRA URL replaced by the name ComfyUI lists for its cached file.

    ``on_progress(done, total)`` is called before each URL's fetch and once when all are in place.
    """
    total = sum(1 for ref in request.loras if ref.url)
    if not total:
        return request
    cache = cache or LoraCache.from_settings(settings)
    policy = policy or UrlPolicy.from_settings(settings)
    report = on_progress or (lambda _done, _total: None)
    resolved, done = [], 0
    for ref in request.loras:
        if ref.url is None:
            resolved.append(ref)
            continue
        report(done, total)
        field = f"{ref.field}.url"
        try:
            entry = fetch_lora(ref.url, field, cache=cache, policy=policy, settings=settings, cancel=cancel)
        except TenexaError as err:
            err.details.setdefault("field", field)
            raise
        resolved.append(replace(ref, name=cache.comfy_name(entry.sha256), sha256=entry.sha256))
        done += 1
    report(total, total)
    return replace(request, loras=tuple(resolved))

