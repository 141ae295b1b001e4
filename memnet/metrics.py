"""Memory metrics computed from traces, and recall accuracy by distance."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import IGNORE_INDEX  # noqa: F401  (re-exported: the constant lives in config, below the tasks)
from .trace import MemoryTrace


def correct_at_queries(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T) bool mask of query positions and (B, T) bool correctness (argmax == target)."""
    mask = targets != IGNORE_INDEX
    return mask, (logits.argmax(-1) == targets) & mask


def accuracy_by_distance(logits: Tensor, targets: Tensor, distance: Tensor) -> dict[int, tuple[int, int]]:
    """distance -> (correct, total) over query positions."""
    mask, ok = correct_at_queries(logits, targets)
    out: dict[int, tuple[int, int]] = {}
    for d in distance[mask].unique().tolist():
        sel = mask & (distance == d)
        out[int(d)] = (int(ok[sel].sum()), int(sel.sum()))
    return out


def slot_reuse(trace: MemoryTrace) -> dict[str, float]:
    """How the bank's slots are (re)used, from write events.

    events_per_segment: mean write events per sequence and segment;
    distinct_slots: mean number of slots that received at least one event per sequence;
    reuse_rate: share of events that land on a slot already holding an earlier event's
    content (an overwrite of live content rather than a fill of an empty slot);
    overwrites_per_segment: those overwrites per sequence and segment.
    """
    ev = trace.write_events.float()  # (B, S, N)
    B, S, N = ev.shape
    before = torch.cumsum(ev, dim=1) - ev  # events on the slot in earlier segments
    overwrite = ev * (before > 0).float()
    n_events = ev.sum()
    return {
        "events_per_segment": float(n_events / (B * S)),
        "distinct_slots": float((ev.sum(1) > 0).float().sum(-1).mean()),
        "reuse_rate": float(overwrite.sum() / n_events.clamp(min=1)),
        "overwrites_per_segment": float(overwrite.sum() / (B * S)),
    }


def read_sparsity(trace: MemoryTrace, eps: float = 1e-12) -> dict[str, float]:
    """Entropy of the top-k read distributions over real tokens.

    entropy: mean nats per head and token (0 = one slot, log K = uniform over the k);
    effective_slots: mean exp(entropy), the number of slots a read effectively mixes;
    top1_mass: mean weight of the strongest slot.
    """
    w = trace.read_weight  # (B, S, L, H, K)
    valid = trace.valid[..., None].expand(w.shape[:-1])
    ent = -(w * torch.log(w + eps)).sum(-1)
    n = valid.sum().clamp(min=1)
    return {
        "entropy": float((ent * valid).sum() / n),
        "effective_slots": float((ent.exp() * valid).sum() / n),
        "top1_mass": float((w.max(-1).values * valid).sum() / n),
        "max_entropy": math.log(w.shape[-1]),
    }
