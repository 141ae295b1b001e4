"""Continual-learning metrics over an accuracy matrix (GEM, Lopez-Paz & Ranzato 2017; Avalanche names),
and the MemNet variant the continual experiment streams items into (:func:`stream_memnet`).

The accuracy matrix ``R`` is a ``(T, T)`` array with ``R[i, j]`` the accuracy on task ``j``
measured after training on tasks ``0..i`` in order: row ``i`` is the state of the model after
task ``i``, column ``j`` follows task ``j`` along the stream. Entries with ``i < j`` are
zero-shot accuracies (task ``j`` not trained yet); entries with ``i >= j`` are after training.

Every function takes any array-like (nested lists, NumPy arrays, tensors on the CPU) and checks
it with :func:`accuracy_matrix`: square, finite, values in ``[0, 1]``.
"""
from __future__ import annotations

import dataclasses as _dc
from typing import Any, Optional

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from .config import MemNetConfig
from .controller import MemoryInterface, MemorySignals
from .model import MemNet

__all__ = [
    "accuracy_matrix", "average_accuracy", "backward_transfer", "forward_transfer", "forgetting",
    "average_forgetting", "max_drop", "learning_curve", "summarize", "SegmentEndWrites", "stream_memnet",
]


def _as_float_array(values: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric and rectangular: {e}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must hold accuracies in [0, 1]; got range "
                         f"[{arr.min():g}, {arr.max():g}]")
    return arr


def accuracy_matrix(rows: ArrayLike, name: str = "R") -> np.ndarray:
    """Validate ``rows`` as a ``(T, T)`` accuracy matrix and return it as a float64 copy.

    ``R[i, j]`` = accuracy on task ``j`` after training on tasks ``0..i``. Requires ``T >= 1``,
    a square 2-D shape, finite entries and every entry in ``[0, 1]``.

    Raises:
        ValueError: naming the argument (``name``, default ``"R"``) when any check fails.
    """
    arr = _as_float_array(rows, name)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square (T, T) matrix; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must have at least one task; got shape {arr.shape}")
    return arr.copy()


def average_accuracy(R: ArrayLike) -> float:
    """Average accuracy after the last task (GEM's ACC, Avalanche's final "accuracy").

    ``ACC = (1/T) * sum_{j=0}^{T-1} R[T-1, j]``
    """
    R = accuracy_matrix(R)
    return float(R[-1].mean())


def backward_transfer(R: ArrayLike) -> float:
    """Backward transfer (GEM's BWT): how later training changed accuracy on earlier tasks.

    ``BWT = 1/(T-1) * sum_{j=0}^{T-2} (R[T-1, j] - R[j, j])``

    Negative values are forgetting, positive values are improvement on old tasks. With a single
    task (``T = 1``) there is no earlier task and BWT is defined as ``0.0``.
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    idx = np.arange(T - 1)
    return float(np.mean(R[-1, idx] - R[idx, idx]))


def forward_transfer(R: ArrayLike, baseline: ArrayLike) -> float:
    """Forward transfer (GEM's FWT): zero-shot accuracy on a task before training on it.

    ``FWT = 1/(T-1) * sum_{j=1}^{T-1} (R[j-1, j] - b[j])``

    where ``b[j]`` (GEM's b-bar) is the accuracy on task ``j`` of a randomly initialised model.
    ``baseline`` must have length ``T``; ``b[0]`` is checked but unused. With ``T = 1`` there is
    no task seen before training and FWT is defined as ``0.0``.

    Raises:
        ValueError: naming ``baseline`` when it is not a length-``T`` vector of accuracies.
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    b = _as_float_array(baseline, "baseline")
    if b.ndim != 1 or b.shape[0] != T:
        raise ValueError(f"baseline must be a vector of length T={T} (one accuracy per task); "
                         f"got shape {b.shape}")
    if T == 1:
        return 0.0
    j = np.arange(1, T)
    return float(np.mean(R[j - 1, j] - b[j]))


def forgetting(R: ArrayLike) -> np.ndarray:
    """Per-task forgetting after the last task (Chaudhry et al. 2018; Avalanche "forgetting").

    ``f_j = max_{l=0}^{T-2} R[l, j] - R[T-1, j]``  for ``j = 0..T-2``

    The maximum runs over every row before the last, as in Chaudhry et al.'s formula, so it also
    sees zero-shot rows ``l < j``; it always includes ``l = j``, hence ``f_j >= R[j, j] - R[T-1, j]``.
    ``f_j`` is negative when the final accuracy beats every earlier one (positive backward
    transfer). The last task has no forgetting and is excluded: returns a length ``T-1`` array
    (empty for ``T = 1``).
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    if T == 1:
        return np.zeros(0)
    return R[:-1, :-1].max(axis=0) - R[-1, :-1]


def average_forgetting(R: ArrayLike) -> float:
    """Average forgetting: ``F = 1/(T-1) * sum_{j=0}^{T-2} f_j`` with ``f_j`` from :func:`forgetting`.

    ``0.0`` for ``T = 1``. Since ``f_j >= R[j, j] - R[T-1, j]``, always ``F >= -BWT``.
    """
    f = forgetting(R)
    return float(f.mean()) if f.size else 0.0


def max_drop(R: ArrayLike) -> float:
    """Largest per-task forgetting: ``max_{j=0}^{T-2} f_j`` with ``f_j`` from :func:`forgetting`.

    ``0.0`` for ``T = 1``.
    """
    f = forgetting(R)
    return float(f.max()) if f.size else 0.0


def learning_curve(R: ArrayLike, j: int) -> np.ndarray:
    """Accuracy on task ``j`` along the stream: the full column ``R[:, j]`` (length ``T``).

    Entry ``i`` is the accuracy on task ``j`` after training on tasks ``0..i``; entries ``i < j``
    are zero-shot (task ``j`` not trained yet), entry ``j`` is just after training on it and
    entries ``i > j`` show what later tasks did to it.

    Raises:
        ValueError: naming ``j`` when it is not a task index in ``0..T-1``.
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < T:
        raise ValueError(f"j must be a task index in 0..{T - 1}; got {j!r}")
    return R[:, int(j)].copy()


def summarize(R: ArrayLike, baseline: Optional[ArrayLike] = None) -> dict[str, Any]:
    """All scalar metrics in one dict.

    Keys: ``acc`` (:func:`average_accuracy`), ``bwt`` (:func:`backward_transfer`), ``fwt``
    (:func:`forward_transfer`, ``None`` when no ``baseline`` is given) and ``forgetting``
    (:func:`average_forgetting`).
    """
    R = accuracy_matrix(R)
    return {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "fwt": None if baseline is None else forward_transfer(R, baseline),
        "forgetting": average_forgetting(R),
    }


# ---------------------------------------------------------------------------- a MemNet for item streams


class SegmentEndWrites(MemoryInterface):
    """MemNet's memory interface with writes allowed only at the last token of each window.

    In an item stream every segment is one item followed by its label (or QUERY), so the last
    token is the one that has seen both: the task's layout says *when* to write. A learned top-W
    choice of the writing token gets no gradient for tokens it did not pick, so without this
    prior the model must discover the label position by chance. Same parameters as
    :class:`~memnet.controller.MemoryInterface` (its state dict loads unchanged).
    """

    def forward(self, h: Tensor, valid: Tensor) -> MemorySignals:
        sig = super().forward(h, valid)
        last = torch.zeros_like(valid)  # (B, S, L) the last real token of every window
        n = valid.sum(-1, keepdim=True).clamp(min=1) - 1  # (B, S, 1)
        last.scatter_(-1, n, True)
        return _dc.replace(sig, write_score=sig.write_score.masked_fill(~(last & valid), float("-inf")))


def stream_memnet(cfg: MemNetConfig, tie_query_key: bool = True) -> MemNet:
    """A :class:`~memnet.MemNet` whose windows write only at their last token (see
    :class:`SegmentEndWrites`); ``cfg.writes_per_segment`` must be 1.

    tie_query_key: start every read head's query projection equal to the write-key projection
    (they are still trained separately). A query item then starts by finding the slots whose
    keys were written by similar items; with independent random projections the first reads are
    random, no gradient says which slot holds the answer and episodic training stalls at a guess.
    """
    if cfg.writes != 1:
        raise ValueError(f"cfg.writes_per_segment must be 1 for a stream MemNet (one write per item), got {cfg.writes}")
    model = MemNet(cfg)
    model.interface = SegmentEndWrites(cfg)
    if tie_query_key:
        with torch.no_grad():
            model.interface.read_query.weight.copy_(model.interface.write_key.weight.repeat(cfg.mem_heads, 1))
    return model
