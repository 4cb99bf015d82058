"""Parse and validate a job's ``input``: which mode it asks for, and for generate every field's type and range.

Nothing here touches the network or ComfyUI; images are only located (base64 text or URL), not decoded.
Unknown keys are ignored and reported back in ``ignored_keys`` (clients evolve faster than workers).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenexa import formats, wan
from tenexa.errors import ErrorCode, TenexaError, invalid
from tenexa.schedules import SCHEDULERS

WORKFLOW_NAMES = ("wan22_i2v", "flf2v")
OUTPUT_MODES = ("base64", "url")
RESOLUTIONS = tuple(wan.RESOLUTIONS)
ASPECT_RATIOS = (wan.AUTO_ASPECT, *wan.ASPECT_RATIOS)
INTERPOLATORS = ("auto", "rife", "ffmpeg")
MAX_INTERPOLATE = 4  # output frames per generated frame; 4x of 16 fps is 64 fps
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**53 - 1  # exact in JSON doubles, and within WanVideoSampler's 0..2**64-1
MAX_IMAGE_TEXT = 40 * 1024 * 1024  # base64 characters; the decoded size is checked against MAX_IMAGE_BYTES later
MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 255
LORA_EXPERTS = ("high", "low", "both")
LORA_KEYS = ("url", "name", "strength", "expert")
MAX_EXTRA_LORAS = 4  # per expert: WanVideoLoraSelectMulti has 5 slots and slot 0 holds lora_high / lora_low

DEFAULT_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, "
    "messy background, three legs, many people in the background, walking backwards"
)


@dataclass(frozen=True)
class ImageSource:
    """Where an input image comes from: exactly one of base64 text or an http(s) URL."""

    field: str
    base64: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class LoraRef:
    """One entry of ``loras``: a LoRA by URL or by file name, for one expert or both.

    ``name`` is the file name ComfyUI lists; for a URL entry it is filled in once the file is in the cache
    (``tenexa.loras.fetch_loras``), together with ``sha256``.
    """

    field: str  # "loras[0]", for messages
    strength: float
    expert: str  # high | low | both
    url: str | None = None
    name: str | None = None
    sha256: str | None = None

    def applies_to(self, expert: str) -> bool:
        return self.expert in (expert, "both")


@dataclass(frozen=True)
class GenerateRequest:
    workflow: str
    image: ImageSource
    end_image: ImageSource | None
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg: float
    cfg_low: float
    frames: int
    width: int | None
    height: int | None
    fps: float
    shift: float
    scheduler: str
    lora_high: str | None
    lora_low: str | None
    lora_high_strength: float
    lora_low_strength: float
    output: str
    resolution: str | None = None
    aspect_ratio: str | None = None
    interpolate: int = 1
    interpolator: str = "auto"
    adjust_fps_for_interpolation: bool = True
    codec: str = formats.DEFAULT_CODEC
    quality: str | int = formats.DEFAULT_QUALITY
    return_last_frame: bool = False
    loras: tuple[LoraRef, ...] = field(default=())
    ignored_keys: tuple[str, ...] = field(default=())


def select_mode(job_input: Mapping[str, Any]) -> str:
    """``test``, ``diagnose`` and ``warmup`` are flags (in that order); a ``workflow`` object is a caller's own graph
    (worker-comfyui's request shape); everything else is a generate request (``workflow`` as a string names a
    built-in graph)."""
    for mode in ("test", "diagnose", "warmup"):
        if job_input.get(mode) is True:
            return mode
    if isinstance(job_input.get("workflow"), Mapping):
        return "custom"
    return "generate"


# ---------------------------------------------------------------------------------------------- field readers


def _int(data: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        raise invalid(name, f"must be an integer, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise invalid(name, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise invalid(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(data: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise invalid(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def _text(data: Mapping[str, Any], name: str, default: str, max_chars: int) -> str:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise invalid(name, f"must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise invalid(name, f"is {len(value)} characters long; the limit is {max_chars}")
    if "\x00" in value:
        raise invalid(name, "must not contain NUL characters")
    return value


# What WanVideoTextEncode (nodes.py at the pinned commit) reads in the positive prompt besides the words: it
# splits at "|" (prompt travel: one prompt per part of the clip), switches to EchoShot multi-shot mode when "[1]"
# appears and then splits at every [n] marker (asserting 2-6 shots: "[1] a cat" crashes the node), and turns
# "(text:1.2)" into "text" while multiplying the whole prompt's embedding by 1.2 (and "(a:1.2.3)" crashes it).
# The negative prompt is encoded as it is. Prompts here are literal text, so these are refused, not passed on.
PROMPT_CONSTRUCTS = (
    (re.compile(r"\|"), "'|' makes the text encoder split the prompt into a prompt-travel sequence"),
    (re.compile(r"\[\d+\]"), "multi-shot markers like '[1]' switch the text encoder to EchoShot mode, which "
                              "splits the prompt at each [n] and needs 2 to 6 shots"),
    (re.compile(r"\((.*?):([\d.]+)\)"), "the text encoder reads '(text:number)' as a weight and multiplies the whole "
                                        "prompt's embedding by it"),
)


def _literal_prompt(text: str, name: str) -> str:
    """``text`` when WanVideoTextEncode would read it word for word; INVALID_INPUT naming the construct otherwise."""
    for pattern, effect in PROMPT_CONSTRUCTS:
        found = pattern.search(text)
        if found:
            snippet = found.group(0) if len(found.group(0)) <= 40 else found.group(0)[:37] + "..."
            raise invalid(name, f"contains {snippet!r}: {effect}; rephrase without it (prompts are sent as literal text)")
    return text


def _choice(data: Mapping[str, Any], name: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise invalid(name, f"must be one of {', '.join(choices)}, got {value!r}"[:300])
    return value


def _flag(data: Mapping[str, Any], name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {type(value).__name__}")
    return value


def _quality(data: Mapping[str, Any], codec: str) -> str | int:
    """A preset name, or a raw CRF in the codec's own range (lower is better)."""
    value = data.get("quality")
    if value is None:
        return formats.DEFAULT_QUALITY
    if isinstance(value, str):
        return _choice(data, "quality", formats.DEFAULT_QUALITY, formats.QUALITY_PRESETS)
    crf_max = formats.video_format(codec).crf_max
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid("quality", f"must be a preset ({', '.join(formats.QUALITY_PRESETS)}) or a CRF 0..{crf_max}, "
                                 f"got {type(value).__name__}")
    return _int(data, "quality", 0, 0, crf_max)


def _size(data: Mapping[str, Any]) -> tuple[int | None, int | None, str | None, str | None]:
    """(width, height, resolution, aspect_ratio): presets are an alternative to an explicit size."""
    width = _int(data, "width", None, wan.MIN_SIDE, wan.MAX_SIDE)
    height = _int(data, "height", None, wan.MIN_SIDE, wan.MAX_SIDE)
    resolution = _choice(data, "resolution", None, RESOLUTIONS)
    aspect = _choice(data, "aspect_ratio", None, ASPECT_RATIOS)
    if resolution is not None and (width is not None or height is not None):
        raise invalid("resolution", "give either resolution (with aspect_ratio) or width/height, not both")
    if aspect is not None and width is not None and height is not None:
        raise invalid("aspect_ratio", "width and height already fix the aspect; give at most one of them with aspect_ratio")
    return width, height, resolution, aspect


def _model_name(data: Mapping[str, Any], name: str) -> str | None:
    """A LoRA file name as ComfyUI lists it: relative, no parent references, no absolute paths."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, "must be a non-empty file name")
    if len(value) > MAX_NAME_CHARS:
        raise invalid(name, f"must be at most {MAX_NAME_CHARS} characters")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts or any(ch in value for ch in "\x00:"):
        raise invalid(name, "must be a file name inside the loras folder (no absolute paths or '..')")
    return value


def _url(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise invalid(name, f"must be a URL string, got {type(value).__name__}")
    if not value.strip():
        raise invalid(name, "must be a non-empty URL")
    if len(value) > MAX_URL_CHARS:
        raise invalid(name, f"must be at most {MAX_URL_CHARS} characters")
    return value.strip()


def _lora_entry(entry: Any, where: str) -> LoraRef:
    if not isinstance(entry, Mapping):
        raise invalid(where, f"must be an object with url or name, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in LORA_KEYS)
    if unknown:  # a typo such as "scale" would otherwise silently mean strength 1.0
        raise invalid(where, f"unknown key {unknown[0]!r}"[:200] + f"; the keys are {', '.join(LORA_KEYS)}")
    if (entry.get("url") is None) == (entry.get("name") is None):
        raise invalid(where, "give exactly one of url or name")
    fields = {f"{where}.{k}": v for k, v in entry.items()}
    return LoraRef(
        field=where,
        strength=_float(fields, f"{where}.strength", 1.0, -10.0, 10.0),
        expert=_choice(fields, f"{where}.expert", "both", LORA_EXPERTS),
        url=None if entry.get("url") is None else _url(entry["url"], f"{where}.url"),
        name=_model_name(fields, f"{where}.name"),
    )


def _loras(data: Mapping[str, Any]) -> tuple[LoraRef, ...]:
    """``loras``: up to 4 extra LoRAs per expert, in slots 1-4 after ``lora_high`` / ``lora_low``."""
    value = data.get("loras")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid("loras", f"must be a list of objects, got {type(value).__name__}")
    if len(value) > 2 * MAX_EXTRA_LORAS:
        raise invalid("loras", f"has {len(value)} entries; at most {MAX_EXTRA_LORAS} per expert fit")
    refs = tuple(_lora_entry(entry, f"loras[{i}]") for i, entry in enumerate(value))
    for expert in ("high", "low"):
        count = sum(ref.applies_to(expert) for ref in refs)
        if count > MAX_EXTRA_LORAS:
            raise invalid("loras", f"puts {count} LoRAs on the {expert} expert; at most {MAX_EXTRA_LORAS} fit "
                                   f"(slot 0 holds lora_{expert})")
    return refs


def _image(data: Mapping[str, Any], prefix: str) -> ImageSource | None:
    b64_key, url_key = f"{prefix}_base64", f"{prefix}_url"
    b64, url = data.get(b64_key), data.get(url_key)
    if b64 is not None and url is not None:
        raise invalid(prefix, f"give either {b64_key} or {url_key}, not both")
    if b64 is not None:
        if not isinstance(b64, str):
            raise invalid(b64_key, f"must be a base64 string, got {type(b64).__name__}")
        if not b64.strip():
            return None
        if len(b64) > MAX_IMAGE_TEXT:
            raise TenexaError(ErrorCode.IMAGE_TOO_LARGE, f"{b64_key} is {len(b64)} characters; the limit is {MAX_IMAGE_TEXT}")
        return ImageSource(field=b64_key, base64=b64)
    if url is not None:
        if isinstance(url, str) and not url.strip():
            return None
        return ImageSource(field=url_key, url=_url(url, url_key))
    return None


KNOWN_KEYS = frozenset({
    "image_base64", "image_url", "end_image_base64", "end_image_url", "workflow", "prompt", "negative_prompt",
    "seed", "steps", "cfg", "cfg_low", "frames", "length", "width", "height", "fps", "shift", "scheduler",
    "lora_high", "lora_low", "lora_high_strength", "lora_low_strength", "lora_name", "lora_strength", "loras", "output",
    "test", "diagnose", "selftest", "warmup", "verify_hashes", "resolution", "aspect_ratio", "interpolate", "interpolator",
    "adjust_fps_for_interpolation", "codec", "quality", "return_last_frame",
})


def _expert_loras(data: Mapping[str, Any]) -> tuple[str | None, str | None, float, float]:
    """(lora_high, lora_low, their strengths). ``lora_name``/``lora_strength`` (the original Tenexa worker's one
    LoRA for the whole model) set both experts, as the original did; mixed with the per-expert keys it is refused."""
    if data.get("lora_name") is None and data.get("lora_strength") is None:
        return (_model_name(data, "lora_high"), _model_name(data, "lora_low"),
                _float(data, "lora_high_strength", 1.0, -10.0, 10.0), _float(data, "lora_low_strength", 1.0, -10.0, 10.0))
    mixed = sorted(k for k in ("lora_high", "lora_low", "lora_high_strength", "lora_low_strength") if data.get(k) is not None)
    if mixed:
        raise invalid("lora_name", f"lora_name/lora_strength set one LoRA for both experts; give them or {', '.join(mixed)}, not both")
    name = _model_name(data, "lora_name")
    strength = _float(data, "lora_strength", 1.0, -10.0, 10.0)
    return name, name, strength, strength


def parse_generate(job_input: Any, *, rng: random.Random | None = None, max_frames: int = wan.DEFAULT_CLIP_FRAMES) -> GenerateRequest:
    """Validate a generate request; raise ``TenexaError`` naming the first bad field.

    ``max_frames`` is the longest clip the worker makes (MAX_FRAMES): longer requests are refused here, before
    any image is fetched. A clip longer than one window becomes consecutive windows when it is bound; the
    window and size budget need the image's aspect ratio and are checked then.
    """
    if not isinstance(job_input, Mapping):
        raise invalid("input", f"must be a JSON object, got {type(job_input).__name__}")

    image = _image(job_input, "image")
    end_image = _image(job_input, "end_image")
    workflow = job_input.get("workflow")
    if workflow is None:
        workflow = "flf2v" if end_image is not None else "wan22_i2v"
    workflow = _choice({"workflow": workflow}, "workflow", "wan22_i2v", WORKFLOW_NAMES)
    if image is None:
        raise TenexaError(ErrorCode.NO_IMAGE, "give the start image as image_base64 (raw or data: URI) or image_url")
    if workflow == "flf2v" and end_image is None:
        raise TenexaError(ErrorCode.NO_END_IMAGE, "workflow flf2v needs end_image_base64 or end_image_url")
    if workflow == "wan22_i2v" and end_image is not None:
        raise invalid("end_image", "an end image needs workflow flf2v (or leave workflow out)")

    if "frames" in job_input and "length" in job_input and job_input["frames"] != job_input["length"]:
        raise invalid("frames", "frames and its alias length disagree")
    frames_key = "frames" if "frames" in job_input else "length"
    frames = _int({frames_key: job_input.get(frames_key)}, frames_key, wan.DEFAULT_WINDOW_FRAMES, wan.MIN_FRAMES, wan.MAX_CLIP_FRAMES)
    if wan.fit_frames(frames) > max_frames:
        rounded = f" (rounds to {wan.fit_frames(frames)})" if wan.fit_frames(frames) != frames else ""
        raise invalid(frames_key, f"{frames}{rounded} is more frames than this worker makes in one job ({max_frames}, "
                                  "MAX_FRAMES); ask for fewer or chain clips with return_last_frame")

    seed = _int(job_input, "seed", None, 0, MAX_SEED)
    if seed is None:
        seed = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    width, height, resolution, aspect_ratio = _size(job_input)
    codec = _choice(job_input, "codec", formats.DEFAULT_CODEC, formats.CODECS)

    steps = _int(job_input, "steps", 10, 2, 100)
    shift = _float(job_input, "shift", 9.0, 0.5, 50.0)
    scheduler = _choice(job_input, "scheduler", "dpm++_sde", SCHEDULERS)
    try:
        wan.expert_split(steps, shift, scheduler)
    except wan.SplitError as exc:
        raise invalid("shift", str(exc)) from None
    lora_high, lora_low, lora_high_strength, lora_low_strength = _expert_loras(job_input)

    return GenerateRequest(
        workflow=workflow,
        image=image,
        end_image=end_image,
        prompt=_literal_prompt(_text(job_input, "prompt", "", MAX_PROMPT_CHARS), "prompt"),
        negative_prompt=_text(job_input, "negative_prompt", DEFAULT_NEGATIVE_PROMPT, MAX_PROMPT_CHARS),
        seed=seed,
        steps=steps,
        cfg=_float(job_input, "cfg", 2.0, 1.0, 20.0),
        cfg_low=_float(job_input, "cfg_low", 1.0, 1.0, 20.0),
        frames=frames,
        width=width,
        height=height,
        fps=_float(job_input, "fps", 16.0, 1.0, 60.0),
        shift=shift,
        scheduler=scheduler,
        lora_high=lora_high,
        lora_low=lora_low,
        lora_high_strength=lora_high_strength,
        lora_low_strength=lora_low_strength,
        output=_choice(job_input, "output", "base64", OUTPUT_MODES),
        resolution=resolution,
        aspect_ratio=aspect_ratio,
        interpolate=_int(job_input, "interpolate", 1, 1, MAX_INTERPOLATE),
        interpolator=_choice(job_input, "interpolator", "auto", INTERPOLATORS),
        adjust_fps_for_interpolation=_flag(job_input, "adjust_fps_for_interpolation", True),
        codec=codec,
        quality=_quality(job_input, codec),
        return_last_frame=_flag(job_input, "return_last_frame", False),
        loras=_loras(job_input),
        ignored_keys=tuple(sorted(k for k in job_input if k not in KNOWN_KEYS)),
    )
