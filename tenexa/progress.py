"""Turn the worker's own steps and ComfyUI's WebSocket events into rate-limited progress updates.

Payload (one JSON object per update)::

    {"phase": "sampling_high", "step": 3, "total": 10, "percent": 31.2, "eta_s": 140.5, "node": "220"}

Phases, in the order a job normally passes them: fetching_loras (only for LoRAs given by URL, before the graph
exists: ``step`` LoRAs of ``total`` are in place, a cached one at once), uploading, queued, loading_models, sampling_high,
sampling_low, decoding, interpolating (only with ``interpolate`` > 1: the RIFE node in the graph, or the
worker's ffmpeg pass after it), encoding, delivering. ``loading_models`` covers everything ComfyUI runs before a
sampler's first step (loaders, text and image encoding, a sampler loading its expert's weights), so it
comes back between the two samplers while the low-noise expert loads. ``step``/``total`` are the current
node's progress bar (for a sampler: the denoising step within that expert's share of the steps), ``None``
when the node has none. ``percent`` is the whole job, weighted by phase, and never goes down. ``eta_s`` is
extrapolated from the percent gained since the first sampling step (``None`` before that).

Rate limit: at most one update per ``interval``. A change that arrives sooner (phase changes included) is
not lost: the latest state goes out as soon as the interval has passed, from a timer, so a long silent node
(the VAE decode) is still reported. ``close()`` drops any pending update, waits for updates already handed
to RunPod to finish, and makes every later call a no-op, so the job's result is the last thing RunPod
receives (runpod-sdk.md §4: a late ``progress_update`` can land after the result and leave the job
IN_PROGRESS). Nothing here raises into the pipeline: failures are logged and the job goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tenexa.validator import literal_int

log = logging.getLogger("tenexa.progress")


PHASES = (
    "fetching_loras",
    "uploading",
    "queued",
    "loading_models",
    "sampling_high",
    "sampling_low",
    "decoding",
    "interpolating",
    "encoding",
    "delivering",
)
WORKER_PHASES = ("fetching_loras", "uploading", "queued", "interpolating", "delivering")

# Overall percent at which each phase starts and ends. Sampling dominates a Wan job's wall time; the
# sampling band is shared by the graph's samplers in proportion to their steps.
PHASE_BANDS: dict[str, tuple[float, float]] = {
    "uploading": (0.0, 1.0),
    "queued": (1.0, 2.0),
    "loading_models": (2.0, 10.0),
    "sampling": (10.0, 90.0),
    "decoding": (90.0, 94.0),
    "interpolating": (94.0, 96.0),
    "encoding": (96.0, 98.0),
    "delivering": (98.0, 100.0),
}

LOADER_CLASSES = frozenset(
    {
        "WanVideoModelLoader",
        "WanVideoVAELoader",
        "WanVideoTinyVAELoader",
        "LoadWanVideoT5TextEncoder",
        "LoadWanVideoClipTextEncoder",
        "CLIPVisionLoader",
    }
)
SAMPLER_CLASSES = frozenset({"WanVideoSampler"})
DECODER_CLASSES = frozenset({"WanVideoDecode", "VAEDecode", "VAEDecodeTiled"})
INTERPOLATOR_CLASSES = frozenset({"RIFE VFI", "FILM VFI"})
ENCODER_CLASSES = frozenset({"VHS_VideoCombine", "SaveVideo", "CreateVideo"})
# The phase each of these node roles reports.
ROLE_PHASES = {"decoder": "decoding", "interpolator": "interpolating", "encoder": "encoding"}

# A sampler's progress bar whose max is not one of its step counts is the weight-load bar (one tick per
# tensor). When the step count is not a literal we can resolve, bars longer than this count as loading.
MAX_PLAUSIBLE_STEPS = 200
CLOSE_TIMEOUT_S = 5.0


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def _start_timer(delay: float, callback: Callable[[], None]) -> Cancellable:
    timer = threading.Timer(max(0.0, delay), callback)
    timer.daemon = True
    timer.name = "tenexa-progress-flush"
    timer.start()
    return timer


@dataclass(frozen=True)
class Sampler:
    phase: str  # sampling_high or sampling_low
    step_counts: frozenset[int]  # bar maxima that mean "denoising steps"; empty when unknown
    band: tuple[float, float]
    segment: int = 1  # which window of a clip generated in consecutive windows


class GraphPlan:
    """What each node of an API-format graph means for progress: its role and, for samplers, their band."""

    def __init__(self, graph: dict):
        self.graph = graph if isinstance(graph, dict) else {}
        self.loaders: set[str] = set()
        self.decoders: set[str] = set()
        self.segment_decoders: set[str] = set()  # decodes of a window that later windows start from
        self.interpolators: set[str] = set()
        self.encoders: set[str] = set()
        self.samplers: dict[str, Sampler] = {}
        sampler_steps: dict[str, tuple[str, frozenset[int], int | None]] = {}
        for node_id, node in self.graph.items():
            class_type = node.get("class_type", "") if isinstance(node, dict) else ""
            node_id = str(node_id)
            if class_type in LOADER_CLASSES or "Loader" in class_type:
                self.loaders.add(node_id)
            elif class_type in SAMPLER_CLASSES:
                inputs = node.get("inputs", {})
                phase = "sampling_low" if _is_link(inputs.get("samples")) else "sampling_high"
                counts, segment = self._step_counts(inputs)
                sampler_steps[node_id] = (phase, counts, segment)
            elif class_type in DECODER_CLASSES:
                self.decoders.add(node_id)
            elif class_type in INTERPOLATOR_CLASSES:
                self.interpolators.add(node_id)
            elif class_type in ENCODER_CLASSES:
                self.encoders.add(node_id)
        self._upstream_cache: dict[str, frozenset[str]] = {}
        self._assign_sampling_bands(sampler_steps)
        feeding_samplers = set().union(*(self._upstream(n) for n in self.samplers)) if self.samplers else set()
        self.segment_decoders = self.decoders & feeding_samplers
        self.segments = sum(1 for sampler in self.samplers.values() if sampler.phase == "sampling_high") or 1

    def role(self, node_id: str | None) -> str | None:
        if node_id is None:
            return None
        if node_id in self.samplers:
            return "sampler"
        if node_id in self.loaders:
            return "loader"
        if node_id in self.segment_decoders:
            return "segment_decoder"
        if node_id in self.decoders:
            return "decoder"
        if node_id in self.interpolators:
            return "interpolator"
        if node_id in self.encoders:
            return "encoder"
        return None

    def resolve_int(self, value: Any) -> int | None:
        """A literal int, or the literal ``value`` of a constant node (INTConstant, PrimitiveInt…) it links to."""
        return literal_int(self.graph, value)

    def _step_counts(self, inputs: dict) -> tuple[frozenset[int], int | None]:
        steps = self.resolve_int(inputs.get("steps"))
        if not steps or steps <= 0:
            return frozenset(), None
        start = self.resolve_int(inputs.get("start_step", 0))
        end = self.resolve_int(inputs.get("end_step", -1))
        counts = {steps}
        segment = None
        if start is not None and end is not None:
            stop = steps if end < 0 or end > steps else end
            segment = stop - max(0, min(start, stop))
            if segment > 0:
                counts.add(segment)
            else:
                segment = None
        return frozenset(counts), segment if segment is not None else steps

    def _assign_sampling_bands(self, sampler_steps: dict[str, tuple[str, frozenset[int], int | None]]) -> None:
        if not sampler_steps:
            return

        def depth(node_id: str) -> int:
            # How many samplers run before this one: the LOW expert after its HIGH, a later window after the
            # earlier windows it starts from (through the decode, the last frame and the encode).
            return len(self._upstream(node_id) & set(sampler_steps))

        def segment(node_id: str) -> int:
            highs = {n for n, (phase, _, _) in sampler_steps.items() if phase == "sampling_high"}
            return len((self._upstream(node_id) | {node_id}) & highs) or 1

        order = sorted(sampler_steps, key=lambda n: (depth(n), _numeric_key(n)))
        known = [seg for _, _, seg in sampler_steps.values() if seg]
        fallback = sum(known) / len(known) if known else 1.0
        weights = [sampler_steps[n][2] or fallback for n in order]
        lo, hi = PHASE_BANDS["sampling"]
        total = sum(weights)
        start = lo
        for node_id, weight in zip(order, weights, strict=True):
            end = start + (hi - lo) * weight / total
            phase, counts, _ = sampler_steps[node_id]
            self.samplers[node_id] = Sampler(phase, counts, (start, end), segment(node_id))
            start = end

    def _upstream(self, node_id: str) -> frozenset[str]:
        """Every node ``node_id`` depends on through its links (not itself)."""
        if node_id not in self._upstream_cache:
            found: set[str] = set()
            stack = [node_id]
            while stack:
                node = self.graph.get(stack.pop())
                for value in (node.get("inputs", {}) if isinstance(node, dict) else {}).values():
                    if _is_link(value) and str(value[0]) not in found and str(value[0]) in self.graph:
                        found.add(str(value[0]))
                        stack.append(str(value[0]))
            self._upstream_cache[node_id] = frozenset(found - {node_id})
        return self._upstream_cache[node_id]

    def is_weight_load_bar(self, node_id: str, bar_max: int) -> bool:
        counts = self.samplers[node_id].step_counts
        if counts:
            return bar_max not in counts
        return bar_max > MAX_PLAUSIBLE_STEPS


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _numeric_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 62, node_id)


class ProgressReporter:
    """Follows one job and sends its progress through ``send`` (``progress_update`` in production)."""

    def __init__(
        self,
        send: Callable[[dict], Any],
        *,
        graph: dict,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], Cancellable] = _start_timer,
    ):
        self._send = send
        self._interval = max(0.0, float(interval))
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.RLock()
        self._closed = False
        self._timer: Cancellable | None = None
        self._in_flight: list[threading.Thread] = []
        self._last_sent_at: float | None = None
        self._dirty = False
        self.sent_count = 0

        try:
            self._plan = GraphPlan(graph)
        except Exception:  # a graph we cannot read must not fail the job; classify nothing
            log.warning("progress: could not read the graph; phases will be coarse", exc_info=True)
            self._plan = GraphPlan({})
        self._prompt_id: str | None = None
        self._phase: str | None = None
        self._step: int | None = None
        self._total: int | None = None
        self._node: str | None = None
        self._percent = 0.0
        self._segment = 1
        self._loaders_started: set[str] = set()
        self._samplers_loading: set[str] = set()
        self._load_bar_fraction = 0.0
        self._sampling_started_at: float | None = None
        self._percent_at_sampling_start = 0.0

    # --- inputs ---------------------------------------------------------------------------------------

    def phase(self, name: str, *, step: int | None = None, total: int | None = None) -> None:
        """A worker-side phase: fetching_loras (``step`` of ``total`` in place), uploading, queued,
        interpolating (the ffmpeg fallback) or delivering."""
        try:
            with self._lock:
                if self._closed:
                    return
                if name not in PHASES:
                    log.warning("progress: unknown phase %r ignored", name)
                    return
                self._enter(name, node=None)
                if step is not None:
                    self._step, self._total = step, total
                self._changed()
        except Exception:
            log.warning("progress: phase(%r) failed", name, exc_info=True)

    def on_event(self, event_type: str, data: dict) -> None:
        """One ComfyUI WebSocket JSON message (its ``type`` and ``data``)."""
        try:
            with self._lock:
                if self._closed or not isinstance(data, dict):
                    return
                if self._handle(event_type, data):
                    self._changed()
        except Exception:
            log.warning("progress: event %r could not be used", event_type, exc_info=True)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop for good: drop what is pending, wait (up to ``timeout`` s) for updates already sent."""
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                in_flight, self._in_flight = self._in_flight, []
            deadline = time.monotonic() + timeout
            for thread in in_flight:
                thread.join(max(0.0, deadline - time.monotonic()))
            late = [t for t in in_flight if t.is_alive()]
            if late:
                log.warning("progress: %d update(s) still in flight after %.1f s; one may arrive after the result", len(late), timeout)
        except Exception:
            log.warning("progress: close failed", exc_info=True)

    async def aclose(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """``close()`` without blocking the event loop while in-flight updates finish."""
        await asyncio.to_thread(self.close, timeout)

    # --- state ------------------------------------------------------------------------------------------

    def _handle(self, event_type: str, data: dict) -> bool:
        prompt_id = data.get("prompt_id")
        if event_type == "execution_start":
            self._prompt_id = self._prompt_id or prompt_id
        elif self._prompt_id and prompt_id and prompt_id != self._prompt_id:
            return False  # another client's prompt on a shared socket

        if event_type == "execution_start":
            if self._phase in (None, "uploading", "queued"):
                self._enter("loading_models", node=None)
                return True
            return False
        if event_type == "execution_cached":
            cached = {str(n) for n in data.get("nodes") or []}
            self._loaders_started |= cached & self._plan.loaders
            return False
        if event_type == "executing":
            return self._on_executing(data.get("node"))
        if event_type == "progress":
            return self._on_progress(data)
        return False  # progress_state, executed, status, execution_success/error…: nothing new for progress

    def _on_executing(self, node: Any) -> bool:
        if node is None:
            return False  # the prompt is done; the worker's next phase says what follows
        node = str(node)
        role = self._plan.role(node)
        if role == "loader":
            self._loaders_started.add(node)
            self._enter("loading_models", node=node)
            self._raise_percent(self._loading_percent())
        elif role == "sampler":
            if self._phase == "loading_models":
                # Stay in loading_models until the first real step: a sampler begins by loading its weights.
                self._node = node
                self._step = self._total = None
            else:
                self._enter(self._plan.samplers[node].phase, node=node)
                self._segment = self._plan.samplers[node].segment
                self._raise_percent(self._plan.samplers[node].band[0])
        elif role == "segment_decoder":
            # A window's decode in the middle of the sampling band: later windows start from it.
            self._phase, self._node, self._step, self._total = "decoding", node, None, None
        elif role in ROLE_PHASES:
            self._enter(ROLE_PHASES[role], node=node)
            self._raise_percent(PHASE_BANDS[self._phase][0])
        else:
            self._node = node
            self._step = self._total = None
        return True

    def _on_progress(self, data: dict) -> bool:
        node = str(data.get("node") or self._node or "")
        value, bar_max = data.get("value"), data.get("max")
        if not isinstance(value, (int, float)) or not isinstance(bar_max, (int, float)) or bar_max <= 0:
            return False
        value, bar_max = int(value), int(bar_max)
        fraction = min(1.0, max(0.0, value / bar_max))
        role = self._plan.role(node)
        if role == "sampler":
            sampler = self._plan.samplers[node]
            if self._plan.is_weight_load_bar(node, bar_max):
                self._samplers_loading.add(node)
                self._load_bar_fraction = fraction
                self._enter("loading_models", node=node)
                self._raise_percent(self._loading_percent())
                return True
            if self._phase != sampler.phase:
                self._enter(sampler.phase, node=node)
            self._segment = sampler.segment
            self._node, self._step, self._total = node, value, bar_max
            lo, hi = sampler.band
            self._raise_percent(lo + (hi - lo) * fraction)
            if self._sampling_started_at is None:
                self._sampling_started_at = self._clock()
                self._percent_at_sampling_start = self._percent
            return True
        if role in ROLE_PHASES:
            phase = ROLE_PHASES[role]
            if self._phase != phase:
                self._enter(phase, node=node)
            self._node, self._step, self._total = node, value, bar_max
            lo, hi = PHASE_BANDS[phase]
            self._raise_percent(lo + (hi - lo) * fraction)
            return True
        return False  # bars of other nodes (e.g. the image encode's single tick) say nothing about the job

    def _enter(self, phase: str, *, node: str | None) -> None:
        if phase != self._phase:
            self._phase = phase
            self._step = self._total = None
            if phase in PHASE_BANDS:
                self._raise_percent(PHASE_BANDS[phase][0])
        self._node = node

    def _loading_percent(self) -> float:
        units = len(self._plan.loaders) + len(self._plan.samplers)
        if units == 0:
            return PHASE_BANDS["loading_models"][0]
        started = len(self._loaders_started & self._plan.loaders) + max(0, len(self._samplers_loading) - 1)
        done = started + (self._load_bar_fraction if self._samplers_loading else 0.0)
        lo, hi = PHASE_BANDS["loading_models"]
        return lo + (hi - lo) * min(1.0, done / units)

    def _raise_percent(self, percent: float) -> None:
        self._percent = max(self._percent, min(100.0, percent))

    def _eta(self, now: float) -> float | None:
        if self._sampling_started_at is None:
            return None
        elapsed = now - self._sampling_started_at
        gained = self._percent - self._percent_at_sampling_start
        if elapsed <= 0 or gained <= 0:
            return None
        return round(max(0.0, (100.0 - self._percent) * elapsed / gained), 1)

    def payload(self) -> dict:
        """The update as it would be sent now (with ``segment``/``segments`` when the clip has several windows)."""
        payload = {
            "phase": self._phase,
            "step": self._step,
            "total": self._total,
            "percent": round(self._percent, 1),
            "eta_s": self._eta(self._clock()),
            "node": self._node,
        }
        if self._plan.segments > 1:
            payload.update(segment=self._segment, segments=self._plan.segments)
        return payload

    # --- sending ----------------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        now = self._clock()
        if self._last_sent_at is None or now - self._last_sent_at >= self._interval:
            self._send_now(now)
        elif self._timer is None:
            self._timer = self._schedule(self._last_sent_at + self._interval - now, self._flush)

    def _flush(self) -> None:
        try:
            with self._lock:
                self._timer = None
                if self._closed or not self._dirty:
                    return
                now = self._clock()
                if now - self._last_sent_at < self._interval:  # woke early: try again at the boundary
                    self._timer = self._schedule(self._last_sent_at + self._interval - now, self._flush)
                    return
                self._send_now(now)
        except Exception:
            log.warning("progress: deferred update failed", exc_info=True)

    def _send_now(self, now: float) -> None:
        payload = self.payload()
        self._last_sent_at = now
        self._dirty = False
        self._in_flight = [t for t in self._in_flight if t.is_alive()]
        # runpod's progress_update POSTs from a thread it starts and does not return; note the threads that
        # appear during the call so close() can wait for them.
        before = set(threading.enumerate())
        try:
            returned = self._send(payload)
        except Exception:
            log.warning("progress: sending an update failed", exc_info=True)
            return
        self.sent_count += 1
        started = [t for t in threading.enumerate() if t not in before and t is not threading.current_thread()]
        if isinstance(returned, threading.Thread):
            started.append(returned)
        self._in_flight.extend(started)
