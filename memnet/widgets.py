"""A live ipywidgets explorer over a :class:`~memnet.trace.MemoryTrace`, for JupyterLab.

``explorer(trace)`` returns a widget: a segment slider, a head selector, a slot selector
and an Output area that redraws a matplotlib figure on every change: the segment's read
weights (token x slot) next to the selected slot's age, usage, retention and write
strength over all segments. The rendered (static) book shows the first view from the
saved widget state; a page without a kernel should also show
:func:`memnet.plots.small_multiples`.
"""
from __future__ import annotations

import ipywidgets as W
import numpy as np
from IPython.display import display

from . import plots
from .trace import MemoryTrace


def live_figure(controls: list, draw) -> W.VBox:
    """A VBox of `controls` (a row of ipywidgets) above an Output that shows ``draw(*values)``,
    the controls' current values in order, redrawn whenever one of them changes. The box's
    ``redraw()`` redraws by hand (for tests and callers that set a control programmatically)."""
    out = W.Output()

    def redraw(*_):
        fig = draw(*(c.value for c in controls))
        with out:
            out.clear_output(wait=True)
            display(fig)

    for c in controls:
        c.observe(redraw, names="value")
    redraw()
    box = W.VBox([W.HBox(list(controls)), out])
    box.redraw = redraw
    return box


def draw_view(trace: MemoryTrace, segment: int = 0, head: int | None = None, slot: int = 0, batch: int = 0):
    """The explorer's figure for one (segment, head, slot) choice."""
    fig, axes = plots.new_figure(1, 2, figsize=(10, 3.4), width_ratios=[1.1, 1.6])
    plots.segment_panel(trace, segment, batch, head, ax=axes[0, 0], slot=slot, colorbar=True)
    who = "all heads" if head is None else f"head {head}"
    axes[0, 0].set_title(f"segment {segment}: read weight ({who})", fontsize=9)
    ax = axes[0, 1]
    x = np.arange(trace.num_segments)
    age = plots._np(trace.age[batch, :, slot])
    ax.plot(x, plots._np(trace.usage[batch, :, slot]), label="usage", color="C2")
    ax.plot(x, plots._np(trace.retention[batch, :, slot]), label="retention", color="C4")
    ax.bar(x, plots._np(trace.write_strength[batch, :, slot]), color="C0", alpha=0.4, label="write strength")
    ev = np.nonzero(plots._np(trace.write_events[batch, :, slot]) > 0)[0]
    ax.scatter(ev, np.zeros(len(ev)), marker="^", color="red", zorder=3, label="write event")
    ax.set_ylim(-0.05, 1.1)
    ax2 = ax.twinx()
    ax2.step(x, age, where="mid", color="k", lw=0.8, alpha=0.6, label="age")
    ax2.set_ylabel("age (segments)")
    ax.axvline(segment, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("segment")
    ax.set_title(f"slot {slot} over time", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    return fig


def explorer(trace: MemoryTrace, batch: int = 0, segment: int | None = None, head: int | None = None,
             slot: int | None = None) -> W.VBox:
    """A VBox: sliders for segment, head (or all heads) and slot above a redrawn figure.

    Starts on the middle segment and, unless `slot` is given, on the slot written most."""
    if not isinstance(trace, MemoryTrace):
        raise TypeError(f"trace must be a MemoryTrace, got {type(trace).__name__}")
    S, N = trace.num_segments, trace.num_slots
    H = trace.read_weight.shape[3]
    if segment is None:
        segment = S // 2
    if slot is None:  # start on the slot that was written most
        slot = int(trace.write_strength[batch].sum(0).argmax())
    seg_w = W.IntSlider(value=segment, min=0, max=S - 1, description="segment", continuous_update=False)
    head_w = W.Dropdown(options=[("all", -1)] + [(str(h), h) for h in range(H)], value=-1 if head is None else head,
                        description="head")
    slot_w = W.IntSlider(value=slot, min=0, max=N - 1, description="slot", continuous_update=False)
    return live_figure([seg_w, head_w, slot_w],
                       lambda seg, hd, sl: draw_view(trace, seg, None if hd < 0 else hd, sl, batch))


def stream_frame(result: dict, traces: dict, seed: int, segment: int, stream: str = "digits", model: str = "memnet"):
    """The continual explorer's figure (:func:`memnet.plots.stream_view`): the carried memory of
    ``model`` after item `segment` of a stored fill stream, and its accuracy on every task after the
    task that item belongs to, with the memory carried and reset per task."""
    from .continual import slot_owner_over_time
    from .experiments.continual import slot_events

    rec = traces[seed][model][stream]
    T = result["streams"][stream]["stream"]["n_tasks"]
    seg_task = rec["segment_task"]
    own = slot_owner_over_time(slot_events(rec), seg_task, T)
    stage = int(seg_task[segment])
    accuracy = {}
    for m in (model, f"{model}_reset"):
        R = [r for r in result["streams"][stream]["runs"]
             if r["model"] == m and r["seed"] == seed and r.get("selected", True)]
        if R:
            accuracy[plots.CONTINUAL_LABELS.get(m, m)] = np.array(R[0]["R"])[stage]
    title = (f"{plots.CONTINUAL_LABELS.get(model, model)}, seed {seed}: slots after item {segment + 1} of "
             f"{len(seg_task)} (task {stage + 1})")
    held = np.bincount(own[segment][own[segment] >= 0], minlength=T)  # (T,) items of each task in the memory
    return plots.stream_view(own, seg_task, accuracy, held, segment, T, title)


def continual_explorer(result: dict, traces: dict, stream: str = "digits") -> W.VBox:
    """Seed and model dropdowns and a slider over the support items streamed into a carried
    memory, above the redrawn :func:`stream_frame`, for a stored continual-learning run."""
    from .experiments.continual import MEMNETS

    if not traces:
        raise ValueError("traces must hold at least one seed's stored trace (trace_seed*.pt)")
    seeds = sorted(traces)
    models = [m for m in MEMNETS if stream in traces[seeds[0]].get(m, {})]
    if not models:
        raise ValueError(f"traces hold no MemNet fill record of stream {stream!r}")
    items = lambda sd, m: int(traces[sd][m][stream]["segment_task"].shape[0])  # items streamed into that memory
    seed_w = W.Dropdown(options=seeds, value=seeds[0], description="seed")
    model_w = W.Dropdown(options=models, value=models[-1], description="model")
    n = items(seeds[0], models[-1])
    seg_w = W.IntSlider(value=n - 1, min=0, max=n - 1, description="item", continuous_update=False)

    def fit_slider(_=None) -> None:  # the slider spans the items of the memory shown (runs before the redraw)
        last = items(seed_w.value, model_w.value) - 1
        seg_w.max, seg_w.value = last, min(seg_w.value, last)

    seed_w.observe(fit_slider, "value")
    model_w.observe(fit_slider, "value")
    return live_figure([seed_w, model_w, seg_w], lambda sd, m, seg: stream_frame(
        result, traces, sd, min(seg, items(sd, m) - 1), stream, m))
