import random

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
