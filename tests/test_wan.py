"""The Wan rules: frame counts, sizes, the expert split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenexa import wan


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


@pytest.mark.parametrize(("steps", "shift", "high"), [
    (40, 5.0, 15),  # Wan2.2 official I2V default
    (40, 3.0, 10),  # official 480p hint
    (20, 8.0, 10),  # ComfyUI native template
    (8, 9.0, 4),  # peer worker: sigma lands exactly on 0.9 at i=4, which goes to LOW
    (6, 8.0, 3),  # kijai example
    (4, 5.0, 2),  # Wan2.2-Lightning
    (10, 9.0, 5),  # Tenexa default
])
def test_expert_split_reproduces_published_table(steps, shift, high):
    assert wan.expert_split(steps, shift) == high


def test_expert_split_clamps_so_both_experts_run():
    assert wan.expert_split(2, 50.0) == 1
    assert wan.expert_split(10, 0.5) == 1  # low shift: sigma drops below 0.9 after the first step
    assert wan.expert_split(3, 50.0) == 2


def test_expert_split_needs_two_steps():
    with pytest.raises(ValueError):
        wan.expert_split(1, 5.0)


@given(st.integers(min_value=2, max_value=100), st.floats(min_value=0.5, max_value=50.0))
def test_expert_split_bounds_and_monotone_in_shift(steps, shift):
    split = wan.expert_split(steps, shift)
    assert 0 < split < steps
    assert wan.expert_split(steps, min(50.0, shift * 1.5)) >= split  # more shift keeps the HIGH expert longer
