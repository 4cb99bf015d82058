import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenexa.errors import ErrorCode, TenexaError
from tenexa.request import DEFAULT_NEGATIVE_PROMPT, MAX_SEED, parse_generate, select_mode

IMG = {"image_base64": "aGVsbG8="}


def code_of(job_input):
    with pytest.raises(TenexaError) as info:
        parse_generate(job_input)
    return info.value.code, info.value.message


def test_modes():
    assert select_mode({"test": True}) == "test"
    assert select_mode({"diagnose": True, "selftest": True}) == "diagnose"
    assert select_mode({"warmup": True}) == "warmup"
    assert select_mode({"warmup": True, "test": True}) == "test"
    assert select_mode({"warmup": 1}) == "generate"
    assert select_mode({"test": "yes"}) == "generate"  # only a real true switches modes
    assert select_mode({}) == "generate"


def test_defaults():
    req = parse_generate(IMG, rng=random.Random(1))
    assert (req.workflow, req.steps, req.cfg, req.frames, req.fps, req.output) == ("wan22_i2v", 10, 2.0, 81, 16.0, "base64")
    assert req.width is None and req.height is None
    assert req.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert 0 <= req.seed <= MAX_SEED


def test_seed_random_when_absent_and_kept_when_given():
    assert parse_generate(IMG, rng=random.Random(1)).seed != parse_generate(IMG, rng=random.Random(2)).seed
    assert parse_generate({**IMG, "seed": 42}).seed == 42


def test_end_image_selects_flf2v_and_flf2v_needs_one():
    assert parse_generate({**IMG, "end_image_url": "https://example.com/e.png"}).workflow == "flf2v"
    assert code_of({**IMG, "workflow": "flf2v"})[0] is ErrorCode.NO_END_IMAGE
    assert code_of({**IMG, "workflow": "wan22_i2v", "end_image_base64": "aGVsbG8="})[0] is ErrorCode.INVALID_INPUT


def test_no_image():
    assert code_of({})[0] is ErrorCode.NO_IMAGE
    assert code_of({"image_base64": "   "})[0] is ErrorCode.NO_IMAGE
    code, message = code_of({"image_base64": "x", "image_url": "https://a/b.png"})
    assert code is ErrorCode.INVALID_INPUT and "not both" in message


def test_length_alias():
    assert parse_generate({**IMG, "length": 33}).frames == 33
    assert code_of({**IMG, "length": 33, "frames": 41})[0] is ErrorCode.INVALID_INPUT


@pytest.mark.parametrize("field,value,fragment", [
    ("steps", 1, "between 2 and 100"), ("steps", "10", "integer"), ("steps", True, "integer"), ("steps", 10.5, "integer"),
    ("cfg", float("nan"), "between"), ("cfg", "2", "number"), ("frames", 100000, "between"), ("width", 8, "between"),
    ("seed", -1, "between"), ("seed", 2**70, "between"), ("fps", 0, "between"), ("workflow", "t2v", "one of"),
    ("output", "s3", "one of"), ("scheduler", "bogus", "one of"), ("prompt", 5, "string"), ("prompt", "x" * 5000, "limit"),
    ("prompt", "a\x00b", "NUL"), ("lora_high", "../../etc/passwd", "loras folder"), ("lora_low", "/abs.safetensors", "loras folder"),
    ("lora_high", "", "non-empty"),
    ("resolution", "1080p", "one of"), ("resolution", 480, "one of"), ("aspect_ratio", "4:3", "one of"),
    ("aspect_ratio", ["9", "16"], "one of"), ("interpolate", 0, "between 1 and 4"), ("interpolate", 5, "between 1 and 4"),
    ("interpolate", 2.5, "integer"), ("interpolate", True, "integer"), ("interpolator", "film", "one of"),
    ("adjust_fps_for_interpolation", "yes", "true or false"), ("adjust_fps_for_interpolation", 1, "true or false"),
    ("codec", "av1", "one of"), ("codec", "H264", "one of"), ("quality", "ultra", "one of"), ("quality", -1, "between 0 and 51"),
    ("quality", 52, "between 0 and 51"), ("quality", [19], "preset"), ("quality", True, "preset"),
    ("return_last_frame", "true", "true or false"), ("return_last_frame", 0, "true or false"),
])
def test_bad_fields_are_named(field, value, fragment):
    code, message = code_of({**IMG, field: value})
    assert code is ErrorCode.INVALID_INPUT
    assert message.startswith(field) and fragment in message


def test_output_options_defaults_and_values():
    req = parse_generate(IMG)
    assert (req.codec, req.quality, req.return_last_frame) == ("h264", "high", False)
    assert (req.interpolate, req.interpolator, req.adjust_fps_for_interpolation) == (1, "auto", True)
    assert (req.resolution, req.aspect_ratio) == (None, None)
    req = parse_generate({**IMG, "codec": "vp9", "quality": 63, "return_last_frame": True, "interpolate": 4,
                          "interpolator": "ffmpeg", "adjust_fps_for_interpolation": False})
    assert (req.codec, req.quality, req.return_last_frame, req.interpolate, req.interpolator) == ("vp9", 63, True, 4, "ffmpeg")
    assert req.adjust_fps_for_interpolation is False
    assert parse_generate({**IMG, "codec": "h265", "quality": "low"}).quality == "low"
    assert parse_generate({**IMG, "quality": 23.0}).quality == 23


def test_crf_range_follows_the_codec():
    assert parse_generate({**IMG, "codec": "vp9", "quality": 60}).quality == 60
    code, message = code_of({**IMG, "codec": "h265", "quality": 60})
    assert code is ErrorCode.INVALID_INPUT and "between 0 and 51" in message


def test_size_presets_are_an_alternative_to_width_and_height():
    req = parse_generate({**IMG, "resolution": "720p", "aspect_ratio": "9:16"})
    assert (req.resolution, req.aspect_ratio, req.width, req.height) == ("720p", "9:16", None, None)
    assert parse_generate({**IMG, "aspect_ratio": "1:1", "width": 512}).width == 512  # one side + a ratio is enough
    for bad, field in (({"resolution": "480p", "width": 832}, "resolution"), ({"resolution": "580p", "height": 480}, "resolution"),
                       ({"aspect_ratio": "16:9", "width": 832, "height": 480}, "aspect_ratio")):
        code, message = code_of({**IMG, **bad})
        assert code is ErrorCode.INVALID_INPUT and message.startswith(field), message
        assert "not both" in message or "at most one" in message


def test_image_field_types():
    code, message = code_of({"image_url": 5})
    assert code is ErrorCode.INVALID_INPUT and message.startswith("image_url") and "URL string" in message
    code, message = code_of({"image_base64": {"x": 1}})
    assert code is ErrorCode.INVALID_INPUT and message.startswith("image_base64")


def test_whole_float_accepted_for_int():
    assert parse_generate({**IMG, "steps": 8.0}).steps == 8


def test_unknown_keys_are_reported_not_refused():
    assert parse_generate({**IMG, "colour": "red"}).ignored_keys == ("colour",)


def test_input_must_be_object():
    assert code_of(["not", "a", "dict"])[0] is ErrorCode.INVALID_INPUT


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["steps", "cfg", "frames", "width", "seed", "prompt", "workflow", "output", "fps", "lora_high"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                                 st.lists(st.integers(), max_size=3))))
def test_fuzzed_fields_give_a_request_or_a_coded_error(extra):
    try:
        req = parse_generate({**IMG, **extra})
    except TenexaError as err:
        assert err.code in (ErrorCode.INVALID_INPUT, ErrorCode.NO_END_IMAGE) and "\n" not in err.message
    else:
        assert 2 <= req.steps <= 100 and 5 <= req.frames <= 241 and isinstance(req.prompt, str)


# ---------------------------------------------------------------------------------- prompts the encoder would read


@pytest.mark.parametrize(("prompt", "construct"), [
    ("a cat | a dog", "'|'"),
    ("a cat|", "'|'"),
    ("[1] a cat", "'[1]'"),
    ("a cat [1] walks [2] sits", "'[1]'"),
    ("see note [12]", "'[12]'"),
    ("a clock showing (10:30)", "'(10:30)'"),
    ("(smiling:1.2) woman", "'(smiling:1.2)'"),
    ("(a:1.2.3)", "'(a:1.2.3)'"),  # float('1.2.3') raises inside the node
    ("(" + "x" * 60 + ":2)", "'(xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'"),
])
def test_prompt_constructs_the_encoder_interprets_are_refused(prompt, construct):
    code, message = code_of({**IMG, "prompt": prompt})
    assert code is ErrorCode.INVALID_INPUT and message.startswith(f"prompt: contains {construct}: ")
    assert "literal text" in message and "\n" not in message


@pytest.mark.parametrize("prompt", [
    "", "a red ball rolls slowly", "(a parenthesis) and a colon: 3", "ratio 16:9", "[draft] version", "emoji 🎈 and ümlauts",
    "(10: 30)", "brackets [a1]", "{{json}} \\ back/slash", "line one\nline two",
])
def test_plain_prompts_stay_literal(prompt):
    assert parse_generate({**IMG, "prompt": prompt}).prompt == prompt


@pytest.mark.parametrize("negative", ["blurry | static", "[1] ugly", "(bad:2.0)"])
def test_negative_prompt_is_literal_because_the_encoder_reads_it_as_is(negative):
    assert parse_generate({**IMG, "negative_prompt": negative}).negative_prompt == negative


PROMPT_ALPHABET = st.characters(codec="utf-8", exclude_characters="\x00")


@given(st.text(alphabet=PROMPT_ALPHABET, max_size=80))
def test_accepted_prompts_are_read_word_for_word_by_the_encoder(prompt):
    """Re-create what WanVideoTextEncode does with an accepted prompt: no split, no EchoShot, no weights."""
    try:
        accepted = parse_generate({**IMG, "prompt": prompt}).prompt
    except TenexaError as err:
        assert err.code is ErrorCode.INVALID_INPUT and err.message.startswith("prompt: contains ")
        assert "|" in prompt or re.search(r"\[\d+\]", prompt) or re.search(r"\((.*?):([\d\.]+)\)", prompt)
        return
    assert accepted == prompt
    assert "|" not in accepted and "[1]" not in accepted  # the encoder's own tests for travel and EchoShot
    assert re.findall(r"\((.*?):([\d\.]+)\)", accepted) == []  # parse_prompt_weights finds nothing to weigh


# ---------------------------------------------------------------------------------- frames, scheduler, split, LoRA


def test_frames_over_the_clip_limit_are_refused_with_the_limit():
    code, message = code_of_with({**IMG, "frames": 161}, max_frames=81)
    assert code is ErrorCode.INVALID_INPUT
    assert message == ("frames: 161 is more frames than this worker makes in one job (81, MAX_FRAMES); "
                       "ask for fewer or chain clips with return_last_frame")
    assert code_of_with({**IMG, "length": 83}, max_frames=81)[1].startswith("length: 83 (rounds to 85) is more frames than")
    assert parse_generate({**IMG, "frames": 82}, max_frames=81).frames == 82  # rounds to 81: fits
    assert parse_generate({**IMG, "frames": 161}, max_frames=161).frames == 161  # more than one window: windows, not a refusal


def code_of_with(job_input, **kw):
    with pytest.raises(TenexaError) as info:
        parse_generate(job_input, **kw)
    return info.value.code, info.value.message


def test_only_schedulers_with_a_reproduced_schedule_are_accepted():
    for name in ("flowmatch_pusa", "longcat_distill_euler", "flowmatch_causvid", "sa_ode_stable", "rcm", "vibt_unipc", "multitalk"):
        code, message = code_of({**IMG, "scheduler": name})
        assert code is ErrorCode.INVALID_INPUT and "must be one of unipc, unipc/beta, dpm++" in message


def test_a_shift_that_puts_a_step_on_the_boundary_is_refused():
    code, message = code_of({**IMG, "scheduler": "res_multistep", "steps": 10, "shift": 8.964143})
    assert code is ErrorCode.INVALID_INPUT and message.startswith("shift: shift 8.964143 with 10 steps puts step 6")


def test_lora_name_sets_both_experts_like_the_original_worker():
    req = parse_generate({**IMG, "lora_name": "style.safetensors"})
    assert (req.lora_high, req.lora_low, req.lora_high_strength, req.lora_low_strength) == ("style.safetensors",) * 2 + (1.0, 1.0)
    req = parse_generate({**IMG, "lora_name": "style.safetensors", "lora_strength": 0.6})
    assert (req.lora_high_strength, req.lora_low_strength) == (0.6, 0.6)
    assert req.ignored_keys == ()


@pytest.mark.parametrize("extra", [{"lora_high": "a.safetensors"}, {"lora_low_strength": 0.5}])
def test_lora_name_mixed_with_per_expert_keys_is_refused(extra):
    code, message = code_of({**IMG, "lora_name": "style.safetensors", **extra})
    assert code is ErrorCode.INVALID_INPUT and message.startswith("lora_name: ") and list(extra)[0] in message


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("lora_name", "../x.safetensors", "loras folder"), ("lora_strength", 11, "between -10 and 10"), ("lora_name", 3, "non-empty"),
])
def test_bad_lora_name_fields_are_named(field, value, fragment):
    code, message = code_of({**IMG, field: value})
    assert code is ErrorCode.INVALID_INPUT and message.startswith(field) and fragment in message
