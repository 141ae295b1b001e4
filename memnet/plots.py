"""Matplotlib figures of slot dynamics, drawn from a :class:`~memnet.trace.MemoryTrace`
(never from a model's private attributes) and from stored experiment results.

Every function returns a ``matplotlib.figure.Figure`` (or draws into the ``ax`` it is
given and returns it). Figures are built with ``Figure()`` rather than ``pyplot`` so a
notebook cell shows each exactly once (end the cell with ``fig``) and nothing piles up
in pyplot's global state. Heatmaps put slots on the y axis and time on the x axis.
Shapes: B batch, S segments, L segment_len, H mem_heads, N num_slots.
"""
from __future__ import annotations

import io
import math
import os
import textwrap
from typing import Sequence

import matplotlib
import matplotlib.ticker
import matplotlib.pyplot as plt  # noqa: F401  (registers the notebook's inline PNG formatter)
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from .trace import MemoryTrace

COLUMN_WIDTH = 6.8  # inches: the book's text column (about 680 CSS pixels); no figure is wider
DPI = 150  # pixels per inch of every PNG: a column-wide figure is 1,020 pixels, sharp at the page's scale
TICK_SIZE = 8.5  # points, tick labels (colour bars included)
LEGEND_SIZE = 8  # points, legend entries
TITLE_SIZE = 9.5  # points, panel titles
PAD = 0.05  # inches of margin around a saved figure's tight box


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """PNG bytes of a figure (tight bounding box plus :data:`PAD`), at `dpi` pixels per inch (written
    into the PNG). With the environment variable ``MEMNET_CHECK_FIGURES=1`` (the chapter tests set
    it) a figure with :func:`layout_problems` is refused with a ValueError that lists them."""
    if os.environ.get("MEMNET_CHECK_FIGURES") == "1":
        problems = layout_problems(fig)
        if problems:
            raise ValueError("figure layout: " + "; ".join(problems))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=PAD)
    return buf.getvalue()


def register_notebook_formatter() -> bool:
    """Make IPython display a Figure as PNG whatever the matplotlib backend (so a cell ending in
    ``fig``, or ``display(fig)`` in a widget, shows the image). Returns whether a shell was found."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None:
        return False
    ip.display_formatter.formatters["image/png"].for_type(Figure, figure_png)
    return True


register_notebook_formatter()

MODEL_LABELS = {"memnet": "MemNet", "windowed": "WindowedTransformer", "lstm": "LSTM", "full": "FullTransformer",
                "dnc": "DNC", "rmt": "RMT", "titans": "Titans (MAC)"}
MODEL_COLORS = {"memnet": "C0", "windowed": "C1", "lstm": "C2", "full": "C7", "dnc": "C3", "rmt": "C4", "titans": "C5"}


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kw) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure, at most :data:`COLUMN_WIDTH` wide, and a 2-D array of its axes
    (pyplot-free; tick labels at :data:`TICK_SIZE`). Panels that do not fit side by side go in rows."""
    figsize = figsize or (COLUMN_WIDTH if ncols > 1 else 4.8, 2.8 * nrows)
    w, h = float(figsize[0]), float(figsize[1])
    if not (0 < w <= COLUMN_WIDTH + 1e-9) or not h > 0:
        raise ValueError(f"figsize must be (width, height) in inches with 0 < width <= {COLUMN_WIDTH} (the book's "
                         f"column) and height > 0, got {tuple(figsize)}; put panels in rows instead")
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    for ax in axes.flat:
        ax.tick_params(labelsize=TICK_SIZE)
    return fig, axes


def label_outer(axes: np.ndarray, n: int | None = None) -> None:
    """In a grid of panels of which the first `n` (all by default) are used, keep each axis label
    once: the x label under the lowest used panel of each column, the y label on the first column."""
    nrows, ncols = axes.shape
    n = nrows * ncols if n is None else n
    for k, ax in enumerate(axes.flat[:n]):
        if k + ncols < n:
            ax.set_xlabel("")
        if k % ncols:
            ax.set_ylabel("")


def legend_outside(ax: Axes, where: str = "right", ncols: int | None = None, **kw):
    """A legend of `ax`'s labelled artists outside every panel: ``"right"`` of `ax` (one column by
    default), or ``"below"`` the whole figure (``fig.legend``, so use it once per figure; four columns
    by default). Constrained layout makes room for it."""
    if ncols is None:
        ncols = 1 if where == "right" else 4
    if where == "right":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=LEGEND_SIZE,
                         ncols=ncols, **kw)
    if where == "below":
        if "handles" not in kw:
            kw["handles"], kw["labels"] = ax.get_legend_handles_labels()
        return ax.figure.legend(loc="outside lower center", fontsize=LEGEND_SIZE, ncols=ncols, **kw)
    raise ValueError(f"where must be 'right' or 'below', got {where!r}")


def layout_problems(fig: Figure) -> list[str]:
    """What keeps `fig` from reading well in the book's column: wider than :data:`COLUMN_WIDTH`, or a
    legend drawn over the data area of a panel (colour bars aside). Empty when there is none."""
    problems = []
    if fig.get_figwidth() > COLUMN_WIDTH + 1e-9:
        problems.append(f"{fig.get_figwidth():.2f} in wide, the column is {COLUMN_WIDTH}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    spill = fig.get_tightbbox(renderer)  # inches
    if spill.x0 < -0.02 or spill.x1 > fig.get_figwidth() + 0.02:
        problems.append(f"text or artists spill {max(-spill.x0, spill.x1 - fig.get_figwidth()):.2f} in outside the "
                        "figure's width")
    panels = [(i, ax) for i, ax in enumerate(fig.axes) if ax.get_visible() and ax.get_label() != "<colorbar>"]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for i, ax in panels:
            inner = ax.get_window_extent(renderer)
            overlap = Bbox.intersection(box, inner)
            if overlap is not None and overlap.width > 1 and overlap.height > 1:
                problems.append(f"legend ({', '.join(t.get_text() for t in leg.get_texts()[:3])}...) over the panel "
                                f"{ax.get_title() or i!r}")
    return problems


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def heatmap(matrix, ax: Axes | None = None, title: str = "", xlabel: str = "", ylabel: str = "",
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None, colorbar: bool = True,
            events=None) -> Axes:
    """Draw a 2-D array (rows on y, columns on x) as an image; mark `events` (same shape, bool) with dots."""
    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    m = _np(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap expects a 2-D matrix, got shape {m.shape}")
    im = ax.imshow(m, aspect="auto", origin="lower", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
    if events is not None:
        r, c = np.nonzero(_np(events) > 0)
        ax.scatter(c, r, s=9, marker="o", facecolors="none", edgecolors="red", linewidths=0.8)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.85, pad=0.02).ax.tick_params(labelsize=TICK_SIZE)
    return ax


# ---------------------------------------------------------------------------- trace views
def read_matrix(trace: MemoryTrace, batch: int = 0, head: int | None = None, per: str = "token") -> np.ndarray:
    """(N, T) read weight per slot over time: per token (T = S*L real tokens) or per segment (T = S).

    head=None sums the heads' weights (each head's weights sum to 1, so a column sums to H).
    """
    dense = trace.read_weights_dense()[batch]  # (S, L, H, N)
    dense = dense.sum(2) if head is None else dense[:, :, head]  # (S, L, N)
    if per == "segment":
        n = trace.valid[batch].sum(-1).clamp(min=1)[:, None]  # (S, 1)
        return _np(dense.sum(1) / n).T  # (N, S)
    if per != "token":
        raise ValueError(f"per must be 'token' or 'segment', got {per!r}")
    valid = trace.valid[batch].reshape(-1)  # (S*L,)
    return _np(dense.reshape(-1, dense.shape[-1])[valid]).T  # (N, T)


def read_heatmap(trace: MemoryTrace, batch: int = 0, head: int | None = None, per: str = "token",
                 ax: Axes | None = None, title: str | None = None) -> Figure:
    """Read weight, slot x time (tokens; dotted lines at window borders)."""
    if ax is None:
        fig, axes = new_figure(figsize=(COLUMN_WIDTH, 2.8))
        ax = axes[0, 0]
    m = read_matrix(trace, batch, head, per)
    who = "all heads" if head is None else f"head {head}"
    heatmap(m, ax, title or f"read weight ({who})", "token" if per == "token" else "segment", "slot", cmap="magma")
    if per == "token":
        L = trace.valid.shape[-1]
        for s in range(1, trace.num_segments):
            ax.axvline(s * L - 0.5, color="white", lw=0.5, ls=":")
    return ax.figure


def write_heatmap(trace: MemoryTrace, batch: int = 0, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Gated write strength received by each slot per segment; red circles: write events (age reset)."""
    if ax is None:
        fig, axes = new_figure(figsize=(4.8, 2.8))
        ax = axes[0, 0]
    heatmap(_np(trace.write_strength[batch]).T, ax, title or "write strength (o = write event)", "segment", "slot",
            cmap="Blues", vmin=0.0, events=_np(trace.write_events[batch]).T)
    return ax.figure


def state_heatmaps(trace: MemoryTrace, batch: int = 0, fields: Sequence[str] = ("age", "usage", "retention")) -> Figure:
    """One slot x segment heatmap per buffer (age, usage, retention gate), stacked over a shared
    segment axis."""
    fig, axes = new_figure(len(fields), 1, figsize=(COLUMN_WIDTH, 1.9 * len(fields) + 0.3), sharex=True)
    cmaps = {"age": "cividis", "usage": "Greens", "retention": "Purples"}
    for i, (ax, f) in enumerate(zip(axes[:, 0], fields)):
        heatmap(_np(getattr(trace, f)[batch]).T, ax, f, "segment" if i == len(fields) - 1 else "", "slot",
                cmap=cmaps.get(f, "viridis"))
    return fig


def trace_overview(trace: MemoryTrace, batch: int = 0, title: str = "") -> Figure:
    """Reads (slot x token) across the top; writes, age and usage (slot x segment) in a row below."""
    fig = Figure(figsize=(COLUMN_WIDTH, 5.0), layout="constrained")
    axes = fig.subplot_mosaic([["read", "read", "read"], ["write", "age", "usage"]], height_ratios=[1.15, 1])
    for ax in axes.values():
        ax.tick_params(labelsize=TICK_SIZE)
    read_heatmap(trace, batch, ax=axes["read"])
    write_heatmap(trace, batch, ax=axes["write"], title="write strength\n(o = write event)")
    heatmap(_np(trace.age[batch]).T, axes["age"], "age", "segment", "", cmap="cividis")
    heatmap(_np(trace.usage[batch]).T, axes["usage"], "usage", "segment", "", cmap="Greens", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def segment_panel(trace: MemoryTrace, segment: int, batch: int = 0, head: int | None = None, ax: Axes | None = None,
                  slot: int | None = None, colorbar: bool = False, vmax: float | None = None) -> Axes:
    """One segment: read weight of each token (x) on each slot (y), write events as red circles
    in a column right of the tokens; an optional highlighted `slot`."""
    if ax is None:
        _, axes = new_figure(figsize=(3, 3))
        ax = axes[0, 0]
    dense = trace.read_weights_dense()[batch, segment]  # (L, H, N)
    m = dense.sum(1) if head is None else dense[:, head]  # (L, N)
    L = m.shape[0]
    heatmap(_np(m).T, ax, f"segment {segment}", "token in window", "slot", cmap="magma", vmin=0.0, vmax=vmax,
            colorbar=colorbar)
    ev = np.nonzero(_np(trace.write_events[batch, segment]) > 0)[0]
    ax.scatter(np.full(len(ev), L - 0.5 + 0.8), ev, s=10, c="red", marker="<", clip_on=False)
    if slot is not None:
        ax.axhline(slot, color="cyan", lw=0.8, alpha=0.8)
    ax.set_xlim(-0.5, L + 0.5)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= L - 1])  # no tick over the write-event column
    return ax


def small_multiples(trace: MemoryTrace, batch: int = 0, head: int | None = None, segments: Sequence[int] | None = None,
                    ncols: int = 4, max_panels: int = 8) -> Figure:
    """The explorer's view for a page without a kernel: one panel per segment (evenly spaced)."""
    S = trace.num_segments
    if segments is None:
        n = min(S, max_panels)
        segments = sorted(set(np.linspace(0, S - 1, n).round().astype(int).tolist()))
    segments = list(segments)
    nrows = math.ceil(len(segments) / max(1, min(ncols, len(segments))))
    ncols = math.ceil(len(segments) / nrows)  # rows as even as the panels allow
    fig, axes = new_figure(nrows, ncols, figsize=(COLUMN_WIDTH if ncols > 2 else 2.4 * ncols + 0.4, 2.0 * nrows + 0.5),
                           sharey=True)
    dense = trace.read_weights_dense()[batch]
    vmax = float((dense.sum(2) if head is None else dense[:, :, head]).max()) or 1.0
    for i, ax in enumerate(axes.flat):
        if i >= len(segments):
            ax.set_axis_off()
            continue
        segment_panel(trace, segments[i], batch, head, ax=ax, vmax=vmax)
    label_outer(axes, len(segments))
    who = "all heads" if head is None else f"head {head}"
    fig.suptitle(f"read weight per token and slot over time ({who});\nred arrows: write events", fontsize=10)
    return fig


# ---------------------------------------------------------------------------- experiment results
def accuracy_curves(curves: dict, ax: Axes | None = None, xlabel: str = "", title: str = "",
                    chance: float | None = None, logx: bool = True, mark_x: float | None = None,
                    mark_label: str = "", legend: str | None = "right") -> Figure:
    """One line per model: ``curves[model] = {"x", "mean", "ci"}`` (accuracies in [0, 1], ci the
    half-width of the interval, nan for one seed), drawn in % with error bars; a dotted chance line,
    and a vertical mark at `mark_x` (e.g. the longest training distance). `legend`: where
    (:func:`legend_outside`), or None for none."""
    if ax is None:
        fig, axes = new_figure(figsize=(COLUMN_WIDTH, 3.6))
        ax = axes[0, 0]
    markers = "osD^vP*X"
    for i, (name, c) in enumerate(curves.items()):
        x, m, e = np.asarray(c["x"], float), 100 * np.asarray(c["mean"], float), 100 * np.asarray(c["ci"], float)
        ax.errorbar(x, m, yerr=np.where(np.isfinite(e), e, 0.0), marker=markers[i % len(markers)], ms=5, capsize=3,
                    lw=2.2 if name == "memnet" else 1.3, label=MODEL_LABELS.get(name, name),
                    color=MODEL_COLORS.get(name), ls="--" if name == "full" else "-", zorder=3 if name == "memnet" else 2)
    if chance is not None:
        ax.axhline(100 * chance, color="gray", ls=":", lw=1, label="chance")
    if mark_x is not None:
        ax.axvline(mark_x, color="k", lw=0.8, alpha=0.4)
        ax.text(mark_x, 104, f"{mark_label} ", fontsize=8, va="bottom", ha="right", alpha=0.8)
    if logx:
        ax.set_xscale("symlog", linthresh=1.0, base=2) if any(min(c["x"]) <= 0 for c in curves.values()) \
            else ax.set_xscale("log", base=2)
        xs = sorted({float(v) for c in curves.values() for v in c["x"]})
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    ax.set_ylim(-3, 112)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=TITLE_SIZE)
    if legend:
        legend_outside(ax, legend)
    return ax.figure


def training_curves(curves: dict, ax: Axes | None = None, title: str = "", plateau: float | None = None,
                    budget: int | None = None) -> Figure:
    """One line per model: ``curves[model] = {"x": steps, "y": training loss over the loss of
    guessing}`` (1 on the plateau); a dotted line at 1, a dashed one at `plateau` (where a model
    counts as having left it) and a vertical mark at the shared step `budget`."""
    if ax is None:
        fig, axes = new_figure(figsize=(COLUMN_WIDTH, 3.6))
        ax = axes[0, 0]
    styles = ("-", "--", "-.", ":")
    for i, (name, c) in enumerate(curves.items()):
        ax.plot(c["x"], c["y"], lw=2.2 if name == "memnet" else 1.4, ls=styles[(i // 4) % len(styles)],
                color=MODEL_COLORS.get(name), label=MODEL_LABELS.get(name, name), zorder=3 if name == "memnet" else 2)
    ax.axhline(1.0, color="gray", ls=":", lw=1, label="guessing")
    if plateau is not None:
        ax.axhline(plateau, color="gray", ls="--", lw=0.8, alpha=0.7, label="left the plateau")
    if budget is not None:
        ax.axvline(budget, color="k", lw=0.8, alpha=0.4)
        ax.text(budget, 1.12, " shared budget", fontsize=8, va="top", ha="left", alpha=0.8)
    ax.set_ylim(-0.03, 1.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss / loss of guessing")
    ax.set_title(title, fontsize=TITLE_SIZE)
    legend_outside(ax, "right")
    return ax.figure


# ---------------------------------------------------------------------------- where stored items live
def item_occupancy_heatmap(occ: dict, L: int, ax: Axes | None = None, title: str | None = None,
                           colorbar: bool | Sequence[Axes] = True) -> Figure:
    """Which slot holds which stored item over time (color = item, brightness = retained signal);
    a star marks each item's query segment, on the slot its query read most. With more than ten
    items a colour bar names them by order: beside `ax`, beside the panels `colorbar` lists (one bar
    for a grid of them), or none (False)."""
    if ax is None:
        fig, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    owner, signal = occ["owner"], occ["signal"]
    n_items = max(len(occ["slots"]), 1)
    many = n_items > 10  # then a continuous colour scale by item order, with a colour bar, instead of a legend
    scale = matplotlib.colormaps["turbo"]
    color_of = (lambda i: scale(i / max(n_items - 1, 1))) if many else (lambda i: matplotlib.colormaps["tab10"](i % 10))
    rgb = np.ones(owner.shape + (3,))
    for i in range(n_items):
        mask = owner == i
        color = np.array(color_of(i)[:3])
        rgb[mask] = 1 - signal[mask, None] * (1 - color)
    ax.imshow(rgb, aspect="auto", origin="lower", interpolation="nearest")
    for i, q in enumerate(occ["query_pos"]):
        if i < len(occ["query_read"]):
            qs = q // L
            best = int(np.argmax(occ["query_read"][i]))
            ax.scatter([qs], [best], marker="*", s=70 if many else 90, color=color_of(i), edgecolors="k",
                       linewidths=0.6, zorder=3)
    if many and colorbar is not False:  # many items and no bar (False): a panel of a grid that has one
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        beside = ax if colorbar is True else list(colorbar)
        bar = ax.figure.colorbar(ScalarMappable(Normalize(0, n_items - 1), scale), ax=beside, pad=0.01,
                                 fraction=0.04 if colorbar is True else 0.03)
        bar.set_label("item (order of its query)", fontsize=8)
        bar.ax.tick_params(labelsize=TICK_SIZE)
    elif not many:
        from matplotlib.patches import Patch

        handles = [Patch(color=color_of(i), label=f"pair {i}") for i in range(len(occ["slots"]))]
        if handles:
            legend_outside(ax, "right", handles=handles)
    ax.set_xlabel("segment")
    ax.set_ylabel("slot")
    ax.set_title(title or "stored items in slots (star: where the query read)", fontsize=TITLE_SIZE)
    return ax.figure


# ---------------------------------------------------------------------------- forgetting (chapter 5)
TYPE_STYLES = {"useful": "-", "distractor": "--", "once": ":"}  # line style per item type; colour per configuration
TYPE_COLORS = {"useful": "C2", "distractor": "C3", "once": "C1"}


def _type_lines(ax: Axes, x: np.ndarray, series: dict, marker: str = "") -> None:
    """series: {configuration label: {item type: y values at x}}; colour per configuration, style per type;
    steps without a marker, points joined with one."""
    for i, (name, by_type) in enumerate(series.items()):
        for t, y in by_type.items():
            ax.plot(x, np.asarray(y, dtype=float), ls=TYPE_STYLES.get(t, "-"), color=f"C{i}", marker=marker,
                    drawstyle="steps-post" if not marker else "default", label=f"{name}: {t}")


def _share_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> Figure:
    """Labels, a [0, 1] y axis with a margin, the title and the legend of a plot of shares; its figure."""
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=TITLE_SIZE)
    legend_outside(ax, "right")
    return ax.figure


def survival_by_type(curves: dict, ax: Axes | None = None, title: str = "") -> Figure:
    """Kaplan-Meier survival on whole windows, one colour per configuration and one line style per item
    type. curves: {configuration label: {item type: S(t) at t = 0, 1, ..., horizon}}."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    h = max(len(y) for c in curves.values() for y in c.values()) - 1
    _type_lines(ax, np.arange(h + 1), curves)
    ax.set_xlim(0, h)
    return _share_axes(ax, "windows since the write", "S(t): share of items still held", title)


def hazard_by_age(hazards: dict, ax: Axes | None = None, title: str = "", min_at_risk: int = 20) -> Figure:
    """Discrete hazard by age, one colour per configuration and one line style per item type; ages with
    fewer than `min_at_risk` items still held are not drawn. hazards: {label: {item type: (hazard, held)}}
    with both arrays at ages 1..horizon."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    series = {}
    for name, by_type in hazards.items():
        series[name] = {t: np.where(np.asarray(n) >= min_at_risk, np.asarray(hz, dtype=float), np.nan)
                        for t, (hz, n) in by_type.items()}
    h = max(len(y) for c in series.values() for y in c.values())
    _type_lines(ax, np.arange(1, h + 1), series, marker="o")
    return _share_axes(ax, "age (windows since the write)", "hazard: share of held items let go", title)


def probe_by_age(acc: dict, chance: float, ax: Axes | None = None, title: str = "") -> Figure:
    """Accuracy of probes by age, one colour per configuration and one line style per item type.
    acc: {label: {item type: {age: (probes, correct)}}}; ages without probes are left out."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    for i, (name, by_type) in enumerate(acc.items()):
        for t, cells in by_type.items():
            ages = sorted(a for a, (n, _) in cells.items() if n > 0)
            ax.plot(ages, [cells[a][1] / cells[a][0] for a in ages], ls=TYPE_STYLES.get(t, "-"), color=f"C{i}",
                    marker="o", label=f"{name}: {t}")
    ax.axhline(chance, color="k", lw=0.7, ls=":", label="chance")
    return _share_axes(ax, "age of the item asked for (windows)", "probe accuracy", title)


def occupancy_map(owner, type_names: Sequence[str], ax: Axes | None = None, title: str = "") -> Figure:
    """Slot x window map of what each slot holds at the end of each window, coloured by item type
    (white: empty). owner: (N, S) int type codes, -1 where empty (:func:`memnet.lifetimes.occupancy`)."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 2.8))
        ax = axes[0, 0]
    own = np.asarray(_np(owner), dtype=np.int64)
    rgb = np.ones(own.shape + (3,))
    for c, t in enumerate(type_names):
        rgb[own == c] = matplotlib.colors.to_rgb(TYPE_COLORS.get(t, "C7"))
    ax.imshow(rgb, aspect="auto", origin="lower", interpolation="nearest")
    from matplotlib.patches import Patch

    present = [t for c, t in enumerate(type_names) if (own == c).any()]
    legend_outside(ax, "right", handles=[Patch(color=TYPE_COLORS.get(t, "C7"), label=t) for t in present])
    ax.set_xlabel("window")
    ax.set_ylabel("slot")
    ax.set_title(title, fontsize=TITLE_SIZE)
    return ax.figure


def seeds_and_references(values: dict, references: dict, ax: Axes | None = None, title: str = "",
                         ylabel: str = "") -> Figure:
    """One column per configuration: its per-seed values as dots and their mean as a bar; horizontal
    reference lines (a distinct style each) across all columns. values: {label: [per seed]};
    references: {label: value}."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    for i, (name, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float)
        ax.scatter(np.full(len(v), i), v, color=f"C{i}", s=18, zorder=3)
        ax.hlines(v.mean(), i - 0.3, i + 0.3, color=f"C{i}")
    for (name, y), ls in zip(references.items(), (":", "--", "-.", (0, (1, 4)))):
        ax.axhline(y, color="k", lw=0.8, ls=ls, label=name)
    ax.set_xticks(np.arange(len(values)), [textwrap.fill(str(v), 12) for v in values], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=TITLE_SIZE)
    if references:
        legend_outside(ax, "right")
    return ax.figure


def probe_held_vs_gone(acc: dict, chance: float, ax: Axes | None = None, title: str = "") -> Figure:
    """Probe accuracy per item type, one bar per configuration and state of the item (solid: still held,
    hatched: already replaced). acc: {label: {"held" | "gone": {item type: (probes, correct)}}}; a bar
    without probes is left out."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    types = list(dict.fromkeys(t for by_part in acc.values() for cells in by_part.values() for t in cells))
    n_bars = sum(len(by_part) for by_part in acc.values())
    width, k = 0.8 / max(n_bars, 1), 0
    for i, (name, by_part) in enumerate(acc.items()):
        for part, cells in by_part.items():
            x = [j for j, t in enumerate(types) if cells.get(t, (0, 0))[0] > 0]
            y = [cells[types[j]][1] / cells[types[j]][0] for j in x]
            ax.bar(np.asarray(x) + (k - (n_bars - 1) / 2) * width, y, width, color=f"C{i}",
                   alpha=1.0 if part == "held" else 0.45, hatch="" if part == "held" else "//",
                   label=f"{name}: item {part}")
            k += 1
    ax.axhline(chance, color="k", lw=0.7, ls=":", label="chance")
    ax.set_xticks(np.arange(len(types)), types)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probe accuracy")
    ax.set_title(title, fontsize=TITLE_SIZE)
    legend_outside(ax, "right")
    return ax.figure


# ---------------------------------------------------------------------------- continual learning (chapter 4)
CONTINUAL_LABELS = {"memnet": "MemNet (carried memory)", "memnet_reset": "MemNet, memory reset per task",
                    "memnet_rewrite": "MemNet, memory rewritten (diagnostic)",
                    "memnet_unaligned": "MemNet, carried, no realignment", "memnet_frozen": "MemNet, frozen after task 1",
                    "windowed": "WindowedTransformer, fine-tuned", "lstm": "LSTM, fine-tuned", "memnet_joint": "MemNet, joint",
                    "windowed_joint": "WindowedTransformer, joint", "lstm_joint": "LSTM, joint",
                    "memnet_fixed": "MemNet, fixed addresses", "memnet_fixed_reset": "MemNet, fixed addresses, reset",
                    "memnet_fixed_joint": "MemNet, fixed addresses, joint",
                    "memnet_replay": "MemNet, replay and re-keying", "er_windowed": "WindowedTransformer + ER",
                    "er_lstm": "LSTM + ER", "knn": "kNN vote (no network)", "ncm": "nearest class mean (no network)"}


def continual_matrices(result: dict, stream: str, model: str) -> np.ndarray:
    """(seeds, T, T) accuracy matrices of `model` on `stream` in a continual result."""
    rs = [r for r in result["streams"][stream]["runs"] if r["model"] == model and "R" in r and r.get("selected", True)]
    if not rs:
        raise ValueError(f"model {model!r} has no accuracy matrix on stream {stream!r}")
    return np.array([r["R"] for r in rs], dtype=float)


def accuracy_matrix_heatmap(R, ax: Axes | None = None, title: str = "", annotate: bool = True) -> Axes:
    """R[i, j] (accuracy on task j after training on task i) as a heatmap, tasks numbered from 1; a
    long title wraps to the panel."""
    R = _np(R)
    ax = heatmap(R, ax=ax, title=textwrap.fill(title, 28), xlabel="evaluated on task j", ylabel="after training on task i",
                 cmap="magma", vmin=0.0, vmax=1.0, colorbar=False)
    ax.invert_yaxis()
    T = R.shape[0]
    ax.set_xticks(range(T), [str(t + 1) for t in range(T)])
    ax.set_yticks(range(T), [str(t + 1) for t in range(T)])
    if annotate:
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if R[i, j] < 0.6 else "black")
    return ax


def forgetting_curves(result: dict, stream: str, models: Sequence[str], joint: dict[str, str] | None = None,
                      ncols: int | None = None) -> Figure:
    """One panel per model (``ncols`` per row, default as many as fit the column, at most 3): accuracy on each task j along
    the stream (R[i, j] for i >= j, mean over seeds, min-max shaded); dashed: that model's
    joint-training accuracy on the task, when given."""
    T = result["streams"][stream]["stream"]["n_tasks"]
    ncols = min(3, len(models)) if ncols is None else max(1, min(int(ncols), len(models)))
    nrows = -(-len(models) // ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(COLUMN_WIDTH, 2.3 * nrows + 0.5), sharey=True)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    runs = result["streams"][stream]["runs"]
    for ax, m in zip(axes.flat, models):
        Rs = continual_matrices(result, stream, m)
        for j in range(T):
            x = np.arange(j, T)
            v = Rs[:, j:, j]  # (seeds, T - j)
            ax.plot(x + 1, v.mean(0), marker="o", ms=3, color=f"C{j}", label=f"task {j + 1}")
            if len(Rs) > 1:
                ax.fill_between(x + 1, v.min(0), v.max(0), color=f"C{j}", alpha=0.12, lw=0)
            jm = (joint or {}).get(m)
            if jm:
                fin = [r["final"][j] for r in runs if r["model"] == jm and r.get("selected", True)]
                if fin:
                    ax.axhline(np.mean(fin), color=f"C{j}", ls=":", lw=0.8)
        ax.set_title(textwrap.fill(CONTINUAL_LABELS.get(m, m), 26), fontsize=TITLE_SIZE)
        ax.set_xlabel("after training on task")
        ax.set_ylabel("test accuracy")
        ax.set_xticks(range(1, T + 1))
        ax.set_ylim(-0.03, 1.03)
    label_outer(axes, len(models))
    legend_outside(axes[0, 0], "below", ncols=min(T, 6))
    return fig


def memory_budget_curve(points: Sequence[dict], models: Sequence[str] | None = None, ax: Axes | None = None) -> Axes:
    """Final average accuracy against the bytes a model stores (log scale), one line per model:
    ``points`` as :func:`memnet.experiments.continual.budget_points` gives them (model, seed,
    per_class, memory_bytes, acc); mean over seeds at each budget, min-max as error bars, each
    point labelled with its items per class."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.4))
        ax = axes[0, 0]
    models = list(dict.fromkeys(p["model"] for p in points)) if models is None else list(models)
    for i, m in enumerate(models):
        mine = [p for p in points if p["model"] == m]
        budgets = sorted({p["per_class"] for p in mine})
        if not budgets:
            continue
        x = [np.mean([p["memory_bytes"] for p in mine if p["per_class"] == b]) for b in budgets]
        v = [100 * np.array([p["acc"] for p in mine if p["per_class"] == b]) for b in budgets]
        y = np.array([a.mean() for a in v])
        err = np.array([[a.mean() - a.min() for a in v], [a.max() - a.mean() for a in v]])
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, color=f"C{i}", label=CONTINUAL_LABELS.get(m, m))
        for xb, yb, b in zip(x, y, budgets):
            ax.annotate(str(b), (xb, yb), textcoords="offset points", xytext=(4, -10), fontsize=8, color=f"C{i}")
    ax.set_xscale("log")
    ax.margins(x=0.08)  # room for the labels of the last points
    ax.set_xlabel("bytes stored (log scale; labels: items per class)")
    ax.set_ylabel("final average accuracy (%)")
    legend_outside(ax, "right")
    return ax


def key_drift_curve(result: dict, stream: str, models: Sequence[str], ax: Axes | None = None) -> Axes:
    """Per task t >= 2, the cosine between the keys of earlier items before and after training on
    task t (``task_drift`` of each run; 1: the keys did not move), mean over seeds, min-max shaded."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    for i, m in enumerate(models):
        rs = [r["task_drift"] for r in result["streams"][stream]["runs"]
              if r["model"] == m and r.get("selected", True) and "task_drift" in r]
        if not rs:
            raise ValueError(f"model {m!r} has no task_drift on stream {stream!r}")
        v = np.array(rs, dtype=float)[:, 1:]  # (seeds, T - 1): no earlier items before the first task
        x = np.arange(2, v.shape[1] + 2)
        ax.plot(x, v.mean(0), marker="o", ms=4, color=f"C{i}", label=CONTINUAL_LABELS.get(m, m))
        if len(v) > 1:
            ax.fill_between(x, v.min(0), v.max(0), color=f"C{i}", alpha=0.15, lw=0)
    ax.set_xticks(x)
    ax.set_xlabel("training on task")
    ax.set_ylabel("cosine, old keys before vs after")
    ax.set_ylim(0, 1.02)
    legend_outside(ax, "right")
    return ax


def task_patches(n_tasks: int) -> list:
    """Legend handles naming the colour of each task (task 1 is C0)."""
    from matplotlib.patches import Patch

    return [Patch(color=f"C{t}", label=f"task {t + 1}") for t in range(n_tasks)]


def slot_owner_map(owner: np.ndarray, n_tasks: int, ax: Axes | None = None, upto: int | None = None,
                   title: str = "", segment_task=None, legend: bool = True) -> Axes:
    """Slot x segment map coloured by the task whose item the slot holds (white: empty); segments after
    `upto` are greyed out; task boundaries (from `segment_task`) are dashed lines; the tasks' colours
    in a legend on the right unless `legend` is False (:func:`task_patches` gives its handles)."""
    if ax is None:
        _, axes = new_figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = axes[0, 0]
    own = np.asarray(owner)
    S, N = own.shape
    rgb = np.ones((N, S, 3))
    for t in range(n_tasks):
        rgb[(own == t).T] = matplotlib.colors.to_rgb(f"C{t}")
    if upto is not None and upto + 1 < S:
        rgb[:, upto + 1:] = 1 - 0.25 * (1 - rgb[:, upto + 1:].mean(-1, keepdims=True))
        ax.axvline(upto + 0.5, color="k", lw=1.0)
    ax.imshow(rgb, aspect="auto", origin="lower", interpolation="nearest")
    if segment_task is not None:
        st = np.asarray(_np(segment_task), dtype=np.int64)
        for s in np.flatnonzero(np.diff(st)) + 1:
            ax.axvline(s - 0.5, color="gray", ls="--", lw=0.7)
    if legend:
        legend_outside(ax, "right", handles=task_patches(n_tasks))
    used = int((own[-1 if upto is None else upto] >= 0).sum())
    ax.set_title(title or f"which task each slot holds ({used} of {N} slots hold an item)", fontsize=TITLE_SIZE)
    ax.set_xlabel("support item streamed into memory (segment)")
    ax.set_ylabel("slot")
    return ax


def stream_view(own: np.ndarray, segment_task, accuracy: dict, held, segment: int, n_tasks: int,
                title: str = "") -> Figure:
    """A carried memory after one item of a fill stream: the slot map up to `segment` (who holds
    which slot, :func:`slot_owner_map`) beside bars of accuracy on every task after the task that
    item belongs to, one bar group per entry of `accuracy` (label -> (n_tasks,) accuracies), and
    `held` (n_tasks,), the items of each task the memory holds then (drawn scaled to the largest).
    own: (S, N) task of the item each slot holds after each segment (-1: none)."""
    seg_task = np.asarray(_np(segment_task), dtype=np.int64)
    stage = int(seg_task[segment])
    fig, axes = new_figure(2, 1, figsize=(COLUMN_WIDTH, 5.6))
    slot_owner_map(own, n_tasks, ax=axes[0, 0], upto=segment, segment_task=seg_task, title=title)
    ax = axes[1, 0]
    w = 0.8 / max(1, len(accuracy))
    for k, (label, acc) in enumerate(accuracy.items()):
        ax.bar(np.arange(n_tasks) + 1 + (k - (len(accuracy) - 1) / 2) * w, acc, width=w, color=f"C{[0, 3, 2, 1][k % 4]}",
               label=label)
    held = np.asarray(held, dtype=float)
    ax.plot(np.arange(n_tasks) + 1, held / max(1.0, held.max()), "k_", ms=14, mew=2, label="items held (scaled)")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(range(1, n_tasks + 1))
    ax.set_xlabel("task")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"after training on task {stage + 1}", fontsize=TITLE_SIZE)
    legend_outside(ax, "right")
    return fig


# ---------------------------------------------------------------------------- the cost of memory (chapter 6)
BENCH_METRICS = {"us_per_token": "time per token (us)", "autograd_mb": "autograd memory (MB)",
                 "tokens_per_s": "tokens per second", "peak_mb": "peak GPU memory (MB)"}


MODEL_MARKERS = {"memnet": "o", "windowed": "s", "lstm": "^", "full": "D", "dnc": "v", "rmt": "P", "titans": "X"}


def _count(v: float) -> str:
    """A count as a short tick label: 64, 1k, 16k, 1M (k = 1024 for powers of two, else 1000)."""
    v = int(round(v))
    if v >= 1024 and v % 1024 == 0 and v < 2**20:
        return f"{v // 1024}k"
    if v >= 2**20 and v % 2**20 == 0:
        return f"{v // 2**20}M"
    if v >= 10**6:
        return f"{v / 1e6:g}M"
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:,}"


def plain_log_axes(ax: Axes, x_counts: Sequence[int] | None = None, log_axis: str = "y") -> None:
    """Numbers as numbers on log axes: ticks of the `log_axis` ("y" or "x") at 1, 2 and 5 per decade
    written out (20, 50, 100, not 2x10^1), and x ticks at the counts `x_counts` written short (1k,
    16k, 1M), thinned from the largest down so that labels never run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if log_axis not in ("x", "y"):
        raise ValueError(f"log_axis must be 'x' or 'y', got {log_axis!r}")
    axis = ax.yaxis if log_axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if log_axis == "y" else ax.get_xlim()
    wide = lo > 0 and math.log10(hi / lo) > 2.5  # more than two decades: one tick per decade is enough
    axis.set_major_locator(LogLocator(base=10, subs=(1,) if wide else (1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    if x_counts:
        xs = sorted({float(v) for v in x_counts if v > 0}, reverse=True)
        gap = (math.log2(xs[0]) - math.log2(xs[-1])) / 5  # at most about six labels
        kept = [xs[0]]
        for v in xs[1:]:
            if math.log2(kept[-1]) - math.log2(v) >= gap:
                kept.append(v)
        ax.set_xticks(kept[::-1], [_count(v) for v in kept[::-1]])
        ax.xaxis.set_minor_formatter(NullFormatter())


def bench_vs_length(result: dict, metric: str = "us_per_token", ax: Axes | None = None,
                    highlight: int | None = None, legend: str | None = "right") -> Figure:
    """Log-log: a training metric (forward+backward, B=1) against sequence length, one line per model
    (a marker each; the FullTransformer dashed and on top, so lines that meet stay visible); skipped
    points are marked on the x axis. `highlight`: a length to mark with a vertical line; `legend`:
    where (:func:`legend_outside`), or None."""
    if metric not in BENCH_METRICS:
        raise ValueError(f"metric must be one of {sorted(BENCH_METRICS)}, got {metric!r}")
    fig, ax = (new_figure()[0], None) if ax is None else (ax.figure, ax)
    ax = ax if ax is not None else fig.axes[0]
    rows = result["seq_len"]
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["T"], r[metric]) for r in rows if r["model"] == name and metric in r]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker=MODEL_MARKERS.get(name, "o"), ls="--" if name == "full" else "-",
                    ms=6 if name == "full" else 4.5, mfc="none" if name == "full" else None,
                    zorder=4 if name == "full" else 3 if name == "memnet" else 2,
                    color=MODEL_COLORS.get(name), label=MODEL_LABELS.get(name, name))
        for r in rows:
            if r["model"] == name and "skipped" in r:
                ax.plot([r["T"]], [0.02], marker="x", color=MODEL_COLORS.get(name), transform=ax.get_xaxis_transform(),
                        clip_on=False)
    if highlight is not None:
        ax.axvline(highlight, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log_axes(ax, [r["T"] for r in rows])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(BENCH_METRICS[metric])
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        legend_outside(ax, legend)
    return fig


def bench_vs_slots(result: dict) -> Figure:
    """Log-log: MemNet's training time per token and autograd memory against the number of slots;
    and time per token against top_k on a linear axis from zero, so a change reads in proportion."""
    fig, axes = new_figure(1, 3, figsize=(COLUMN_WIDTH, 2.7))
    rows = result["slots"]
    n = [r["num_slots"] for r in rows]
    for ax, metric in zip(axes[0, :2], ("us_per_token", "autograd_mb")):
        ax.plot(n, [r[metric] for r in rows], "o-", color=MODEL_COLORS["memnet"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_axes(ax, n)
        ax.set_xlabel("slots N")
        ax.set_ylabel(BENCH_METRICS[metric])
        ax.grid(True, which="both", alpha=0.3)
    T = result["profile_settings"]["slots_seq_len"]
    axes[0, 0].set_title(f"MemNet, {T} tokens, B=1", fontsize=TITLE_SIZE)
    ax = axes[0, 2]
    tk = result["top_k"]
    ax.plot([r["top_k"] for r in tk], [r["us_per_token"] for r in tk], "o-", color=MODEL_COLORS["memnet"])
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["top_k"] for r in tk], [str(r["top_k"]) for r in tk])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(0, 1.15 * max(r["us_per_token"] for r in tk))
    ax.set_xlabel("top_k")
    ax.set_ylabel(BENCH_METRICS["us_per_token"])
    ax.set_title(f"N={tk[0]['num_slots']:,}, {result['profile_settings']['top_k_seq_len']} tokens", fontsize=TITLE_SIZE)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def bench_windows(result: dict, ax: Axes | None = None) -> Figure:
    """Training time per token at one length against the window (segment_len), MemNet and the
    WindowedTransformer, with the FullTransformer at that length (same thread count) as a line."""
    fig, ax = (new_figure()[0], None) if ax is None else (ax.figure, ax)
    ax = ax if ax is not None else fig.axes[0]
    rows = result["windows"]
    T = rows[0]["T"]
    for name in ("memnet", "windowed"):
        pts = [(r["segment_len"], r["us_per_token"]) for r in rows if r["model"] == name]
        x, y = zip(*pts)
        ax.plot(x, y, "o-", color=MODEL_COLORS.get(name), label=MODEL_LABELS.get(name, name))
    full = next((r for r in result.get("seq_len", []) if r["model"] == "full" and r["T"] == T and "skipped" not in r), None)
    if full is not None:
        ax.axhline(full["us_per_token"], color=MODEL_COLORS.get("full"), ls="--", label=f"{MODEL_LABELS.get('full', 'full')}")
        ax.axhline(full["us_per_token"] / 10, color=MODEL_COLORS.get("full"), ls=":", lw=0.8, label="1/10 of it")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log_axes(ax, [r["segment_len"] for r in rows])
    ax.set_xlabel("window (segment_len)")
    ax.set_ylabel(BENCH_METRICS["us_per_token"])
    ax.set_title(f"training at {T:,} tokens, B=1", fontsize=TITLE_SIZE)
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(ax, "right")
    return fig


def bench_streaming(result: dict) -> Figure:
    """Log-log: streaming inference latency per token and state size against tokens seen, MemNet's
    bank against the FullTransformer's KV cache."""
    fig, axes = new_figure(1, 2, figsize=(COLUMN_WIDTH, 3.0))
    mem, kv = result["streaming"]["memnet"], result["streaming"]["full_kv"]
    kv_ok = [r for r in kv if "us_per_token" in r]
    series = [("memnet", "MemNet (bank)", mem, "state_bytes"), ("full", "FullTransformer (KV cache)", kv_ok, "cache_bytes")]
    for name, label, rows, size in series:
        t = [r["tokens_seen"] for r in rows]
        axes[0, 0].plot(t, [r["us_per_token"] for r in rows], "o-", color=MODEL_COLORS[name], label=label)
        axes[0, 1].plot(t, [r[size] / 2**20 for r in rows], "o-", color=MODEL_COLORS[name], label=label)
    for ax, ylabel in zip(axes[0], ("latency per token (us)", "state (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain_log_axes(ax, [r["tokens_seen"] for r in mem])
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    legend_outside(axes[0, 0], "below", ncols=2)
    return fig
