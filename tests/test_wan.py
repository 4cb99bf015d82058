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
