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
