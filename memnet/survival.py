"""Survival analysis of memory contents, from a :class:`~memnet.trace.MemoryTrace`.

A *content* is what a write event puts into a slot. It is born at the segment of the
event and lives until it is overwritten (the next write event on the same slot) or has
decayed away (the product of the retention gates applied to its slot since its birth
falls below a threshold). Contents still alive at the end of the trace are
right-censored. The lifetimes are then summarised with the Kaplan-Meier estimator.

Shapes: B batch, S segments, L segment_len, H mem_heads, K top_k, N num_slots.
Everything returned here is numpy; traces may hold tensors on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .metrics import IGNORE_INDEX
from .trace import MemoryTrace

CAUSES = ("overwrite", "decay", "censored")


def _np(x: Tensor | np.ndarray | Sequence) -> np.ndarray:
    """A tensor (any device, any grad state) or array-like as a numpy array."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------- lifetimes
@dataclass(frozen=True)
class Lifetimes:
    """One entry per content (per write event), all numpy arrays of equal length M.

    batch:    (M,) int, row of the trace
    slot:     (M,) int, slot the content was written to
    birth:    (M,) int, segment of the write event
    duration: (M,) int >= 1, death segment - birth (censored: num_segments - birth)
    observed: (M,) bool, True if the content died (overwrite or decay), False if censored
    cause:    (M,) str, 'overwrite' | 'decay' | 'censored'
    num_segments: S, the length of the trace in segments
    """

    batch: np.ndarray
    slot: np.ndarray
    birth: np.ndarray
    duration: np.ndarray
    observed: np.ndarray
    cause: np.ndarray
    num_segments: int

    def __len__(self) -> int:
        return len(self.duration)

    @property
    def death(self) -> np.ndarray:
        """(M,) birth + duration: the death segment (num_segments for censored contents)."""
        return self.birth + self.duration

    def counts(self) -> dict[str, int]:
        """cause -> number of contents."""
        return {c: int((self.cause == c).sum()) for c in CAUSES}


def content_lifetimes(trace: MemoryTrace, batch: int | None = None, decay_threshold: float = 0.1) -> Lifetimes:
    """Lifetimes of every content written during the trace.

    A content is born at segment ``s`` on slot ``n`` when ``trace.write_events[b, s, n]``.
    Its decay factor after segment ``s' > s`` is the product of the retention gates
    applied to the slot since the birth (retention at ``s'`` is applied *before* the
    writes of ``s'``, so the birth segment's own gate does not count)::

        P(s') = prod_{u = s+1}^{s'} retention[b, u, n]

    It dies at the first ``s' > s`` where either

    * ``P(s') < decay_threshold``                     -> cause 'decay', or
    * ``write_events[b, s', n]`` (the next event)       -> cause 'overwrite',

    and ``duration = s' - s``. When both happen at the same ``s'`` the cause is 'decay':
    the retention gate acts before the segment's writes, so the content had already
    faded when the new one was written. A content alive after the last segment is
    censored with ``duration = S - s`` and ``observed = False``. Durations are >= 1.

    Contents held by a memory state passed into the forward pass (born before the trace)
    are not tracked. ``decay_threshold = 0`` disables decay.

    batch: one row of the trace, or None for all rows (the ``batch`` field keeps the row index).
    The result is ordered by (batch, birth, slot).
    """
    events = _np(trace.write_events).astype(bool)
    retention = _np(trace.retention).astype(np.float64)
    if events.ndim != 3 or retention.shape != events.shape:
        raise ValueError(f"trace.write_events and trace.retention must both be (B, S, N), got "
                         f"{events.shape} and {retention.shape}")
    if not 0.0 <= float(decay_threshold) <= 1.0:
        raise ValueError(f"decay_threshold must be in [0, 1], got {decay_threshold!r}")
    B, S, N = events.shape
    rows = np.arange(B)
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not -B <= batch < B:
            raise ValueError(f"batch must be None or an int in [-{B}, {B}), got {batch!r}")
        b = int(batch) % B
        rows, events, retention = rows[b:b + 1], events[b:b + 1], retention[b:b + 1]

    # one pass over segments, vectorised over (rows, slots): each slot holds at most one tracked content
    R = len(rows)
    alive = np.zeros((R, N), dtype=bool)
    born = np.zeros((R, N), dtype=np.int64)
    decay = np.ones((R, N), dtype=np.float64)  # P: retention product since the birth
    rr, nn = np.meshgrid(np.arange(R), np.arange(N), indexing="ij")
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("batch", "slot", "birth", "death", "cause")}

    def emit(mask: np.ndarray, death: int, cause: str) -> None:
        out["batch"].append(rows[rr[mask]])
        out["slot"].append(nn[mask])
        out["birth"].append(born[mask])
        out["death"].append(np.full(int(mask.sum()), death, dtype=np.int64))
        out["cause"].append(np.full(int(mask.sum()), cause, dtype="<U9"))

    for s in range(S):
        decay = decay * retention[:, s]  # the gate acts first ...
        faded = alive & (decay < decay_threshold)
        emit(faded, s, "decay")
        alive &= ~faded
        ev = events[:, s]  # ... then the writes
        emit(alive & ev, s, "overwrite")
        alive |= ev
        born = np.where(ev, s, born)
        decay = np.where(ev, 1.0, decay)
    emit(alive, S, "censored")

    cat = {k: np.concatenate(v) for k, v in out.items()}
    order = np.lexsort((cat["slot"], cat["birth"], cat["batch"]))  # last key is the primary one
    cat = {k: v[order] for k, v in cat.items()}
    return Lifetimes(batch=cat["batch"].astype(np.int64), slot=cat["slot"].astype(np.int64),
                     birth=cat["birth"], duration=cat["death"] - cat["birth"],
                     observed=cat["cause"] != "censored", cause=cat["cause"], num_segments=S)


# ---------------------------------------------------------------------------- Kaplan-Meier
@dataclass(frozen=True)
class KMResult:
    """Kaplan-Meier estimate as a right-continuous step function, S(t) = P(T > t).

    times:    (J,) float, 0 followed by the distinct observed event times (increasing)
    survival: (J,) S(times[j]); survival[0] = 1 unless some durations of 0 were observed
    at_risk:  (J,) n_j, subjects with duration >= times[j]
    events:   (J,) d_j, observed deaths at times[j] (0 at the prepended time 0)
    variance: (J,) Greenwood variance S^2 * sum_{t_i <= t} d_i / (n_i (n_i - d_i)); 0 where S = 0
    lower, upper: (J,) pointwise 1 - alpha confidence band (log(-log) transform), in [0, 1]
    alpha: the band's level
    """

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    variance: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    alpha: float

    def __call__(self, t: float | np.ndarray) -> np.ndarray:
        """S(t) at arbitrary t >= 0 (the step function, right-continuous)."""
        j = np.searchsorted(self.times, np.asarray(t, dtype=np.float64), side="right") - 1
        return self.survival[np.clip(j, 0, None)]


def _check_km_inputs(duration, observed, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    d = _np(duration)
    o = _np(observed)
    if d.ndim != 1:
        raise ValueError(f"duration must be 1-D, got shape {d.shape}")
    if o.ndim != 1:
        raise ValueError(f"observed must be 1-D, got shape {o.shape}")
    if len(d) != len(o):
        raise ValueError(f"duration and observed must have the same length, got {len(d)} and {len(o)}")
    if d.dtype == bool or not np.issubdtype(d.dtype, np.number):
        raise ValueError(f"duration must be numeric, got dtype {d.dtype}")
    d = d.astype(np.float64)
    if not np.isfinite(d).all():
        raise ValueError("duration must be finite")
    if (d < 0).any():
        raise ValueError(f"duration must be non-negative, got min {d.min()}")
    if o.dtype != bool:
        if not np.issubdtype(o.dtype, np.number) or not np.isin(o, (0, 1)).all():
            raise ValueError(f"observed must be bool-like (True/False or 0/1), got dtype {o.dtype}")
        o = o.astype(bool)
    if isinstance(alpha, bool) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return d, o


def kaplan_meier(duration: np.ndarray | Tensor | Sequence[float], observed: np.ndarray | Tensor | Sequence[bool],
                 alpha: float = 0.05) -> KMResult:
    """Kaplan-Meier survival estimate with Greenwood variance and a log(-log) confidence band,
    fitted by ``lifelines.KaplanMeierFitter`` and read back at time 0 and the observed event times.

    At each distinct observed event time t_i, with n_i subjects at risk (duration >= t_i)
    and d_i observed deaths::

        S(t)   = prod_{t_i <= t} (1 - d_i / n_i)
        Var(t) = S(t)^2 * G(t),          G(t) = sum_{t_i <= t} d_i / (n_i (n_i - d_i))   (Greenwood)

    Band (the exponential Greenwood band lifelines reports), with z = Phi^{-1}(1 - alpha / 2)::

        exp(-exp(log(-log S) +- z * sqrt(G) / log S))

    Edges hold no NaN: where S = 1 the band is [1, 1] (and Var = 0), where S = 0 it is [0, 0]
    (Var = 0; lifelines leaves the infinite Greenwood term of n_i = d_i out of G). Censored
    subjects count as at risk at their own censoring time (ties: deaths before censorings).
    With no observed death the estimate is S = 1 at time 0 alone.
    """
    d, o = _check_km_inputs(duration, observed, alpha)
    if not o.any():  # nothing died: lifelines is not needed (and takes no empty input)
        one = np.ones(1)
        return KMResult(times=np.zeros(1), survival=one, at_risk=np.array([len(d)], dtype=np.int64),
                        events=np.zeros(1, dtype=np.int64), variance=np.zeros(1), lower=one, upper=one.copy(),
                        alpha=float(alpha))
    with np.errstate():  # lifelines calls np.seterr; the caller's error state is restored on exit
        fit = _lifelines_km().fit(d, event_observed=o, alpha=float(alpha))
    table = fit.event_table  # one row per distinct duration (and 0), censorings included
    t_all = table.index.to_numpy(dtype=np.float64)
    keep = (table["observed"].to_numpy() > 0) | (t_all == 0.0)
    times = t_all[keep]
    surv = np.clip(fit.survival_function_.to_numpy()[:, 0][keep], 0.0, 1.0)
    gw = fit._cumulative_sq_.to_numpy(dtype=np.float64)[keep]  # Greenwood's sum G(t); lifelines keeps it private
    band = fit.confidence_interval_.to_numpy(dtype=np.float64)[keep]
    inner = (surv > 0) & (surv < 1)
    lower = np.where(inner, np.minimum(band[:, 0], band[:, 1]), surv)
    upper = np.where(inner, np.maximum(band[:, 0], band[:, 1]), surv)
    return KMResult(times=times, survival=surv, at_risk=table["at_risk"].to_numpy()[keep].astype(np.int64),
                    events=table["observed"].to_numpy()[keep].astype(np.int64),
                    variance=np.where(surv > 0, surv ** 2 * gw, 0.0),
                    lower=np.clip(lower, 0.0, 1.0), upper=np.clip(upper, 0.0, 1.0), alpha=float(alpha))


def _lifelines_km():
    """A fresh ``lifelines.KaplanMeierFitter`` (the package is the extra ``memnet[survival]``)."""
    try:
        from lifelines import KaplanMeierFitter
    except ImportError as e:  # pragma: no cover - the test environment installs it
        raise ImportError("kaplan_meier needs lifelines: pip install 'memnet[survival]' (or lifelines)") from e
    return KaplanMeierFitter()


def median_survival(km: KMResult) -> float:
    """Smallest t with S(t) <= 0.5, or inf if the estimate never gets there."""
    hit = np.nonzero(km.survival <= 0.5)[0]
    return float(km.times[hit[0]]) if len(hit) else float("inf")


def counts_to_km(counts: dict[str, list[int]] | list[dict], alpha: float = 0.05) -> KMResult | None:
    """Kaplan-Meier from stored counts: ``counts["deaths"][t]`` and ``counts["censored"][t]`` are the
    subjects that died, or were censored, at duration t (one dict, or a list of them pooled).
    None when the counts hold no subject."""
    items = counts if isinstance(counts, list) else [counts]
    dur, obs = [], []
    for c in items:
        for flag, key in ((True, "deaths"), (False, "censored")):
            k = np.asarray(c[key], dtype=np.int64)
            if k.ndim != 1 or (k < 0).any():
                raise ValueError(f"counts[{key!r}] must be a 1-D list of non-negative counts, got {c[key]!r}")
            dur.append(np.repeat(np.arange(len(k)), k))
            obs.append(np.full(int(k.sum()), flag))
    dur, obs = np.concatenate(dur), np.concatenate(obs)
    return kaplan_meier(dur, obs, alpha) if len(dur) else None


def rmst(km: KMResult | None, tau: float) -> float:
    """Restricted mean survival time: the area under S(t) on [0, tau] (nan for no estimate)."""
    if km is None:
        return float("nan")
    t = np.append(km.times[km.times < tau], tau)
    return float(np.sum(km.survival[: len(t) - 1] * np.diff(t)))


# ---------------------------------------------------------------------------- other slot statistics
def write_frequency(trace: MemoryTrace) -> np.ndarray:
    """(N,) mean write events per segment for every slot: mean_{b, s} write_events[b, s, n]."""
    return _np(trace.write_events).astype(np.float64).mean(axis=(0, 1))


def age_histogram(trace: MemoryTrace, bins: int | Sequence[float] | np.ndarray | None = None,
                  density: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of slot ages (segments since the last write event) over all (b, s, n).

    bins: as for ``np.histogram``; None gives one bin per integer age, edges
    ``-0.5, 0.5, ..., max_age + 0.5``. Returns (counts or density, edges).
    """
    age = _np(trace.age).astype(np.float64).ravel()
    if bins is None:
        top = int(np.ceil(age.max())) if age.size else 0
        bins = np.arange(top + 2) - 0.5
    return np.histogram(age, bins=bins, density=density)


def retained_at_read(trace: MemoryTrace) -> np.ndarray:
    """(B, S, N) the retained fraction of every slot's content when segment ``s`` reads it.

    A segment reads before it writes, so the read of segment ``s`` sees the product of the
    retention gates applied to the slot since its last write event, up to segment ``s - 1``
    included (the factor :func:`content_lifetimes` compares with its decay threshold):
    ``R[:, 0] = 1`` and ``R[:, s] = 1`` where segment ``s - 1`` had a write event on the slot,
    else ``R[:, s - 1] * retention[:, s - 1]``. A slot never written gets the product since
    the start (it holds nothing either way).
    """
    events = _np(trace.write_events).astype(bool)
    retention = _np(trace.retention).astype(np.float64)
    if events.ndim != 3 or retention.shape != events.shape:
        raise ValueError(f"trace.write_events and trace.retention must both be (B, S, N), got "
                         f"{events.shape} and {retention.shape}")
    out = np.ones(events.shape, dtype=np.float64)
    for s in range(1, events.shape[1]):
        out[:, s] = np.where(events[:, s - 1], 1.0, out[:, s - 1] * retention[:, s - 1])
    return out


def read_entropy_per_segment(trace: MemoryTrace) -> np.ndarray:
    """(S,) mean entropy (nats) of the top-k read weights of every segment.

    H(b, s, l, h) = -sum_k w_k log w_k over trace.read_weight (0 log 0 = 0), averaged over
    heads and over the real tokens (trace.valid) of all rows; NaN for a segment with no
    real token. Values lie in [0, log K].
    """
    w = trace.read_weight.detach().double()  # (B, S, L, H, K)
    ent = -torch.special.xlogy(w, w).sum(-1).mean(-1)  # (B, S, L): mean over heads
    valid = trace.valid.detach().to(ent.dtype)  # (B, S, L)
    total = (ent * valid).sum(dim=(0, 2))
    n = valid.sum(dim=(0, 2))
    out = torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, float("nan")))
    return out.cpu().numpy()


# ---------------------------------------------------------------------------- who wrote a content
def content_sources(trace: MemoryTrace, life: Lifetimes, majority: bool = True) -> np.ndarray:
    """(M,) the sequence position of the token whose write created each content, or -1.

    A write event on slot ``n`` at segment ``s`` mixes the gated writes of that segment. The
    trace records, for every write ``j``, the slot allocated to it (``write_alloc``) and its
    allocation weight ``gate_j * (1 - update_j)``; the content-addressed share of the other
    writes is recorded only in sum (``write_strength``). The source of the content is the write
    allocated to ``n`` at ``s``; with ``majority`` (default) only when its allocation weight is
    at least half of the slot's write strength, so that it certainly wrote the most strength
    into the slot. Otherwise (no write allocated to the slot, or most strength came from
    content-addressed updates) the source is -1: not attributable.

    Positions are ``s * segment_len + write_pos``, ``segment_len = trace.valid.shape[2]``.
    """
    if not isinstance(life, Lifetimes):
        raise TypeError(f"life must be a Lifetimes (from content_lifetimes), got {type(life).__name__}")
    alloc = _np(trace.write_alloc).astype(np.int64)  # (B, S, W)
    pos = _np(trace.write_pos).astype(np.int64)  # (B, S, W)
    w = _np(trace.write_gate).astype(np.float64) * (1.0 - _np(trace.write_update).astype(np.float64))  # (B, S, W)
    strength = _np(trace.write_strength).astype(np.float64)  # (B, S, N)
    L = trace.valid.shape[2]
    b, s, n = life.batch, life.birth, life.slot
    if len(b) and (b.max() >= alloc.shape[0] or s.max() >= alloc.shape[1]):
        raise ValueError("life does not come from this trace (batch or birth out of range)")
    match = alloc[b, s] == n[:, None]  # (M, W): at most one write is allocated to a slot per segment
    has = match.any(1)
    j = match.argmax(1)
    src = np.where(has, s * L + pos[b, s, j], -1)
    if majority:
        share = w[b, s, j]
        src = np.where(has & (share >= 0.5 * strength[b, s, n]), src, -1)
    return src.astype(np.int64)


def km_by_group(life: Lifetimes, group: np.ndarray, names: Sequence[str], alpha: float = 0.05) -> dict[str, KMResult]:
    """Kaplan-Meier estimate per group. group: (M,) int code per content, -1 and codes without
    a name are left out; names[c] names code c. Groups with no content are absent."""
    group = _np(group)
    if group.shape != (len(life),):
        raise ValueError(f"group must have shape ({len(life)},) (one code per content), got {group.shape}")
    out = {}
    for c, name in enumerate(names):
        sel = group == c
        if sel.any():
            out[name] = kaplan_meier(life.duration[sel], life.observed[sel], alpha)
    return out


def event_label_matrix(life: Lifetimes, group: np.ndarray, num_slots: int, batch: int = 0) -> np.ndarray:
    """(S, N) int: the group code of the content born at each (segment, slot) of one row, -2 where
    no write event happened (and -1 where the content has no group)."""
    group = _np(group)
    if group.shape != (len(life),):
        raise ValueError(f"group must have shape ({len(life)},) (one code per content), got {group.shape}")
    out = np.full((life.num_segments, num_slots), -2, dtype=np.int64)
    sel = life.batch == batch
    out[life.birth[sel], life.slot[sel]] = group[sel]
    return out


def km_curve_dict(km: KMResult) -> dict[str, list[float]]:
    """A JSON-ready copy of the curve (times, survival, lower, upper, at_risk)."""
    return {"times": km.times.tolist(), "survival": km.survival.tolist(), "lower": km.lower.tolist(),
            "upper": km.upper.tolist(), "at_risk": km.at_risk.tolist()}


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
