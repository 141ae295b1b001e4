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
import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor

from .config import MemNetConfig
from .controller import MemoryInterface, MemorySignals
from .memory import MemoryState
from .model import MemNet, segment, take

__all__ = [
    "accuracy_matrix", "average_accuracy", "backward_transfer", "forward_transfer", "forgetting",
    "average_forgetting", "max_drop", "learning_curve", "summarize", "SegmentEndWrites", "stream_memnet",
    "segment_keys", "fit_key_map", "realign_keys", "FixedAddress", "StreamMemNet",
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

    address: what the write keys and read queries are computed from.

    - ``"item"`` (default): at position t, a position-aware summary of the window's states
      before t, ``u_t = sum_{t' < t} A_{t'} h_{t'}`` with one learned (D, D) map ``A_{t'}`` per
      offset in the window (``u_0 = 0``); keys and queries are the usual projections of ``u_t``.
      At the last token ``u`` covers the item alone and is the same function of the item whether
      the last token is its label (a support segment, which writes) or QUERY (a query segment,
      which reads): a query addresses the slots written by similar items and the label cannot
      leak into the key. One map per offset keeps *where* each state sits: a plain mean over the
      window would be a bag of pixel intensities (the encoder's position codes are small) and
      finds the wrong neighbours. Causal: no position looks at a later one.
    - ``"token"``: the state of the position itself (the plain MemNet interface; no extra
      parameters, so a :class:`~memnet.controller.MemoryInterface` state dict loads unchanged).
      The key of a support item then also carries its label token, which the query lacks; the
      model has to learn to project it away before reads can find the right slots.
    """

    ADDRESSES = ("item", "token")

    def __init__(self, cfg: MemNetConfig, address: str = "item"):
        super().__init__(cfg)
        if address not in self.ADDRESSES:
            raise ValueError(f"address must be one of {self.ADDRESSES}, got {address!r}")
        self.address = address
        if address == "item":
            L, D = cfg.segment_len, cfg.d_model
            # (L, D, D) one map per offset; random (not the identity), so offsets stay apart from the start
            self.item_map = nn.Parameter(torch.randn(L, D, D) / math.sqrt(D * L))

    def forward(self, h: Tensor, valid: Tensor) -> MemorySignals:
        sig = super().forward(h, valid)
        last = torch.zeros_like(valid)  # (B, S, L) the last real token of every window
        n = valid.sum(-1, keepdim=True).clamp(min=1) - 1  # (B, S, 1)
        last.scatter_(-1, n, True)
        sig = _dc.replace(sig, write_score=sig.write_score.masked_fill(~(last & valid), float("-inf")))
        if self.address == "token":
            return sig
        B, S, L, D = h.shape
        c = torch.einsum("bsld,lde->bsle", h * valid.unsqueeze(-1).to(h.dtype), self.item_map[:L].to(h.dtype))
        u = F.pad(c.cumsum(2)[:, :, :-1], (0, 0, 1, 0))  # (B, S, L, D) exclusive prefix sums: u_0 = 0
        return _dc.replace(sig, read_query=self.read_query(u).view(B, S, L, self.H, self.Dm),
                           write_key=self.write_key(u))


class FixedAddress(nn.Module):
    """Keys and queries that are a fixed function of the item: no weight of the model touches them.

    At position t of a window the address is ``a_t = sum_{t' < t} code[x_{t'}] @ P_{t'}``: every
    earlier token's fixed code (``code``, (V, c), e.g. :meth:`memnet.tasks.stream.TaskStream.symbol_code`)
    placed by a fixed projection ``P_{t'}`` (c, Dm) of its offset. ``P`` is drawn once from
    ``seed``; when the ``(L - 1) * c`` coded inputs (the last offset never enters an address) fit
    into ``Dm`` its rows are orthonormal, so the cosine between two addresses is exactly the cosine
    between the two items' codes; otherwise it is a random projection that keeps cosines
    approximately (Johnson–Lindenstrauss). At the last token of a window ``a`` covers the item
    alone, whether that token is a label or QUERY.

    Addresses that no training step moves cannot drift: an item written on the first task is
    found by the same items on the last one. What it gives up is learning *which* similarity
    matters: the memory becomes a nearest-neighbour store under the code's cosine.
    """

    def __init__(self, code: Tensor, segment_len: int, slot_dim: int, seed: int = 0):
        super().__init__()
        if not isinstance(code, Tensor) or code.dim() != 2 or not torch.isfinite(code).all():
            raise ValueError(f"code must be a finite (vocab_size, c) tensor, got "
                             f"{tuple(code.shape) if isinstance(code, Tensor) else type(code).__name__}")
        L, c = segment_len, code.shape[1]
        n_in = (L - 1) * c  # the last offset never enters an address (the prefix is exclusive)
        g = torch.Generator().manual_seed(seed)
        P = torch.randn(n_in, slot_dim, generator=g, dtype=torch.float64)
        if 0 < n_in <= slot_dim:  # orthonormal rows: inner products (hence cosines) kept exactly
            P = torch.linalg.qr(P.T)[0].T
        else:
            P = P / math.sqrt(slot_dim)
        proj = torch.cat([P.view(L - 1, c, slot_dim), P.new_zeros(1, c, slot_dim)])
        self.register_buffer("code", code.float().clone())
        self.register_buffer("proj", proj.float())

    def forward(self, windows: Tensor) -> Tensor:
        """windows (B, S, L) token ids -> addresses (B, S, L, Dm), exclusive prefix sums along L."""
        if windows.shape[-1] > self.proj.shape[0]:
            raise ValueError(f"windows must be at most {self.proj.shape[0]} tokens long, got {windows.shape[-1]}")
        L = windows.shape[-1]
        c = torch.einsum("bslc,lcd->bsld", self.code[windows], self.proj[:L])  # (B, S, L, Dm)
        return F.pad(c.cumsum(2)[:, :, :-1], (0, 0, 1, 0))


class StreamMemNet(MemNet):
    """The :class:`~memnet.MemNet` of :func:`stream_memnet`: writes at window ends, and optionally
    keys and queries from a :class:`FixedAddress` (``fixed_address``) instead of learned projections."""

    def __init__(self, cfg: MemNetConfig, interface: SegmentEndWrites, fixed_address: FixedAddress | None = None):
        super().__init__(cfg, interface)
        self.fixed_address = fixed_address

    def signals(self, tokens: Tensor, seen: Tensor | None = None):
        """:meth:`memnet.MemNet.signals`, with keys and queries replaced by the fixed addresses when
        there are any."""
        ws = super().signals(tokens, seen)
        if self.fixed_address is None:
            return ws
        a = self.fixed_address(segment(tokens, self.cfg.segment_len)[0]).to(ws.h.dtype)  # (B, S, L, Dm)
        B, S, L, Dm = a.shape
        sig = _dc.replace(ws.sig, read_query=a.unsqueeze(3).expand(B, S, L, self.cfg.mem_heads, Dm), write_key=a)
        return ws._replace(sig=sig, key=take(a, ws.pos))


def stream_memnet(cfg: MemNetConfig, tie_query_key: bool = True, address: str = "item",
                  code: Tensor | None = None) -> MemNet:
    """A :class:`~memnet.MemNet` whose windows write only at their last token (see
    :class:`SegmentEndWrites`, which also explains ``address``); ``cfg.writes_per_segment`` must be 1.

    tie_query_key: start every read head's query projection equal to the write-key projection
    (they are still trained separately). A query item then starts by finding the slots whose
    keys were written by similar items; with independent random projections the first reads are
    random, no gradient says which slot holds the answer and episodic training stalls at a guess.

    address ``"fixed"``: keys and queries from a :class:`FixedAddress` of the tokens' ``code``
    (required then; (vocab_size, c)); every read head gets the same query. The learned key and
    query projections stay in the model, unused.
    """
    if cfg.writes != 1:
        raise ValueError(f"cfg.writes_per_segment must be 1 for a stream MemNet (one write per item), got {cfg.writes}")
    if address == "fixed":
        if code is None or code.shape[0] != cfg.vocab_size:
            raise ValueError(f"address='fixed' needs code, a (vocab_size={cfg.vocab_size}, c) tensor, got "
                             f"{None if code is None else tuple(code.shape)}")
    elif code is not None:
        raise ValueError(f"code is only used with address='fixed', got address={address!r}")
    model = StreamMemNet(cfg, SegmentEndWrites(cfg, "token" if address == "fixed" else address),
                         FixedAddress(code, cfg.segment_len, cfg.slot_dim) if address == "fixed" else None)
    if tie_query_key:
        with torch.no_grad():
            model.interface.read_query.weight.copy_(model.interface.write_key.weight.repeat(cfg.mem_heads, 1))
    return model


# ---------------------------------------------------------------------------- key drift compensation


@torch.no_grad()
def segment_keys(model: MemNet, segments: Tensor) -> Tensor:
    """The write key of each of ``segments`` (n, L) token windows, one window per row: (n, Dm).

    With a stream MemNet (one write per window) that is the key the window's item would be
    stored under by the current weights."""
    if segments.dim() != 2 or segments.shape[1] > model.cfg.segment_len:
        raise ValueError(f"segments must have shape (n, L) with L <= segment_len ({model.cfg.segment_len}), "
                         f"got {tuple(segments.shape)}")
    was = model.training
    model.eval()
    key = model.signals(segments).key  # (n, 1, W, Dm)
    model.train(was)
    return key[:, 0, 0].float()


def fit_key_map(before: Tensor, after: Tensor, ridge: float = 0.1) -> Tensor:
    """The linear map (Dm, Dm) that best carries unit keys written by older weights (``before``,
    (n, Dm)) to the unit keys the current weights write for the same items (``after``):

    ``M = argmin ||B M - A||^2 + ridge * n * ||M - I||^2``, B and A the row-normalised keys,

    so with few items (or items that span few directions) M stays near the identity. A known
    linear drift (``after = before @ R``) is recovered when the items span the key space.
    """
    if before.dim() != 2 or before.shape != after.shape:
        raise ValueError(f"before and after must be (n, Dm) of the same shape, got {tuple(before.shape)} "
                         f"and {tuple(after.shape)}")
    if not (isinstance(ridge, (int, float)) and ridge > 0):
        raise ValueError(f"ridge must be a positive float, got {ridge!r}")
    if not (torch.isfinite(before).all() and torch.isfinite(after).all()):
        raise ValueError("before and after must be finite (no NaN or inf)")
    B = F.normalize(before.double(), dim=-1)
    A = F.normalize(after.double(), dim=-1)
    n, D = B.shape
    eye = torch.eye(D, dtype=torch.float64, device=B.device)
    lam = ridge * n
    return torch.linalg.solve(B.T @ B + lam * eye, B.T @ A + lam * eye).to(before.dtype)


def realign_keys(state: MemoryState, key_map: Tensor) -> MemoryState:
    """A copy of ``state`` with every slot key ``k`` replaced by ``|k| * normalize(k @ key_map)``:
    directions moved by the drift map, norms (and empty slots, whose keys are zero) kept.
    Values, ages and usage are unchanged. This is semantic drift compensation (Yu et al. 2020)
    for a slot memory: the drift is estimated on the current task's items only, and applied to
    keys written for earlier tasks whose items are gone."""
    D = state.keys.shape[-1]
    if key_map.shape != (D, D):
        raise ValueError(f"key_map must be ({D}, {D}) for this memory, got {tuple(key_map.shape)}")
    norm = state.keys.norm(dim=-1, keepdim=True)  # (B, N, 1)
    moved = F.normalize(state.keys @ key_map.to(state.keys.dtype), dim=-1) * norm
    return MemoryState(moved, state.values.clone(), state.age.clone(), state.usage.clone(), state.retained.clone(),
                       signature=state.signature)


def slot_owner_over_time(trace_write_events, segment_task, n_tasks: int) -> np.ndarray:
    """(S, N) task whose item each slot holds after each segment of a fill stream (-1: none yet), from
    write events (S, N) and the task of each segment (S,)."""
    ev = torch.as_tensor(trace_write_events).detach().cpu().numpy() > 0
    seg_task = torch.as_tensor(segment_task).detach().cpu().numpy().astype(np.int64)
    S, N = ev.shape
    if seg_task.shape != (S,):
        raise ValueError(f"segment_task must have shape ({S},), got {seg_task.shape}")
    own = np.full((S, N), -1, dtype=np.int64)
    cur = np.full(N, -1, dtype=np.int64)
    for s in range(S):
        cur[ev[s]] = seg_task[s]
        own[s] = cur
    return own
