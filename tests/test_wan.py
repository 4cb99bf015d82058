"""The Wan rules: frame counts, sizes, the expert split."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tenexa import schedules, wan


@pytest.mark.parametrize(("frames", "fitted"), [
    (1, 5), (5, 5), (6, 5), (7, 9), (8, 9), (81, 81), (82, 81), (83, 85), (84, 85), (161, 161), (239, 241), (241, 241),
])
def test_fit_frames(frames, fitted):
    assert wan.fit_frames(frames) == fitted


@given(st.integers(min_value=5, max_value=241))
def test_fit_frames_is_nearest_4n_plus_1(frames):
    fitted = wan.fit_frames(frames)
    assert fitted % 4 == 1 and fitted >= 5
    assert abs(fitted - frames) <= 2


@pytest.mark.parametrize(("pixels", "fitted"), [(480, 480), (832, 832), (1080, 1088), (360, 368), (8, 64), (2000, 1920), (72, 80)])
def test_fit_side(pixels, fitted):
    assert wan.fit_side(pixels) == fitted


@given(st.integers(min_value=64, max_value=1920))
def test_fit_side_is_nearest_multiple_of_16(pixels):
    fitted = wan.fit_side(pixels)
    assert fitted % 16 == 0 and 64 <= fitted <= 1920
    assert abs(fitted - pixels) <= 8


@pytest.mark.parametrize(("image", "size"), [
    ((832, 480), (832, 480)),
    ((480, 832), (480, 832)),
    ((1920, 1080), (848, 480)),
    ((1024, 1024), (624, 624)),
    ((64, 64), (624, 624)),  # a small image still renders at the 480p area
])
def test_default_size_keeps_aspect_at_480p_area(image, size):
    assert wan.output_size(image) == size


def test_explicit_sizes_are_rounded_and_one_side_follows_the_aspect():
    assert wan.output_size((1920, 1080), 1280, 720) == (1280, 720)
    assert wan.output_size((1920, 1080), 1000, 500) == (1008, 496)
    assert wan.output_size((1920, 1080), width=1280) == (1280, 720)
    assert wan.output_size((1920, 1080), height=720) == (1280, 720)


@given(st.integers(min_value=16, max_value=8000), st.integers(min_value=16, max_value=8000))
def test_default_size_properties(img_w, img_h):
    width, height = wan.output_size((img_w, img_h))
    assert width % 16 == 0 and height % 16 == 0
    assert 64 <= width <= 1920 and 64 <= height <= 1920
    if 1 / 3 <= img_w / img_h <= 3:  # unclamped: the area stays near 832x480 and the aspect is kept
        assert abs(width * height / (832 * 480) - 1) < 0.1
        assert abs((width / height) / (img_w / img_h) - 1) < 0.1


@pytest.mark.parametrize(("resolution", "aspect", "size"), [
    ("480p", "16:9", (848, 480)), ("480p", "9:16", (480, 848)), ("480p", "1:1", (624, 624)),
    ("580p", "16:9", (1024, 576)), ("580p", "9:16", (576, 1024)), ("580p", "1:1", (768, 768)),
    ("720p", "16:9", (1280, 720)), ("720p", "9:16", (720, 1280)), ("720p", "1:1", (960, 960)),
    (None, "9:16", (480, 848)),  # a ratio alone keeps the 480p area
    ("720p", None, (960, 960)), ("720p", "auto", (960, 960)),  # the image's aspect (square here)
])
def test_resolution_presets_name_an_area_and_the_aspect_a_ratio(resolution, aspect, size):
    assert wan.output_size((1000, 1000), resolution=resolution, aspect_ratio=aspect) == size


def test_aspect_ratio_with_one_side_sets_the_other():
    assert wan.output_size((1920, 1080), width=64, aspect_ratio="9:16") == (64, 112)
    assert wan.output_size((1920, 1080), height=720, aspect_ratio="1:1") == (720, 720)


@pytest.mark.parametrize(("image", "output", "box"), [
    ((1920, 1080), (480, 848), (654, 0, 611, 1080)),  # landscape -> portrait: a centred vertical strip, full height
    ((1080, 1920), (848, 480), (0, 654, 1080, 611)),  # portrait -> landscape: a centred horizontal band
    ((96, 64), (64, 64), (16, 0, 64, 64)),
    ((832, 480), (832, 480), (0, 0, 832, 480)),  # same aspect: the whole image
])
def test_crop_box_is_the_centred_region_of_the_output_aspect(image, output, box):
    assert wan.crop_box(image, output) == box


@given(st.integers(16, 6000), st.integers(16, 6000), st.sampled_from(list(wan.ASPECT_RATIOS)))
def test_crop_box_never_stretches(img_w, img_h, ratio):
    width, height = wan.output_size((img_w, img_h), aspect_ratio=ratio)
    x, y, w, h = wan.crop_box((img_w, img_h), (width, height))
    assert 0 <= x and 0 <= y and x + w <= img_w and y + h <= img_h
    assert w == img_w or h == img_h  # as large as it can be
    assert abs(x - (img_w - x - w)) <= 1 and abs(y - (img_h - y - h)) <= 1  # centred
    assert abs(w / h - width / height) <= max(1 / h, width / height / w) * 1.01  # the output's aspect, up to rounding


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError):
        wan.output_size((0, 100))


# ------------------------------------------------------------------------------------------ one window


def test_window_tokens():
    assert wan.window_tokens(81, 1280, 720) == 75_600 == wan.DEFAULT_LATENT_TOKENS
    assert wan.window_tokens(81, 832, 480) == 32_760
    assert wan.window_tokens(5, 64, 64) == 2 * 4 * 4


def test_check_window_refuses_long_windows_with_the_limit():
    wan.check_window(81, 832, 480, max_frames=81, max_tokens=75_600)
    with pytest.raises(wan.WindowError, match=r"85 frames .* \(81, MAX_WINDOW_FRAMES.*at most 81 frames") as info:
        wan.check_window(85, 832, 480, max_frames=81, max_tokens=10**9)
    assert info.value.field == "frames"


def test_check_window_refuses_over_budget_sizes_and_says_what_fits():
    wan.check_window(81, 1280, 720, max_frames=81, max_tokens=75_600)  # exactly the budget
    with pytest.raises(wan.WindowError) as info:
        wan.check_window(81, 1920, 1088, max_frames=81, max_tokens=75_600)
    assert info.value.field == "size"
    message = str(info.value)
    assert "171,360 latent tokens" in message and "75,600 (MAX_LATENT_TOKENS" in message
    assert "1264x720 fits at 81 frames" in message and "33 frames fit at 1920x1088" in message


@given(st.integers(0, 59).map(lambda n: 4 * n + 5), st.integers(4, 120).map(lambda n: 16 * n),
       st.integers(4, 120).map(lambda n: 16 * n), st.integers(32, 400_000))
def test_window_hints_really_fit(frames, width, height, budget):
    """Whatever size and frame count the refusal suggests fits the budget, and refusal happens exactly above it."""
    tokens = wan.window_tokens(frames, width, height)
    try:
        wan.check_window(frames, width, height, max_frames=241, max_tokens=budget)
        assert tokens <= budget
    except wan.WindowError:
        assert tokens > budget
    size = wan.size_within(width, height, frames, budget)
    if size is not None:
        w, h = size
        assert w % 16 == 0 and h % 16 == 0 and min(w, h) >= 64
        assert wan.window_tokens(frames, w, h) <= budget
        if tokens > budget:
            assert abs((w / h) / (width / height) - 1) < 0.5 or min(w, h) == 64  # the aspect survives unless clamped
    else:
        assert wan.window_tokens(frames, 64, 64) > budget
    fewer = wan.frames_within(width, height, 241, budget)
    if fewer is not None:
        assert fewer % 4 == 1 and wan.window_tokens(fewer, width, height) <= budget
        assert fewer == 241 or wan.window_tokens(fewer + 4, width, height) > budget  # the most that fit


# ------------------------------------------------------------------------------------------ the expert split


def test_float_helpers_follow_numpy_and_float32():
    assert schedules._linspace(0.0, 1.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert schedules._linspace(2.0, 2.0, 3) == [2.0, 2.0, 2.0]
    assert schedules._linspace(0.999, 0.0, 4)[-1] == 0.0  # numpy sets the end point exactly
    assert schedules._f32(0.1) == 0.10000000149011612 and schedules._f32(1.0) == 1.0
    assert schedules._shift32(0.5, 9.0) == schedules._f32(0.9)


@pytest.mark.parametrize("q", [1e-9, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999])
def test_beta_ppf_inverts_the_cdf(q):
    x = schedules.beta_ppf(q)
    assert abs(schedules._beta_cdf(x, 0.6, 0.6) - q) < 1e-14
    assert abs(schedules.beta_ppf(1 - q) - (1 - x)) < 1e-14  # Beta(0.6, 0.6) is symmetric


def test_beta_ppf_end_points_and_middle():
    assert schedules.beta_ppf(0.0) == 0.0 and schedules.beta_ppf(1.0) == 1.0
    assert abs(schedules.beta_ppf(0.5) - 0.5) < 1e-15


@pytest.mark.parametrize(("steps", "shift", "high"), [
    (40, 5.0, 15),  # Wan2.2 official I2V default (unipc)
    (40, 3.0, 10),  # official 480p hint
    (20, 8.0, 10),  # ComfyUI native template
    (8, 9.0, 4),  # peer worker
    (6, 8.0, 3),  # kijai example
    (4, 5.0, 2),  # Wan2.2-Lightning
    (10, 9.0, 5),  # Tenexa default
])
@pytest.mark.parametrize("scheduler", ["unipc", "dpm++", "dpm++_sde", "deis"])
def test_flow_solvers_reproduce_the_published_table(scheduler, steps, shift, high):
    assert wan.expert_split(steps, shift, scheduler) == high


def test_schedulers_that_the_shifted_sigma_rule_got_wrong():
    """The cases of issue 12: the split follows each scheduler's own schedule (values read from the pack's code)."""
    assert schedules.scheduler_timesteps("dpm++_sde/beta", 10, 9.0)[0][:4] == [999.0, 976.0, 927.0, 862.0]
    assert wan.expert_split(10, 9.0, "dpm++_sde/beta") == 3
    assert schedules.scheduler_timesteps("dpm++_sde", 10, 9.0)[0][4:6] == [931.0, 899.0]
    assert wan.expert_split(10, 9.0, "dpm++_sde") == 5
    assert wan.expert_split(40, 5.0, "euler") == 14 and wan.expert_split(40, 5.0, "unipc") == 15
    assert wan.expert_split(8, 9.0, "res_multistep") == 5 and wan.expert_split(10, 9.0, "euler/beta") == 2


def test_expert_split_clamps_so_both_experts_run():
    assert wan.expert_split(2, 50.0, "dpm++_sde") == 1
    assert wan.expert_split(10, 0.5, "dpm++_sde") == 1  # low shift: below the boundary after the first step
    assert wan.expert_split(3, 50.0, "dpm++_sde") == 2


def test_expert_split_needs_two_steps_and_a_known_scheduler():
    with pytest.raises(ValueError):
        wan.expert_split(1, 5.0, "unipc")
    with pytest.raises(ValueError, match="flowmatch_pusa"):
        wan.expert_split(10, 5.0, "flowmatch_pusa")


@pytest.mark.parametrize(("scheduler", "steps", "shift"), [
    ("res_multistep", 10, 8.964143),  # step 6 lands on t = 900.0 in float32
    ("dpm++_sde/beta", 10, 4.111842),  # step 3 at t = 900.0000018
])
def test_a_step_on_the_boundary_within_the_margin_is_refused(scheduler, steps, shift):
    with pytest.raises(wan.SplitError, match=rf"shift {shift} with {steps} steps puts step \d+ of the {re.escape(scheduler)}"):
        wan.expert_split(steps, shift, scheduler)
    wan.expert_split(steps, round(shift + 0.01, 6), scheduler)  # the suggested shift works


def _split_or_none(steps, shift, scheduler):
    try:
        return wan.expert_split(steps, shift, scheduler)
    except wan.SplitError:
        return None


@settings(deadline=None)
@given(st.integers(min_value=2, max_value=100), st.floats(min_value=0.5, max_value=50.0), st.sampled_from(schedules.SCHEDULERS))
def test_expert_split_bounds_and_monotone_in_shift(steps, shift, scheduler):
    split = _split_or_none(steps, shift, scheduler)
    more = _split_or_none(steps, min(50.0, shift * 1.5), scheduler)
    assume(split is not None and more is not None)  # a refusal is tested above
    assert 0 < split < steps
    assert more >= split  # more shift keeps the HIGH expert longer


@settings(deadline=None)
@given(st.integers(min_value=2, max_value=100), st.floats(min_value=0.5, max_value=50.0), st.sampled_from(schedules.SCHEDULERS))
def test_split_counts_the_timesteps_at_or_above_900(steps, shift, scheduler):
    timesteps, margin = schedules.scheduler_timesteps(scheduler, steps, shift)
    assert len(timesteps) == steps
    assert all(a >= b for a, b in itertools.pairwise(timesteps))  # every schedule runs from noise to clean
    assert 0 < timesteps[0] <= 1000.001  # float32 shifting can land a hair above 1000, in the pack too
    split = _split_or_none(steps, shift, scheduler)
    if split is None:
        assert margin > 0 and any(abs(t - 900) <= margin + 1 for t in timesteps)
    else:
        assert split == min(steps - 1, max(1, sum(1 for t in timesteps if t >= 900)))
