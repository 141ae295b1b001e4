"""The chapters' explorers: ipywidgets controls above a figure redrawn on every change.

``explorer(trace)`` returns one over a :class:`~memnet.trace.MemoryTrace`: a segment slider, a
head selector, a slot selector and an Output area with the segment's read weights (token x slot)
next to the selected slot's age, usage, retention and write strength over all segments.

Every explorer is built by :func:`live_figure`, and its display carries two views of the same
figures: the live widget, which JupyterLab shows and redraws through the kernel, and a static
player (``text/html``) of precomputed views with plain HTML controls, which the rendered book shows
(its configuration ranks ``text/html`` above the widget view) and which works without a kernel.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
import uuid
from typing import Callable, Sequence

import ipywidgets as W
import numpy as np
from IPython.display import display

from . import plots
from .trace import MemoryTrace

MAX_FRAMES = 24  # views a static player precomputes, at most


def control_options(c: W.Widget) -> list[tuple[str, object]]:
    """(label, value) of every value control `c` can take: an integer slider's steps, or the
    options of a selection widget (Dropdown, SelectionSlider, ...)."""
    if isinstance(c, W.IntSlider):
        return [(str(v), v) for v in range(c.min, c.max + 1, c.step)]
    if hasattr(c, "_options_labels") and hasattr(c, "_options_values"):
        return list(zip(c._options_labels, c._options_values))
    raise TypeError(f"controls must be IntSliders or selection widgets, got {type(c).__name__}")


def _current(controls: Sequence[W.Widget], opts: list[list[tuple[str, object]]]) -> list[int]:
    """Each control's current value, as an index into its options."""
    return [next(i for i, (_, v) in enumerate(o) if v == c.value) for o, c in zip(opts, controls)]


def _spread(n_options: int, n: int, keep: int) -> list[int]:
    """`n` indices spread evenly over range(n_options), `keep` among them."""
    idx = sorted(set(np.round(np.linspace(0, n_options - 1, n)).astype(int).tolist()))
    if keep not in idx:
        idx[int(np.argmin([abs(i - keep) for i in idx]))] = keep
    return sorted(set(idx))


def static_views(controls: Sequence[W.Widget], vary: Sequence[int] | None = None,
                 max_frames: int = MAX_FRAMES) -> list[list[int]]:
    """For each control, the indices (into :func:`control_options`) a static player precomputes.

    The controls named by `vary` (all, in order, by default) take every option while the number of
    views stays within `max_frames`; the first of them that does not fit takes options spread
    evenly (the current one among them) and the rest keep their current value."""
    return _plan(controls, vary, max_frames)[2]


def _plan(controls: Sequence[W.Widget], vary: Sequence[int] | None,
          max_frames: int) -> tuple[list[list[tuple[str, object]]], list[int], list[list[int]]]:
    """(each control's options, the index of its current value, the indices :func:`static_views` chooses)."""
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 0:
        raise ValueError(f"max_frames must be an int >= 0, got {max_frames!r}")
    order = range(len(controls)) if vary is None else list(vary)
    if any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(controls) for k in order) \
            or len(set(order)) != len(order):
        raise ValueError(f"vary must name distinct controls by index in [0, {len(controls)}), got {vary!r}")
    opts = [control_options(c) for c in controls]
    current = _current(controls, opts)
    chosen = [[i] for i in current]
    views = 1
    for k in order:
        room = max_frames // views
        if room >= len(opts[k]):
            chosen[k] = list(range(len(opts[k])))
        elif room >= 2:
            chosen[k] = _spread(len(opts[k]), room, current[k])
        views *= len(chosen[k])
    return opts, current, chosen


def static_player(controls: Sequence[W.Widget], draw: Callable, vary: Sequence[int] | None = None,
                  max_frames: int = MAX_FRAMES, alt: str = "explorer view") -> str:
    """HTML of a player that works without a kernel: a plain control for each control that varies
    (a range slider or a select) above an image that switches among views drawn in advance by
    ``draw(*values)``; a line under it names the values held fixed. The images are PNGs inlined
    as data URIs; a short script swaps them."""
    opts, current, chosen = _plan(controls, vary, max_frames)
    pos = [idx.index(i) for idx, i in zip(chosen, current)]  # the first view: the current values
    frames = {}
    for combo in itertools.product(*chosen):
        fig = draw(*(opts[k][i][1] for k, i in enumerate(combo)))
        frames["|".join(map(str, combo))] = base64.b64encode(plots.figure_png(fig)).decode()
    uid = "memnet-player-" + uuid.uuid4().hex[:12]
    rows, fixed = [], []
    for k, (c, idx) in enumerate(zip(controls, chosen)):
        name = html.escape(c.description or f"control {k}")
        if len(idx) == 1:
            fixed.append(f"{name} {html.escape(opts[k][idx[0]][0])}")
            continue
        labels, start = [opts[k][i][0] for i in idx], pos[k]
        if isinstance(c, W.IntSlider) or type(c).__name__ == "SelectionSlider":
            rows.append(f'<label>{name} <input type="range" min="0" max="{len(idx) - 1}" step="1" value="{start}" '
                        f'data-k="{k}"> <output>{html.escape(labels[start])}</output></label>')
        else:
            items = "".join(f'<option value="{j}"{" selected" if j == start else ""}>{html.escape(lab)}</option>'
                            for j, lab in enumerate(labels))
            rows.append(f'<label>{name} <select data-k="{k}">{items}</select></label>')
    first = "|".join(str(idx[j]) for idx, j in zip(chosen, pos))
    shown = f"{len(frames)} views drawn in advance" + (f"; held at {', '.join(fixed)}" if fixed else "")
    data = json.dumps({"chosen": chosen, "labels": [[opts[k][i][0] for i in idx] for k, idx in enumerate(chosen)],
                       "frames": frames}).replace("</", "<\\/")  # no "</script>" inside the script element
    return f"""<div class="memnet-player" id="{uid}">
<div class="memnet-player-controls" style="display:flex;flex-wrap:wrap;gap:0.4em 1.5em;font-size:0.9em">{"".join(rows)}</div>
<img src="data:image/png;base64,{frames[first]}" alt="{html.escape(alt)}" style="max-width:100%">
<p class="memnet-player-note" style="font-size:0.85em;color:#555">{html.escape(shown)}. In JupyterLab every control redraws the figure live.</p>
<script type="application/json">{data}</script>
<script>
(function () {{
  var root = document.getElementById("{uid}");
  var spec = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
  var img = root.querySelector("img");
  var pos = {json.dumps(pos)};
  root.querySelectorAll("[data-k]").forEach(function (el) {{
    el.addEventListener("input", function () {{
      var k = +el.dataset.k;
      pos[k] = +el.value;
      var out = el.parentNode.querySelector("output");
      if (out) out.textContent = spec.labels[k][pos[k]];
      img.src = "data:image/png;base64," + spec.frames[pos.map(function (j, i) {{ return spec.chosen[i][j]; }}).join("|")];
    }});
  }});
}})();
</script>
</div>"""


class LiveFigure(W.VBox):
    """What :func:`live_figure` returns: the controls above the redrawn Output. Displayed, it offers
    the live widget and, as ``text/html``, its :func:`static_player`."""

    def __init__(self, controls: list, out: W.Output, redraw: Callable, draw: Callable,
                 vary: Sequence[int] | None, max_frames: int):
        super().__init__([W.HBox(list(controls)), out])
        self.controls, self.redraw = controls, redraw
        self._draw, self._vary, self._max_frames = draw, vary, max_frames

    def static_html(self) -> str:
        """The static player of this explorer's figures (drawn now)."""
        return static_player(self.controls, self._draw, self._vary, self._max_frames)

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if self._max_frames > 0:
            bundle["text/html"] = self.static_html()
        return bundle


def live_figure(controls: list, draw: Callable, vary: Sequence[int] | None = None,
                max_frames: int = MAX_FRAMES) -> LiveFigure:
    """A VBox of `controls` (a row of ipywidgets) above an Output that shows ``draw(*values)``,
    the controls' current values in order, redrawn whenever one of them changes. The box's
    ``redraw()`` redraws by hand (for tests and callers that set a control programmatically).

    Its display also carries a player that needs no kernel (:func:`static_player`), of up to
    `max_frames` views over the controls `vary` (all by default; ``max_frames=0``: none)."""
    static_views(controls, vary, max_frames)  # checks vary and max_frames before anything is drawn
    out = W.Output()

    def redraw(*_):
        fig = draw(*(c.value for c in controls))
        with out:
            out.clear_output(wait=True)
            display(fig)

    for c in controls:
        c.observe(redraw, names="value")
    redraw()
    return LiveFigure(controls, out, redraw, draw, vary, max_frames)


def draw_view(trace: MemoryTrace, segment: int = 0, head: int | None = None, slot: int = 0, batch: int = 0):
    """The explorer's figure for one (segment, head, slot) choice."""
    fig, axes = plots.new_figure(2, 1, figsize=(plots.COLUMN_WIDTH, 5.4), height_ratios=[1, 0.9])
    top, bottom = axes[:, 0]  # the segment on top, the slot's history below it
    plots.segment_panel(trace, segment, batch, head, ax=top, slot=slot)
    # the colour bar right at the panel's edge, in the margin the lower panel's age axis needs anyway
    bar = fig.colorbar(top.get_images()[0], cax=top.inset_axes([1.015, 0.05, 0.02, 0.9]))
    bar.ax.tick_params(labelsize=plots.TICK_SIZE)
    who = "all heads" if head is None else f"head {head}"
    top.set_title(f"segment {segment}: read weight ({who})", fontsize=plots.TITLE_SIZE)
    ax = bottom
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
    ax.set_title(f"slot {slot} over time", fontsize=plots.TITLE_SIZE)
    ax2.tick_params(labelsize=plots.TICK_SIZE)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    plots.legend_outside(ax, "below", ncols=5, handles=h1 + h2, labels=l1 + l2)
    return fig


def explorer(trace: MemoryTrace, batch: int = 0, segment: int | None = None, head: int | None = None,
             slot: int | None = None) -> LiveFigure:
    """A VBox: sliders for segment, head (or all heads) and slot above a redrawn figure.

    Starts on the middle segment and, unless `slot` is given, on the slot written most. Its static
    player moves over the segments (up to :data:`MAX_FRAMES` of them) at the head and slot shown."""
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
                       lambda seg, hd, sl: draw_view(trace, seg, None if hd < 0 else hd, sl, batch), vary=(0,))


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


def continual_explorer(result: dict, traces: dict, stream: str = "digits") -> LiveFigure:
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
        result, traces, sd, min(seg, items(sd, m) - 1), stream, m), vary=(2,))  # static: items of the model shown
