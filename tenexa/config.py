"""Every environment variable the worker reads, parsed in one place.

Each setting is declared once in ``SETTINGS`` (name, type, default, meaning); ``Settings`` is built from
that table, and the README's configuration table is checked against it by a test, so the two cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (true/false/1/0), got {text!r}")


@dataclass(frozen=True)
class Spec:
    env: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


# field name -> how it is read. Order is the README order.
SETTINGS: dict[str, Spec] = {
    "comfy_root": Spec("COMFY_ROOT", Path, Path("/ComfyUI"), "ComfyUI checkout; its input/ and output/ folders and comfy.log live here"),
    "server_address": Spec("SERVER_ADDRESS", str, "127.0.0.1", "host ComfyUI listens on"),
    "comfy_port": Spec("COMFY_PORT", int, 8188, "port ComfyUI listens on"),
    "ready_timeout": Spec("COMFY_READY_TIMEOUT", float, 120.0, "seconds to wait for ComfyUI to answer /system_stats (entrypoint and generate)"),
    "exec_timeout": Spec("COMFY_EXEC_TIMEOUT", float, 600.0, "seconds one generate job may run in ComfyUI before it is interrupted (TIMEOUT)"),
    "comfy_log": Spec("COMFY_LOG", Path, None, "ComfyUI log file whose tail rides along with errors (default COMFY_ROOT/comfy.log)"),
    "comfy_python": Spec("COMFY_PYTHON", str, "python3", "ComfyUI's interpreter; TENEXA_ATTENTION=auto probes SageAttention in it (the entrypoint starts ComfyUI with it)"),
    "handler_version": Spec("HANDLER_VERSION", str, "dev", "version string reported by test and diagnose (stamped by the Dockerfile)"),
    "volume_root": Spec("VOLUME_ROOT", Path, Path("/runpod-volume"), "network volume mount point"),
    "workflow_dir": Spec("WORKFLOW_DIR", Path, REPO_ROOT, "folder holding the shipped workflow JSON files"),
    "max_image_bytes": Spec("MAX_IMAGE_BYTES", int, 25 * 1024 * 1024, "largest accepted input image, encoded bytes"),
    "max_image_pixels": Spec("MAX_IMAGE_PIXELS", int, 40_000_000, "largest accepted input image, width x height (decompression-bomb guard)"),
    "image_url_timeout": Spec("IMAGE_URL_TIMEOUT", float, 20.0, "seconds allowed to download one image_url, connect to last byte"),
    "allow_private_urls": Spec("ALLOW_PRIVATE_URLS", _bool, False, "let image_url and LoRA URLs reach loopback/private/link-local addresses (off: SSRF guard)"),
    "max_lora_mb": Spec("MAX_LORA_MB", float, 3000.0, "largest LoRA file accepted from a URL, decimal MB (a rank-256 fp16 A14B LoRA is ~2.5 GB)"),
    "lora_url_timeout": Spec("LORA_URL_TIMEOUT", float, 300.0, "seconds allowed to download one LoRA URL, connect to last byte"),
    "lora_cache_dir": Spec("LORA_CACHE_DIR", Path, None, "LoRA URL cache, a folder directly inside a loras folder ComfyUI lists "
                           "(default: VOLUME_ROOT/models/loras/tenexa-url with a volume, else COMFY_ROOT/models/loras/tenexa-url)"),
    "lora_cache_gb": Spec("LORA_CACHE_GB", float, 20.0, "size bound of the LoRA URL cache, decimal GB; least recently used files go first"),
    "lora_model_dim": Spec("LORA_MODEL_DIM", int, 5120, "hidden size a LoRA must fit: 5120 for the Wan2.2-A14B experts (tests use tiny models)"),
    "max_window_frames": Spec("MAX_WINDOW_FRAMES", int, 81, "most frames one generation window may have (4n+1, 5-241); Wan2.2 is trained at 81 and drifts back to the first frame beyond"),
    "max_latent_tokens": Spec("MAX_LATENT_TOKENS", int, 75_600, "latent-token budget of one window, ((frames-1)/4+1) x (W/16) x (H/16); 75600 = 1280x720 at 81 frames"),
    "max_frames": Spec("MAX_FRAMES", int, 321, "longest clip one job may ask for (4n+1, up to 1021); longer than MAX_WINDOW_FRAMES is generated as consecutive windows; 321 = 20 s at 16 fps"),
    "max_response_mb": Spec("MAX_RESPONSE_MB", float, 15.0, "largest JSON response; a bigger base64 video goes to the bucket or fails OUTPUT_TOO_LARGE"),
    "bucket_endpoint_url": Spec("BUCKET_ENDPOINT_URL", str, "", "S3-compatible endpoint for output=url (empty: no bucket)"),
    "bucket_access_key_id": Spec("BUCKET_ACCESS_KEY_ID", str, "", "bucket access key (never logged)"),
    "bucket_secret_access_key": Spec("BUCKET_SECRET_ACCESS_KEY", str, "", "bucket secret key (never logged)"),
    "bucket_name": Spec("BUCKET_NAME", str, "", "bucket that receives videos"),
    "bucket_prefix": Spec("BUCKET_PREFIX", str, "tenexa/", "object key prefix"),
    "bucket_region": Spec("BUCKET_REGION", str, "us-east-1", "region used for request signing"),
    "url_expiry": Spec("URL_EXPIRY", int, 24 * 3600, "seconds a presigned video URL stays valid"),
    "progress_interval": Spec("PROGRESS_INTERVAL", float, 1.0, "minimum seconds between two progress updates sent to RunPod"),
    "attention_mode": Spec("TENEXA_ATTENTION", str, "auto", "attention kernel: auto (sageattn if importable with CUDA, else sdpa), sdpa, sageattn, ..."),
    "base_precision": Spec("TENEXA_BASE_PRECISION", str, "bf16", "WanVideoModelLoader base_precision"),
    "quantization": Spec("TENEXA_QUANTIZATION", str, "fp8_e4m3fn", "WanVideoModelLoader quantization (scaled files are upgraded by the loader)"),
    "load_device": Spec("TENEXA_LOAD_DEVICE", str, "offload_device", "where the experts wait between samplers: offload_device or main_device (80 GB cards)"),
    "blocks_to_swap": Spec("TENEXA_BLOCKS_TO_SWAP", int, 0, "transformer blocks swapped to CPU (0-40); raise on 24-48 GB cards"),
    "vae_precision": Spec("TENEXA_VAE_PRECISION", str, "bf16", "VAE precision; fp32 on CPU (bf16 Conv3d on CPU is unusably slow)"),
    "text_encoder": Spec("TENEXA_TEXT_ENCODER", str, "t5", "t5 (load umt5-xxl) or cache (test-only: embeddings from the wrapper's disk cache)"),
    "refresh_on_crash": Spec("REFRESH_ON_CRASH", _bool, True, "ask RunPod for a fresh worker when ComfyUI dies mid-job"),
    "allow_custom_workflows": Spec("ALLOW_CUSTOM_WORKFLOWS", _bool, False, "accept a caller's own API-format graph as workflow (lets callers run any installed node)"),
    "custom_max_nodes": Spec("CUSTOM_WORKFLOW_MAX_NODES", int, 500, "most nodes a custom workflow may have"),
    "custom_max_batch": Spec("CUSTOM_WORKFLOW_MAX_BATCH", int, 1024, "most images/frames one node of a custom workflow may make (batch_size, length, amount...)"),
    "custom_max_pixels": Spec("CUSTOM_WORKFLOW_MAX_PIXELS", int, 600_000_000, "most width x height x batch one node of a custom workflow may make"),
}


@dataclass(frozen=True)
class Settings:
    comfy_root: Path
    server_address: str
    comfy_port: int
    ready_timeout: float
    exec_timeout: float
    comfy_log: Path
    comfy_python: str
    handler_version: str
    volume_root: Path
    workflow_dir: Path
    max_image_bytes: int
    max_image_pixels: int
    image_url_timeout: float
    allow_private_urls: bool
    max_lora_mb: float
    lora_url_timeout: float
    lora_cache_dir: Path | None
    lora_cache_gb: float
    lora_model_dim: int
    max_window_frames: int
    max_latent_tokens: int
    max_frames: int
    max_response_mb: float
    bucket_endpoint_url: str
    bucket_access_key_id: str
    bucket_secret_access_key: str
    bucket_name: str
    bucket_prefix: str
    bucket_region: str
    url_expiry: int
    progress_interval: float
    attention_mode: str
    base_precision: str
    quantization: str
    load_device: str
    blocks_to_swap: int
    vae_precision: str
    text_encoder: str
    refresh_on_crash: bool
    allow_custom_workflows: bool
    custom_max_nodes: int
    custom_max_batch: int
    custom_max_pixels: int

    @property
    def comfy_url(self) -> str:
        return f"http://{self.server_address}:{self.comfy_port}"

    @property
    def bucket_configured(self) -> bool:
        return bool(self.bucket_endpoint_url and self.bucket_name)

    def secrets(self) -> list[str]:
        """Values that must never reach a log line or a response."""
        return [v for v in (self.bucket_access_key_id, self.bucket_secret_access_key) if v]


class ConfigError(ValueError):
    pass


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, spec in SETTINGS.items():
        raw = env.get(spec.env)
        if raw is None or raw == "":
            values[name] = spec.default
            continue
        try:
            values[name] = spec.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{spec.env}: {exc}") from None
    if values["comfy_log"] is None:
        values["comfy_log"] = Path(values["comfy_root"]) / "comfy.log"
    assert set(values) == {f.name for f in fields(Settings)}
    return Settings(**values)
