"""How long each item of a key-value stream stays in memory, and whether it can still be read.

An *item* is a key-value pair of a stream (:class:`~memnet.tasks.ReuseStream`). The memory
writes it when its value token's write lands on a slot; it is *held* from then until a later
write event on that slot replaces it (the content fades under the retention gates meanwhile,
but it is still there to be read). This module turns a :class:`~memnet.trace.MemoryTrace` into
one lifetime per item, and gives what a survival analysis of those lifetimes needs:

* :func:`item_lifetimes`: (row, type, window, duration, observed) per item;
* :func:`survival_steps` and :func:`rmst_steps`: the Kaplan-Meier estimate on whole windows and
  its restricted mean, computed directly from the lifetimes (fast enough to bootstrap; they agree
  with :func:`memnet.survival.kaplan_meier`, which fits ``lifelines``);
* :func:`bootstrap_rmst_ratio`: the restricted-mean ratio of two item types with a bootstrap
  interval that resamples seeds, then sequences within each seed;
* :func:`hazard`: the share of the items still held at each age that are let go at that age;
* :func:`probe_sequences`: copies of a stream that ask for one item at one age each, so that a
  model's answer says whether the item can still be read (a behavioural test of forgetting).

Batches are read by their fields (``tokens``, ``kind``, ``item_at``, ``item_type``,
``item_pos``), as :class:`~memnet.tasks.ReuseBatch` holds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .survival import _np, content_lifetimes, content_sources
from .trace import MemoryTrace

FIELDS = ("tokens", "kind", "item_at", "item_type", "item_pos")  # what is read of a batch


def _check_batch(batch, fields: Sequence[str] = FIELDS) -> None:
    missing = [f for f in fields if not isinstance(getattr(batch, f, None), Tensor)]
    if missing:
        raise TypeError(f"batch must be a ReuseBatch (ReuseStream.sample), got {type(batch).__name__} "
                        f"without {', '.join(missing)}")


_FIELDS = ("row", "item", "type", "window", "duration", "observed", "slot")


@dataclass(frozen=True)
class ItemLifetimes:
    """One entry per item of every row, row-major (all (M,) int64 numpy arrays but ``observed``).

    row:      the sequence the item belongs to
    item:     its index within the row
    type:     its type code (the batch's ``item_type``)
    window:   the window (segment) its value token sits in
    duration: windows from its write to the write that replaced it; the windows to the end of the
              trace when it is still held there (censored); 0 when it was never written
    observed: bool, False when the item is still held at the end of the trace (censored)
    slot:     the slot of its longest-lived content (-1 when never written); None when not recorded
    """

    row: np.ndarray
    item: np.ndarray
    type: np.ndarray
    window: np.ndarray
    duration: np.ndarray
    observed: np.ndarray
    slot: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.duration)

    def select(self, mask: np.ndarray) -> "ItemLifetimes":
        """The items where `mask` is True, or at the positions `mask` lists."""
        return ItemLifetimes(*(None if getattr(self, f) is None else getattr(self, f)[mask] for f in _FIELDS))

    def held_at(self, age: int | np.ndarray) -> np.ndarray:
        """(M,) bool: whether each item is still held `age` windows after its own (age >= 1): the
        reads of window ``window + age`` happen before that window's writes, so an item replaced
        by the write of window ``window + d`` is read for the last time at age d."""
        return (self.duration > 0) & (np.asarray(age) <= self.duration)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists (observed as 0/1)."""
        return {f: getattr(self, f).astype(np.int64).tolist() for f in _FIELDS if getattr(self, f) is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "ItemLifetimes":
        """Inverse of :meth:`to_dict`."""
        arr = {f: np.asarray(d[f], dtype=np.int64) for f in _FIELDS if f in d or f != "slot"}
        n = {len(v) for v in arr.values()}
        if len(n) != 1:
            raise ValueError(f"item lifetimes must be lists of equal length, got lengths {sorted(n)}")
        arr["observed"] = arr["observed"].astype(bool)
        return cls(**arr)


def item_lifetimes(trace: MemoryTrace, batch) -> ItemLifetimes:
    """Lifetimes of every item of `batch` in the trace of a forward pass over ``batch.tokens``.

    Each content the trace follows (:func:`~memnet.survival.content_lifetimes`, no death by decay:
    a faded content is still held) is attributed to the token whose write created it
    (:func:`~memnet.survival.content_sources`) and so to that token's item. An item's lifetime is
    that of its longest-lived content, counted from the window of its value token; an item with
    no content was never written (duration 0). Contents written by other tokens are left out.
    """
    _check_batch(batch)
    if not isinstance(trace, MemoryTrace):
        raise TypeError(f"trace must be a MemoryTrace, got {type(trace).__name__}")
    B, S, L = trace.valid.shape[:3]
    if tuple(batch.tokens.shape) != (B, S * L):
        raise ValueError(f"batch.tokens must be (B, T) = ({B}, {S * L}) to match the trace, got "
                         f"{tuple(batch.tokens.shape)}")
    life = content_lifetimes(trace, decay_threshold=0.0)
    src = content_sources(trace, life)
    item_at = _np(batch.item_at)
    item_type = _np(batch.item_type)
    M = item_type.shape[1]
    end = np.zeros((B, M), dtype=np.int64)  # last window each item is held (its death or S)
    alive = np.zeros((B, M), dtype=bool)
    written = np.zeros((B, M), dtype=bool)
    ok = src >= 0
    items = np.where(ok, item_at[life.batch, np.clip(src, 0, None)], -1)
    keep = items >= 0
    b, m = life.batch[keep], items[keep]
    np.maximum.at(end, (b, m), life.death[keep])
    np.logical_or.at(alive, (b, m), ~life.observed[keep])
    written[b, m] = True
    slot = np.full((B, M), -1, dtype=np.int64)
    order = np.argsort(life.death[keep], kind="stable")[::-1]  # latest death first: np.unique keeps it
    _, first = np.unique((b * M + m)[order], return_index=True)
    slot[b[order][first], m[order][first]] = life.slot[keep][order][first]
    window = np.broadcast_to(_np(batch.item_pos) // L, (B, M))
    duration = np.where(written, end - window, 0)
    rows, items_ = np.meshgrid(np.arange(B), np.arange(M), indexing="ij")
    return ItemLifetimes(row=rows.ravel().astype(np.int64), item=items_.ravel().astype(np.int64),
                         type=item_type.ravel().astype(np.int64), window=np.ascontiguousarray(window).ravel().astype(np.int64),
                         duration=duration.ravel().astype(np.int64), observed=~alive.ravel(), slot=slot.ravel())


def occupancy(life: ItemLifetimes, row: int, num_slots: int, num_windows: int) -> np.ndarray:
    """(num_slots, num_windows) int: the type code of the item each slot holds at the end of each window
    (after its writes) in sequence `row`, -1 where the slot holds no item. Needs ``life.slot``."""
    if life.slot is None:
        raise ValueError("life must record the slot of each item (item_lifetimes does)")
    out = np.full((num_slots, num_windows), -1, dtype=np.int64)
    sel = (life.row == row) & (life.duration > 0) & (life.slot >= 0)
    for t, w, d, n in zip(life.type[sel], life.window[sel], life.duration[sel], life.slot[sel]):
        out[n, w:w + d] = t
    return out


# ---------------------------------------------------------------------------- survival on whole windows
def _check_durations(duration, observed) -> tuple[np.ndarray, np.ndarray]:
    d, o = _np(duration), _np(observed)
    if d.ndim != 1 or o.shape != d.shape:
        raise ValueError(f"duration and observed must be 1-D of equal length, got shapes {d.shape} and {o.shape}")
    if d.size and (not np.issubdtype(d.dtype, np.integer) or d.min() < 0):
        raise ValueError("duration must hold non-negative integers (whole windows)")
    if o.size and o.dtype != bool and not (np.issubdtype(o.dtype, np.number) and np.isin(o, (0, 1)).all()):
        raise ValueError("observed must be bool-like (True/False or 0/1)")
    return d.astype(np.int64), o.astype(bool)


def _risk_table(duration, observed, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(deaths, at_risk), both (horizon + 1,) at t = 0, 1, ..., horizon: the observed deaths at t and
    the subjects whose duration is >= t."""
    d, o = _check_durations(duration, observed)
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    top = max(int(horizon), int(d.max()) if d.size else 0) + 1
    deaths = np.bincount(d[o], minlength=top)[: horizon + 1]
    at_risk = (len(d) - np.concatenate([[0], np.cumsum(np.bincount(d, minlength=top))[:-1]]))[: horizon + 1]
    return deaths, at_risk


def survival_steps(duration, observed, horizon: int) -> np.ndarray:
    """(horizon + 1,) Kaplan-Meier S(t) = P(T > t) at t = 0, 1, ..., horizon for integer durations:
    ``S(t) = prod_{u <= t} (1 - d_u / n_u)`` with d_u the deaths at u and n_u the subjects whose
    duration is >= u. An empty input gives nan."""
    deaths, at_risk = _risk_table(duration, observed, horizon)
    if at_risk[0] == 0:
        return np.full(horizon + 1, np.nan)
    return np.cumprod(np.where(at_risk > 0, 1.0 - deaths / np.maximum(at_risk, 1), 1.0))


def rmst_steps(duration, observed, horizon: int) -> float:
    """Restricted mean survival time on [0, horizon]: the area under the step function
    :func:`survival_steps` (constant on [t, t + 1)), in windows."""
    return float(survival_steps(duration, observed, horizon)[:-1].sum())


def hazard(duration, observed, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Discrete hazard at ages 1..horizon: (deaths at t / subjects held at t, subjects held at t);
    the hazard is nan where nobody is held any more (read it with the counts)."""
    deaths, at_risk = _risk_table(duration, observed, horizon)
    n = at_risk[1:]
    return np.where(n > 0, deaths[1:] / np.maximum(n, 1), np.nan), n


def bootstrap_rmst_ratio(lifetimes: Sequence[ItemLifetimes], numerator: int, denominator: int, horizon: int,
                         n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Ratio of the restricted mean survival of two item types (type codes `numerator` and
    `denominator`), pooled over the runs in `lifetimes` (one per seed), with a percentile bootstrap
    interval: each replicate draws the seeds with replacement, then the sequences of every drawn
    seed with replacement, and pools their items. Returns {"ratio", "lo", "hi", "numerator",
    "denominator"} (the two restricted means, in windows)."""
    if not lifetimes or not all(isinstance(x, ItemLifetimes) for x in lifetimes):
        raise TypeError("lifetimes must be a non-empty sequence of ItemLifetimes (one per seed)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")

    def ratio(parts: list[ItemLifetimes]) -> tuple[float, float, float]:
        d = np.concatenate([p.duration for p in parts])
        o = np.concatenate([p.observed for p in parts])
        t = np.concatenate([p.type for p in parts])
        a = rmst_steps(d[t == numerator], o[t == numerator], horizon)
        b = rmst_steps(d[t == denominator], o[t == denominator], horizon)
        return (a / b if b > 0 else float("nan")), a, b

    r, a, b = ratio(list(lifetimes))
    rng = np.random.default_rng(seed)
    by_row = [[x.select(x.row == k) for k in np.unique(x.row)] for x in lifetimes]
    reps = np.empty(n_boot)
    for i in range(n_boot):
        parts = []
        for s in rng.integers(len(by_row), size=len(by_row)):
            rows = by_row[s]
            parts.extend(rows[j] for j in rng.integers(len(rows), size=len(rows)))
        reps[i] = ratio(parts)[0]
    q = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(reps, [q, 1.0 - q]) if np.isfinite(reps).any() else (float("nan"), float("nan"))
    return {"ratio": float(r), "lo": float(lo), "hi": float(hi), "numerator": a, "denominator": b}


# ---------------------------------------------------------------------------- behavioural probes
@dataclass(frozen=True)
class Probes:
    """Probe sequences that end in the window of their probe (all of one length), and what each asks.

    tokens, targets: (P, (window + 1) * L) long; targets are ignored (-100) except at the probe
    row, item, age, pos: (P,) long, the source row, the item asked for, its age in windows, the
    probe's position
    """

    tokens: Tensor
    targets: Tensor
    row: Tensor
    item: Tensor
    age: Tensor
    pos: Tensor


def probe_sequences(batch, segment_len: int, ages: Sequence[int], ignore_index: int = -100,
                    seed: int = 0) -> dict[int, Probes]:
    """Copies of every row of `batch` that each ask for one item at one age, grouped by the window
    the probe sits in (each group cut after that window, so a group's sequences have one length).

    For item i written in window w and an age a >= 1 with w + a inside the trace, a copy of its
    row gets, at a random filler position of window w + a (a position that holds neither an item
    nor a query), the item's key; the target there is the item's value. One probe per copy: a
    probe is itself a read, and reads may change what the memory keeps, so no probe can affect
    another. Everything before the probe is the row unchanged, so the answer says whether the
    memory, as the stream left it, can still give the item back. Windows without a free position
    get no probe.
    """
    _check_batch(batch)
    for a in ages:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 1:
            raise ValueError(f"ages must be ints >= 1, got {list(ages)!r}")
    if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len < 1:
        raise ValueError(f"segment_len must be an int >= 1, got {segment_len!r}")
    tokens, kind, item_at = _np(batch.tokens), _np(batch.kind), _np(batch.item_at)
    item_pos = _np(batch.item_pos)
    B, T = tokens.shape
    if T % segment_len:
        raise ValueError(f"segment_len ({segment_len}) must divide the sequence length ({T})")
    S, L = T // segment_len, segment_len
    M = item_pos.shape[1]
    free = (kind == 0) & (item_at < 0)  # (B, T) filler positions
    rng = np.random.default_rng(seed)
    groups: dict[int, list[tuple[int, int, int, int]]] = {}
    for b in range(B):
        for i in range(M):
            w = int(item_pos[b, i]) // L
            for a in ages:
                p = w + int(a)
                if p >= S:
                    continue
                spots = np.nonzero(free[b, p * L:(p + 1) * L])[0]
                if len(spots) == 0:
                    continue
                groups.setdefault(p, []).append((b, i, int(a), p * L + int(spots[rng.integers(len(spots))])))
    out = {}
    for p, spec in sorted(groups.items()):
        row, item, age, pos = (np.array(x, dtype=np.int64) for x in zip(*spec))
        toks = tokens[row, : (p + 1) * L].copy()
        tgt = np.full_like(toks, ignore_index)
        n = np.arange(len(row))
        key = tokens[row, item_pos[row, item] - 1]
        value = tokens[row, item_pos[row, item]]
        toks[n, pos] = key
        tgt[n, pos] = value
        as_t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
        out[p] = Probes(as_t(toks), as_t(tgt), as_t(row), as_t(item), as_t(age), as_t(pos))
    return out
