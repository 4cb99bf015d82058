"""Clips longer than one window, without ComfyUI: how the frames are split, the graph that chains the windows,
and progress across them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenexa import wan, workflows
from tenexa.config import load_settings
from tenexa.progress import GraphPlan, ProgressReporter
from tenexa.request import parse_generate
from tenexa.validator import load_object_info, validate

SETTINGS = load_settings({"TENEXA_TEXT_ENCODER": "cache", "TENEXA_ATTENTION": "sdpa"})
OBJECT_INFO = load_object_info()


@pytest.mark.parametrize(("frames", "window", "counts"), [
    (81, 81, [81]), (161, 81, [81, 81]), (165, 81, [57, 57, 53]), (241, 81, [81, 81, 81]), (321, 81, [81, 81, 81, 81]),
    (85, 81, [45, 41]), (9, 5, [5, 5]), (13, 9, [9, 5]), (5, 81, [5]),
])
def test_plan_segments(frames, window, counts):
    assert wan.plan_segments(frames, window) == counts


@given(st.integers(1, 200).map(lambda n: 4 * n + 1), st.integers(1, 60).map(lambda n: 4 * n + 1))
def test_segments_fit_the_window_and_add_up_without_duplicating_the_seams(frames, window):
    counts = wan.plan_segments(frames, window)
    assert all(c % 4 == 1 and 5 <= c <= window for c in counts)
    assert sum(counts) - (len(counts) - 1) == frames
    assert len(counts) == -(-(frames - 1) // (window - 1))  # as few windows as fit
    assert max(counts) - min(counts) <= 4  # as even as 4n+1 allows: no short tail


def test_plan_segments_refuses_what_is_not_a_frame_count():
    for frames, window in ((8, 81), (3, 81), (9, 4)):
        with pytest.raises(ValueError):
            wan.plan_segments(frames, window)


def bind(workflow: str = "wan22_i2v", window: int | None = 5, **fields):
    """Bind a 13-frame clip on a worker whose windows hold ``window`` frames (None: the default, 81)."""
    data = {"workflow": workflow, "image_base64": "x", "frames": 13, "seed": 40, **fields}
    if workflow == "flf2v":
        data["end_image_base64"] = "y"
    req = parse_generate(data)
    settings = replace(SETTINGS, max_window_frames=window) if window else SETTINGS
    return workflows.bind(req, image_size=(96, 64), settings=settings, start_image="in/start.png",
                          end_image="in/end.png" if workflow == "flf2v" else None, output_prefix="p")


def of(graph: dict, class_type: str) -> dict[str, dict]:
    return {k: n for k, n in graph.items() if n["class_type"] == class_type}


def test_one_window_when_the_clip_fits():
    bound = bind(window=81)
    assert bound.used["segments"] == [13] and len(of(bound.graph, "WanVideoSampler")) == 2
    assert not of(bound.graph, "ImageBatch")


@pytest.mark.parametrize("workflow", ["wan22_i2v", "flf2v"])
def test_segments_chain_from_the_previous_last_frame_and_join_without_duplicates(workflow):
    bound = bind(workflow)
    g, used = bound.graph, bound.used
    assert used["segments"] == [5, 5, 5] and used["frames"] == 13
    assert validate(g, OBJECT_INFO) == []
    encodes = of(g, "WanVideoImageToVideoEncode")
    assert sorted(e["inputs"]["num_frames"] for e in encodes.values()) == [5, 5, 5]
    # every later window starts on the last frame of the decode before it
    decodes = of(g, "WanVideoDecode")
    starts = [e["inputs"]["start_image"] for e in encodes.values()]
    picks = [g[s[0]] for s in starts if g[s[0]]["class_type"] == "ImageFromBatch"]
    assert len(picks) == 2 and all(p["inputs"]["batch_index"] == workflows.LAST_FRAME_INDEX and p["inputs"]["length"] == 1 for p in picks)
    assert {p["inputs"]["image"][0] for p in picks} < set(decodes)
    # the end image conditions only the last window
    with_end = [e for e in encodes.values() if "end_image" in e["inputs"]]
    assert len(with_end) == (workflow == "flf2v")
    assert [e["inputs"]["fun_or_fl2v_model"] for e in encodes.values()].count(True) == (workflow == "flf2v")
    if with_end:
        last_decode = g[g[bound.output_node]["inputs"]["images"][0]]["inputs"]["image2"][0]
        (last_encode,) = with_end
        assert g[g[g[last_decode]["inputs"]["image"][0]]["inputs"]["samples"][0]]["inputs"]["image_embeds"][0] in encodes
        assert last_encode["inputs"]["start_image"][0] in {s[0] for s in starts}
    # each window its own seed; the loaders, LoRAs, text and steps shared
    seeds = sorted({s["inputs"]["seed"] for s in of(g, "WanVideoSampler").values()})
    assert seeds == [40, 41, 42]
    assert len(of(g, "WanVideoModelLoader")) == 2 and len(of(g, "WanVideoTextEncode")) == 1
    # the join: the first window whole, each later one without its first frame
    trims = [n for n in of(g, "ImageFromBatch").values() if n["inputs"]["batch_index"] == 1]
    assert len(trims) == 2 and all(t["inputs"]["length"] == 4 for t in trims)
    assert len(of(g, "ImageBatch")) == 2
    assert g[g[bound.output_node]["inputs"]["images"][0]]["class_type"] == "ImageBatch"


def test_interpolation_and_last_frame_apply_to_the_joined_clip():
    bound = workflows.bind(parse_generate({"image_base64": "x", "frames": 13, "interpolate": 2, "return_last_frame": True}),
                           image_size=(96, 64), settings=replace(SETTINGS, max_window_frames=5), start_image="a", end_image=None, output_prefix="p",
                           interpolator="rife")
    g = bound.graph
    (rife,) = of(g, "RIFE VFI").values()
    assert g[rife["inputs"]["frames"][0]]["class_type"] == "ImageBatch"  # after the join: one pass over the whole clip
    assert bound.used["output_frames"] == 25 and len(of(g, "VHS_VideoCombine")) == 1  # and one encode
    assert validate(g, OBJECT_INFO) == []


def test_progress_spans_every_window_in_order():
    bound = bind(steps=4)
    plan = GraphPlan(bound.graph)
    ordered = sorted(plan.samplers.values(), key=lambda s: s.band)
    assert [(s.segment, s.phase) for s in ordered] == [(1, "sampling_high"), (1, "sampling_low"), (2, "sampling_high"),
                                                        (2, "sampling_low"), (3, "sampling_high"), (3, "sampling_low")]
    assert ordered[0].band[0] == 10.0 and ordered[-1].band[1] == 90.0
    assert plan.segments == 3 and len(plan.segment_decoders) == 2

    sent: list[dict] = []
    reporter = ProgressReporter(sent.append, graph=bound.graph, interval=0.0)
    high = {s.segment: n for n, s in plan.samplers.items() if s.phase == "sampling_high"}
    low = {s.segment: n for n, s in plan.samplers.items() if s.phase == "sampling_low"}
    decode_of = {1: sorted(plan.segment_decoders, key=int)[0], 2: sorted(plan.segment_decoders, key=int)[1]}
    reporter.on_event("execution_start", {"prompt_id": "p"})
    for segment in (1, 2, 3):
        for node in (high[segment], low[segment]):
            reporter.on_event("executing", {"node": node, "prompt_id": "p"})
            for step in (1, 2):
                reporter.on_event("progress", {"node": node, "value": step, "max": 2, "prompt_id": "p"})
        if segment in decode_of:
            reporter.on_event("executing", {"node": decode_of[segment], "prompt_id": "p"})
    percents = [p["percent"] for p in sent]
    assert percents == sorted(percents) and percents[-1] == 90.0
    sampling = [p for p in sent if p["phase"].startswith("sampling")]
    assert all(p["segment"] == plan.samplers[p["node"]].segment for p in sampling)
    assert [p["segment"] for p in sampling] == sorted(p["segment"] for p in sampling) and sampling[-1]["segment"] == 3
    assert all(p["segments"] == 3 for p in sent)
    between = [p for p in sent if p["phase"] == "decoding"]
    assert between and all(p["percent"] < 90.0 for p in between)  # a window's decode stays in the sampling band


def test_single_window_progress_has_no_segment_fields():
    reporter = ProgressReporter(lambda _p: None, graph=bind(window=None).graph, interval=0.0)
    assert "segment" not in reporter.payload() and "segments" not in reporter.payload()
