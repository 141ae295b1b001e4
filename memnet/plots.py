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

from .metrics import IGNORE_INDEX  # noqa: E402
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

MODEL_LABELS = {"memnet": "MemNet", "windowed": "WindowedTransformer", "lstm": "LSTM", "full": "FullTransformer"}
MODEL_COLORS = {"memnet": "C0", "windowed": "C1", "lstm": "C2", "full": "C7"}


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
def _acc(run: dict, d: int) -> float:
    a = run["accuracy"]
    return float(a[d] if d in a else a[str(d)])


def accuracy_table(result: dict) -> dict[str, dict[str, np.ndarray]]:
    """model -> {"mean", "err", "n_seeds"} over seeds, per distance of ``result["distances"]``.

    err: with several seeds, the standard error of the mean over seeds; with one seed, the
    binomial standard error of that seed's accuracy over its evaluation queries.
    """
    dists = result["distances"]
    s = result.get("profile_settings", {})
    n_queries = s.get("eval_batch", 1) * s.get("eval_batches", 1) * result.get("task", {}).get("n_pairs", 1)
    out = {}
    for name in dict.fromkeys(r["model"] for r in result["runs"]):
        accs = np.array([[_acc(r, d) for d in dists] for r in result["runs"] if r["model"] == name])  # (seeds, D)
        mean = accs.mean(0)
        if len(accs) > 1:
            err = accs.std(0, ddof=1) / math.sqrt(len(accs))
        else:
            err = np.sqrt(mean * (1 - mean) / max(n_queries, 1))
        out[name] = {"mean": mean, "err": err, "n_seeds": np.array(len(accs))}
    return out


def accuracy_vs_distance(result: dict, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Recall accuracy against distance (in windows) for every model; error bars over seeds."""
    if ax is None:
        fig, axes = new_figure(figsize=(6, 3.8))
        ax = axes[0, 0]
    L = result["window"]
    x = np.array(result["distances"]) / L
    table = accuracy_table(result)
    for name, t in table.items():
        ax.errorbar(x, 100 * t["mean"], yerr=100 * t["err"], marker="o", ms=4, capsize=3,
                    label=f"{MODEL_LABELS.get(name, name)} ({int(t['n_seeds'])} seed{'s' if t['n_seeds'] > 1 else ''})",
                    color=MODEL_COLORS.get(name), ls="--" if name == "full" else "-")
    ax.axhline(100 * result["chance"], color="gray", ls=":", lw=1, label="chance")
    ax.axvline(1.0, color="k", lw=0.6, alpha=0.4)
    ax.text(1.0, 101, " window", fontsize=8, va="bottom", alpha=0.7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_ylim(0, 108)
    ax.set_xlabel(f"distance from value to query (windows of {L} tokens)")
    ax.set_ylabel("recall accuracy (%)")
    ax.set_title(title or f"recall vs distance ({result.get('profile', '?')} run)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return ax.figure


def memory_metrics_vs_distance(result: dict) -> Figure:
    """MemNet's slot reuse and read sparsity at every evaluated distance (mean over seeds)."""
    runs = [r for r in result["runs"] if r["model"] == "memnet"]
    if not runs:
        raise ValueError("result has no memnet runs")
    dists = result["distances"]
    L = result["window"]
    x = np.array(dists) / L
    get = lambda k, key: np.array([[float((r[k].get(d) or r[k].get(str(d)))[key]) for d in dists] for r in runs])
    fig, axes = new_figure(1, 3, figsize=(12, 3.2))
    panels = [("slot_reuse", "events_per_segment", "write events / segment"),
              ("slot_reuse", "reuse_rate", "share of events overwriting live content"),
              ("read_sparsity", "effective_slots", "slots a read mixes (exp entropy)")]
    for ax, (k, key, lab) in zip(axes[0], panels):
        v = get(k, key)
        err = v.std(0, ddof=1) / math.sqrt(len(v)) if len(v) > 1 else None
        ax.errorbar(x, v.mean(0), yerr=err, marker="o", ms=4, capsize=3, color=MODEL_COLORS["memnet"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{t:g}" for t in x])
        ax.set_xlabel("distance (windows)")
        ax.set_title(lab, fontsize=9)
    axes[0, 2].axhline(result["config"]["top_k"], color="gray", ls=":", lw=1)
    axes[0, 2].text(x[0], result["config"]["top_k"], "top_k", fontsize=8, va="bottom", color="gray")
    return fig


# ---------------------------------------------------------------------------- where stored items live
def item_occupancy(trace: MemoryTrace, tokens, targets, distance, batch: int = 0, ignore_index: int = IGNORE_INDEX) -> dict:
    """Follow each stored key-value item of a recall sequence through the slots.

    An item is born when the write issued by its value token lands, by allocation, on a slot;
    it lives in that slot until a later write event there overwrites it, and fades with the
    slot's retention gates meanwhile. Returns
      owner:  (N, S) int, the item a slot holds after each segment (-1: none)
      signal: (N, S) float, the product of retention gates since the item's write (0: none)
      slots:  list of the slot each item was allocated to
      query_read: (n_items, N) read weight (summed over heads) of each item's query token
      hits: list of bool, whether the query's strongest read is the item's slot.
    """
    targets, distance = torch.as_tensor(targets)[batch], torch.as_tensor(distance)[batch]
    S, L = trace.valid.shape[1], trace.valid.shape[2]
    N = trace.num_slots
    qpos = torch.nonzero(targets != ignore_index).flatten().tolist()
    vpos = [q - int(distance[q]) for q in qpos]
    owner = np.full((N, S), -1)
    signal = np.zeros((N, S))
    slots, query_read, hits = [], [], []
    events = _np(trace.write_events[batch]) > 0  # (S, N)
    ret = _np(trace.retention[batch])  # (S, N)
    dense = trace.read_weights_dense()[batch].sum(2)  # (S, L, N)
    for i, (v, q) in enumerate(zip(vpos, qpos)):
        s0, off = divmod(v, L)
        w = (trace.write_pos[batch, s0] == off).nonzero().flatten()
        if len(w) == 0:
            slots.append(-1)
            continue
        slot = int(trace.write_alloc[batch, s0, int(w[0])])
        slots.append(slot)
        sig = 1.0
        for s in range(s0, S):
            if s > s0:
                sig *= ret[s, slot]
                if events[s, slot]:
                    break
            owner[slot, s], signal[slot, s] = i, sig
        qs, qo = divmod(q, L)
        r = _np(dense[qs, qo])
        query_read.append(r)
        hits.append(bool(r.argmax() == slot))
    return {"owner": owner, "signal": signal, "slots": slots, "query_read": np.array(query_read), "hits": hits,
            "value_pos": vpos, "query_pos": qpos}


def item_occupancy_heatmap(occ: dict, L: int, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Which slot holds which stored item over time (color = item, brightness = retained signal);
    a star marks each item's query segment, on the slot its query read most."""
    if ax is None:
        fig, axes = new_figure(figsize=(7, 3.2))
        ax = axes[0, 0]
    owner, signal = occ["owner"], occ["signal"]
    n_items = max(len(occ["slots"]), 1)
    cmap = matplotlib.colormaps["tab10"]
    rgb = np.ones(owner.shape + (3,))
    for i in range(n_items):
        mask = owner == i
        color = np.array(cmap(i % 10)[:3])
        rgb[mask] = 1 - signal[mask, None] * (1 - color)
    ax.imshow(rgb, aspect="auto", origin="lower", interpolation="nearest")
    for i, q in enumerate(occ["query_pos"]):
        if i < len(occ["query_read"]):
            qs = q // L
            best = int(np.argmax(occ["query_read"][i]))
            ax.scatter([qs], [best], marker="*", s=90, color=cmap(i % 10), edgecolors="k", linewidths=0.6, zorder=3)
    from matplotlib.patches import Patch

    handles = [Patch(color=cmap(i % 10), label=f"pair {i}") for i in range(len(occ["slots"]))][:10]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", framealpha=0.8)
    ax.set_xlabel("segment")
    ax.set_ylabel("slot")
    ax.set_title(title or "stored items in slots (star: where the query read)", fontsize=9)
    return ax.figure
