"""Auxiliary memory losses: slot utilization, memory pressure, read entropy, write cost.

Each returns an unweighted scalar; `aux_losses` weights them by the config.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import MemNetConfig


def utilization_loss(mean_weight: Tensor, eps: float = 1e-6) -> Tensor:
    """log N - H(w_bar), with H(w_bar) = -sum_i w_bar_i log(w_bar_i + eps).

    mean_weight: (N,) mean addressing weight per slot (renormalised to sum to 1 here).
    Zero when every slot is used equally, log N when one slot takes everything;
    minimising it maximises the slot-utilisation entropy H(w_bar) (L_util = H(w_bar) is the quantity
    to raise; this loss is log N - L_util, so it is never negative).
    """
    w = mean_weight / mean_weight.sum().clamp(min=eps)
    entropy = -(w * torch.log(w + eps)).sum()
    return math.log(w.numel()) - entropy


def read_entropy(weight: Tensor, valid: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Mean entropy of the top-k read distributions. weight: (..., K); valid: mask over (...)."""
    ent = -(weight * torch.log(weight + eps)).sum(-1)
    if valid is None:
        return ent.mean()
    v = valid.to(ent.dtype).expand_as(ent)
    return (ent * v).sum() / v.sum().clamp(min=1.0)


def pressure_loss(retention: Tensor) -> Tensor:
    """Mean retention gate: the cost of keeping things. retention: (..., N) in (0, 1)."""
    return retention.mean()


def write_cost(gate: Tensor, valid: Tensor, budget: float = 0.0) -> Tensor:
    """Mean write gate over the writes of real tokens, less the `budget` that is free (never below
    0): the cost of writing. gate, valid: (..., W)."""
    v = valid.to(gate.dtype)
    return ((gate * v).sum() / v.sum().clamp(min=1.0) - budget).clamp(min=0.0)


def aux_losses(cfg: MemNetConfig, mean_read: Tensor, read_weight: Tensor | None, read_valid: Tensor,
               retention: Tensor | None, write_gate: Tensor | None = None, write_valid: Tensor | None = None
               ) -> dict[str, Tensor]:
    """The weighted auxiliary losses, ready to add to the task loss.

    mean_read: (N,) summed read weight per slot; read_weight: (B, S, L, H, K);
    read_valid: (B, S, L, 1) mask; retention: (B, S, N); write_gate, write_valid: (B, S, W), the
    gates of the writes and which of them are real tokens' (no write cost when None). A loss whose
    weight is 0 is a constant 0 (its input may then be None): nothing of it enters the graph.
    """
    zero = mean_read.new_zeros(())

    def weighted(weight: float, loss) -> Tensor:
        return weight * loss() if weight else zero

    out = {
        "utilization": weighted(cfg.util_weight, lambda: utilization_loss(mean_read, cfg.eps)),
        "pressure": weighted(cfg.pressure_weight, lambda: pressure_loss(retention)),
        "read_entropy": weighted(cfg.read_entropy_weight, lambda: read_entropy(read_weight, read_valid, cfg.eps)),
    }
    if write_gate is not None:
        out["write_cost"] = weighted(cfg.write_weight, lambda: write_cost(write_gate, write_valid, cfg.write_budget))
    return out
