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
from typing import Sequence

import matplotlib

matplotlib.rcParams.setdefault("figure.dpi", 100)
import matplotlib.pyplot as plt  # noqa: E402,F401  (registers the notebook's inline PNG formatter)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .trace import MemoryTrace  # noqa: E402



def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
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
    """A constrained-layout Figure and a 2-D array of its axes (pyplot-free)."""
    figsize = figsize or (4.2 * ncols, 3.0 * nrows)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


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
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.85)
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
        fig, axes = new_figure(figsize=(7, 3.2))
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
        fig, axes = new_figure(figsize=(5, 3.2))
        ax = axes[0, 0]
    heatmap(_np(trace.write_strength[batch]).T, ax, title or "write strength (o = write event)", "segment", "slot",
            cmap="Blues", vmin=0.0, events=_np(trace.write_events[batch]).T)
    return ax.figure


def state_heatmaps(trace: MemoryTrace, batch: int = 0, fields: Sequence[str] = ("age", "usage", "retention")) -> Figure:
    """One slot x segment heatmap per buffer: age, usage, retention gate."""
    fig, axes = new_figure(1, len(fields), figsize=(4.0 * len(fields), 3.0))
    cmaps = {"age": "cividis", "usage": "Greens", "retention": "Purples"}
    for ax, f in zip(axes[0], fields):
        heatmap(_np(getattr(trace, f)[batch]).T, ax, f, "segment", "slot", cmap=cmaps.get(f, "viridis"))
    return fig


def trace_overview(trace: MemoryTrace, batch: int = 0, title: str = "") -> Figure:
    """Reads (slot x token), writes, age and usage (slot x segment) side by side."""
    fig, axes = new_figure(1, 4, figsize=(16, 3.2), width_ratios=[2.2, 1, 1, 1])
    read_heatmap(trace, batch, ax=axes[0, 0])
    write_heatmap(trace, batch, ax=axes[0, 1])
    heatmap(_np(trace.age[batch]).T, axes[0, 2], "age", "segment", "slot", cmap="cividis")
    heatmap(_np(trace.usage[batch]).T, axes[0, 3], "usage", "segment", "slot", cmap="Greens", vmin=0, vmax=1)
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
    return ax


def small_multiples(trace: MemoryTrace, batch: int = 0, head: int | None = None, segments: Sequence[int] | None = None,
                    ncols: int = 4, max_panels: int = 8) -> Figure:
    """The explorer's view for a page without a kernel: one panel per segment (evenly spaced)."""
    S = trace.num_segments
    if segments is None:
        n = min(S, max_panels)
        segments = sorted(set(np.linspace(0, S - 1, n).round().astype(int).tolist()))
    segments = list(segments)
    ncols = min(ncols, len(segments))
    nrows = math.ceil(len(segments) / ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(2.6 * ncols + 0.6, 2.4 * nrows), sharey=True)
    dense = trace.read_weights_dense()[batch]
    vmax = float((dense.sum(2) if head is None else dense[:, :, head]).max()) or 1.0
    for i, ax in enumerate(axes.flat):
        if i >= len(segments):
            ax.set_axis_off()
            continue
        segment_panel(trace, segments[i], batch, head, ax=ax, vmax=vmax)
        if i % ncols:
            ax.set_ylabel("")
    who = "all heads" if head is None else f"head {head}"
    fig.suptitle(f"read weight per token and slot over time ({who}); red arrows: write events", fontsize=10)
    return fig


# ---------------------------------------------------------------------------- experiment results
def accuracy_curves(curves: dict, ax: Axes | None = None, xlabel: str = "", title: str = "",
                    chance: float | None = None, logx: bool = True, mark_x: float | None = None,
                    mark_label: str = "") -> Figure:
    """One line per model: ``curves[model] = {"x", "mean", "ci"}`` (accuracies in [0, 1], ci the
    half-width of the interval, nan for one seed), drawn in % with error bars; a dotted chance line,
    and a vertical mark at `mark_x` (e.g. the longest training distance)."""
    if ax is None:
        fig, axes = new_figure(figsize=(6.4, 4.0))
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
        ax.text(mark_x, 104, f" {mark_label}", fontsize=9, va="bottom", ha="right", alpha=0.8)
    if logx:
        ax.set_xscale("symlog", linthresh=1.0, base=2) if any(min(c["x"]) <= 0 for c in curves.values()) \
            else ax.set_xscale("log", base=2)
        xs = sorted({float(v) for c in curves.values() for v in c["x"]})
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    ax.set_ylim(-3, 112)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel("accuracy (%)", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, ncol=2, loc="lower left", framealpha=0.9)
    return ax.figure


def training_curves(curves: dict, ax: Axes | None = None, title: str = "", plateau: float | None = None,
                    budget: int | None = None) -> Figure:
    """One line per model: ``curves[model] = {"x": steps, "y": training loss over the loss of
    guessing}`` (1 on the plateau); a dotted line at 1, a dashed one at `plateau` (where a model
    counts as having left it) and a vertical mark at the shared step `budget`."""
    if ax is None:
        fig, axes = new_figure(figsize=(6.4, 4.0))
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
        ax.text(budget, 1.12, " shared budget", fontsize=9, va="top", ha="left", alpha=0.8)
    ax.set_ylim(-0.03, 1.15)
    ax.set_xlabel("training step", fontsize=10)
    ax.set_ylabel("training loss / loss of guessing", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), framealpha=0.9)
    return ax.figure


# ---------------------------------------------------------------------------- where stored items live
def item_occupancy_heatmap(occ: dict, L: int, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Which slot holds which stored item over time (color = item, brightness = retained signal);
    a star marks each item's query segment, on the slot its query read most."""
    if ax is None:
        fig, axes = new_figure(figsize=(7, 3.2))
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
    if many:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = ax.figure.colorbar(ScalarMappable(Normalize(0, n_items - 1), scale), ax=ax, pad=0.01, fraction=0.04)
        bar.set_label("item (order of its query)", fontsize=8)
    else:
        from matplotlib.patches import Patch

        handles = [Patch(color=color_of(i), label=f"pair {i}") for i in range(len(occ["slots"]))]
        if handles:
            ax.legend(handles=handles, fontsize=7, loc="upper left", framealpha=0.8)
    ax.set_xlabel("segment")
    ax.set_ylabel("slot")
    ax.set_title(title or "stored items in slots (star: where the query read)", fontsize=9)
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
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax.figure


def survival_by_type(curves: dict, ax: Axes | None = None, title: str = "") -> Figure:
    """Kaplan-Meier survival on whole windows, one colour per configuration and one line style per item
    type. curves: {configuration label: {item type: S(t) at t = 0, 1, ..., horizon}}."""
    if ax is None:
        _, axes = new_figure(figsize=(5.4, 3.4))
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
        _, axes = new_figure(figsize=(5.4, 3.4))
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
        _, axes = new_figure(figsize=(5.4, 3.4))
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
        _, axes = new_figure(figsize=(5.4, 3.0))
        ax = axes[0, 0]
    own = np.asarray(_np(owner), dtype=np.int64)
    rgb = np.ones(own.shape + (3,))
    for c, t in enumerate(type_names):
        rgb[own == c] = matplotlib.colors.to_rgb(TYPE_COLORS.get(t, "C7"))
    ax.imshow(rgb, aspect="auto", origin="lower", interpolation="nearest")
    from matplotlib.patches import Patch

    present = [t for c, t in enumerate(type_names) if (own == c).any()]
    ax.legend(handles=[Patch(color=TYPE_COLORS.get(t, "C7"), label=t) for t in present], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("window")
    ax.set_ylabel("slot")
    ax.set_title(title, fontsize=9)
    return ax.figure


def seeds_and_references(values: dict, references: dict, ax: Axes | None = None, title: str = "",
                         ylabel: str = "") -> Figure:
    """One column per configuration: its per-seed values as dots and their mean as a bar; horizontal
    reference lines (a distinct style each) across all columns. values: {label: [per seed]};
    references: {label: value}."""
    if ax is None:
        _, axes = new_figure(figsize=(5.6, 3.4))
        ax = axes[0, 0]
    for i, (name, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float)
        ax.scatter(np.full(len(v), i), v, color=f"C{i}", s=18, zorder=3)
        ax.hlines(v.mean(), i - 0.3, i + 0.3, color=f"C{i}")
    for (name, y), ls in zip(references.items(), (":", "--", "-.", (0, (1, 4)))):
        ax.axhline(y, color="k", lw=0.8, ls=ls, label=name)
    ax.set_xticks(np.arange(len(values)), list(values), rotation=15, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if references:
        ax.legend(fontsize=7)
    return ax.figure


def probe_held_vs_gone(acc: dict, chance: float, ax: Axes | None = None, title: str = "") -> Figure:
    """Probe accuracy per item type, one bar per configuration and state of the item (solid: still held,
    hatched: already replaced). acc: {label: {"held" | "gone": {item type: (probes, correct)}}}; a bar
    without probes is left out."""
    if ax is None:
        _, axes = new_figure(figsize=(5.6, 3.4))
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
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
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
    """R[i, j] (accuracy on task j after training on task i) as a heatmap, tasks numbered from 1."""
    R = _np(R)
    ax = heatmap(R, ax=ax, title=title, xlabel="evaluated on task j", ylabel="after training on task i",
                 cmap="magma", vmin=0.0, vmax=1.0, colorbar=False)
    ax.invert_yaxis()
    T = R.shape[0]
    ax.set_xticks(range(T), [str(t + 1) for t in range(T)])
    ax.set_yticks(range(T), [str(t + 1) for t in range(T)])
    if annotate:
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if R[i, j] < 0.6 else "black")
    return ax


def forgetting_curves(result: dict, stream: str, models: Sequence[str], joint: dict[str, str] | None = None,
                      ncols: int | None = None) -> Figure:
    """One panel per model (``ncols`` per row, default all in one row): accuracy on each task j along
    the stream (R[i, j] for i >= j, mean over seeds, min-max shaded); dashed: that model's
    joint-training accuracy on the task, when given."""
    T = result["streams"][stream]["stream"]["n_tasks"]
    ncols = len(models) if ncols is None else max(1, min(int(ncols), len(models)))
    nrows = -(-len(models) // ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(3.3 * ncols, 2.9 * nrows), sharey=True)
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
        ax.set_title(CONTINUAL_LABELS.get(m, m), fontsize=9)
        ax.set_xlabel("after training on task")
        ax.set_xticks(range(1, T + 1))
        ax.set_ylim(-0.03, 1.03)
    for row in axes:
        row[0].set_ylabel("test accuracy")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def memory_budget_curve(points: Sequence[dict], models: Sequence[str] | None = None, ax: Axes | None = None) -> Axes:
    """Final average accuracy against the bytes a model stores (log scale), one line per model:
    ``points`` as :func:`memnet.experiments.continual.budget_points` gives them (model, seed,
    per_class, memory_bytes, acc); mean over seeds at each budget, min-max as error bars, each
    point labelled with its items per class."""
    if ax is None:
        _, axes = new_figure(figsize=(6.0, 3.6))
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
            ax.annotate(str(b), (xb, yb), textcoords="offset points", xytext=(4, -10), fontsize=7, color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("bytes stored (log scale; labels: items per class)")
    ax.set_ylabel("final average accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    return ax


def key_drift_curve(result: dict, stream: str, models: Sequence[str], ax: Axes | None = None) -> Axes:
    """Per task t >= 2, the cosine between the keys of earlier items before and after training on
    task t (``task_drift`` of each run; 1: the keys did not move), mean over seeds, min-max shaded."""
    if ax is None:
        _, axes = new_figure(figsize=(5.0, 3.2))
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
    ax.legend(fontsize=7, loc="lower left")
    return ax


def slot_owner_map(owner: np.ndarray, n_tasks: int, ax: Axes | None = None, upto: int | None = None,
                   title: str = "", segment_task=None) -> Axes:
    """Slot x segment map coloured by the task whose item the slot holds (white: empty); segments after
    `upto` are greyed out; task boundaries (from `segment_task`) are dashed lines."""
    if ax is None:
        _, axes = new_figure(figsize=(6.0, 3.2))
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
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=f"C{t}", label=f"task {t + 1}") for t in range(n_tasks)], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    used = int((own[-1 if upto is None else upto] >= 0).sum())
    ax.set_title(title or f"which task each slot holds ({used} of {N} slots hold an item)", fontsize=9)
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
    fig, axes = new_figure(1, 2, figsize=(11, 3.4), width_ratios=[1.7, 1])
    slot_owner_map(own, n_tasks, ax=axes[0, 0], upto=segment, segment_task=seg_task, title=title)
    ax = axes[0, 1]
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
    ax.set_title(f"after training on task {stage + 1}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return fig


# ---------------------------------------------------------------------------- the cost of memory (chapter 6)
BENCH_METRICS = {"us_per_token": "time per token (us)", "autograd_mb": "autograd memory (MB)",
                 "tokens_per_s": "tokens per second", "peak_mb": "peak GPU memory (MB)"}


def bench_vs_length(result: dict, metric: str = "us_per_token", ax: Axes | None = None,
                    highlight: int | None = None) -> Figure:
    """Log-log: a training metric (forward+backward, B=1) against sequence length, one line per model;
    skipped points are marked on the x axis. `highlight`: a length to mark with a vertical line."""
    if metric not in BENCH_METRICS:
        raise ValueError(f"metric must be one of {sorted(BENCH_METRICS)}, got {metric!r}")
    fig, ax = (new_figure()[0], None) if ax is None else (ax.figure, ax)
    ax = ax if ax is not None else fig.axes[0]
    rows = result["seq_len"]
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["T"], r[metric]) for r in rows if r["model"] == name and metric in r]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "o-", color=MODEL_COLORS.get(name), label=MODEL_LABELS.get(name, name))
        for r in rows:
            if r["model"] == name and "skipped" in r:
                ax.plot([r["T"]], [0.02], marker="x", color=MODEL_COLORS.get(name), transform=ax.get_xaxis_transform(),
                        clip_on=False)
    if highlight is not None:
        ax.axvline(highlight, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(BENCH_METRICS[metric])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def bench_vs_slots(result: dict) -> Figure:
    """Log-log: MemNet's training time per token and autograd memory against the number of slots,
    and time per token against top_k."""
    fig, axes = new_figure(1, 3, figsize=(12, 3.2))
    rows = result["slots"]
    n = [r["num_slots"] for r in rows]
    for ax, metric in zip(axes[0, :2], ("us_per_token", "autograd_mb")):
        ax.plot(n, [r[metric] for r in rows], "o-", color=MODEL_COLORS["memnet"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("slots N")
        ax.set_ylabel(BENCH_METRICS[metric])
        ax.grid(True, which="both", alpha=0.3)
    T = result["profile_settings"]["slots_seq_len"]
    axes[0, 0].set_title(f"MemNet, {T} tokens, B=1", fontsize=9)
    ax = axes[0, 2]
    tk = result["top_k"]
    ax.plot([r["top_k"] for r in tk], [r["us_per_token"] for r in tk], "o-", color=MODEL_COLORS["memnet"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("top_k")
    ax.set_ylabel(BENCH_METRICS["us_per_token"])
    ax.set_title(f"N={tk[0]['num_slots']}, {result['profile_settings']['top_k_seq_len']} tokens", fontsize=9)
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
    ax.set_xlabel("window (segment_len)")
    ax.set_ylabel(BENCH_METRICS["us_per_token"])
    ax.set_title(f"training at {T:,} tokens, B=1", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def bench_streaming(result: dict) -> Figure:
    """Log-log: streaming inference latency per token and state size against tokens seen, MemNet's
    bank against the FullTransformer's KV cache."""
    fig, axes = new_figure(1, 2, figsize=(9, 3.2))
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
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig
