"""The slot memory: `MemoryState` (what persists) and `MultiHeadMemoryBank` (how it is read and written).

Shapes: B batch, N slots, D slot_dim, H memory heads, L tokens in a segment, K top_k.

A slot holds a key (what it is addressed by) and a value (what a read returns).
Reads: every head scores all slots by the cosine similarity of its query to their keys,
keeps the top-k and takes a softmax over those k with a learnable per-head sharpness.
Writes (once per segment, W of them: by default one per token of the window): each write's
weight over slots mixes content addressing of its key (top-k, residual update of similar
slots) with allocation of a stale slot, chosen from age and usage; the write is gated,
with a learned erase factor, and only a write whose strength passes ``write_threshold``
counts as an event that resets the slot's age, so weak writes keep landing on stale slots. Before writing, every slot is scaled by a learnable retention gate.
All updates are functional: a `MemoryState` passed in is never modified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import MemNetConfig

RETENTION_LOGIT_MAX = 15.0  # sigmoid(15) = 1 - 3e-7: still < 1 in float32


@dataclass(frozen=True)
class MemoryState:
    """What the memory carries from one segment (or call, episode, task) to the next.

    keys:   (B, N, D) float32, what a slot is addressed by
    values: (B, N, D) float32, what a read of the slot returns
    age:    (B, N) float32, segments since the slot's last write event (integer valued)
    usage:  (B, N) float32 in [0, 1], decaying trace of read and write weight
    """

    keys: Tensor
    values: Tensor
    age: Tensor
    usage: Tensor

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def detach(self) -> "MemoryState":
        """The same state cut from the autograd graph (for truncated backprop)."""
        return MemoryState(*(getattr(self, f.name).detach() for f in fields(self)))

    def to(self, *args, **kwargs) -> "MemoryState":
        return MemoryState(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))

    def clone(self) -> "MemoryState":
        return MemoryState(*(getattr(self, f.name).clone() for f in fields(self)))

    def staleness(self) -> Tensor:
        """(B, N) allocation score: old and little-used slots score highest.

        Age dominates (heavy use can at most halve a slot's staleness), so slots whose usage
        has saturated are still allocated oldest first.
        """
        return (self.age + 1.0) * (1.0 - 0.5 * self.usage)

    def nbytes(self) -> int:
        """Size of the state in bytes (constant in sequence length)."""
        return sum(getattr(self, f.name).numel() * getattr(self, f.name).element_size() for f in fields(self))


@dataclass(frozen=True)
class ReadResult:
    """One segment's reads. vectors: (B, L, H, D); index, weight: (B, L, H, K) sparse weights."""

    vectors: Tensor
    index: Tensor
    weight: Tensor


@dataclass(frozen=True)
class WriteRequest:
    """One segment's W writes.

    key: (B, W, D) address for content-based update; value: (B, W, D) what is written;
    gate: (B, W) in [0, 1] write strength; erase: (B, W, D) in [0, 1];
    update: (B, W) in [0, 1], share of the write sent to content-addressed slots
    rather than to the allocated stalest slot; decay: (B, D) direction that modulates
    each slot's retention by its content.
    """

    key: Tensor
    value: Tensor
    gate: Tensor
    erase: Tensor
    update: Tensor
    decay: Tensor


@dataclass(frozen=True)
class WriteResult:
    """What one write did. strength: (B, N) summed gated write weight per slot;
    events: (B, N) bool, slots whose age was reset; alloc: (B, W) slot allocated to each write;
    retention: (B, N) the retention gate applied before writing."""

    strength: Tensor
    events: Tensor
    alloc: Tensor
    retention: Tensor


def sparse_to_dense(index: Tensor, weight: Tensor, num_slots: int) -> Tensor:
    """Scatter (..., K) sparse addressing weights into (..., N) dense ones."""
    out = weight.new_zeros(*weight.shape[:-1], num_slots)
    return out.scatter_add(-1, index, weight)


def cosine_topk(queries: Tensor, slots: Tensor, k: int, sharpness: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Top-k cosine addressing.

    queries: (B, Q, H, D); slots: (B, N, D); sharpness: (H,).
    Returns index (B, Q, H, K) and softmax weights (B, Q, H, K) over the kept slots.
    """
    q = F.normalize(queries, dim=-1, eps=eps)
    m = F.normalize(slots, dim=-1, eps=eps)
    sim = torch.einsum("bqhd,bnd->bqhn", q, m)  # (B, Q, H, N)
    # a stable sort rather than topk: slots with identical keys (empty slots, or slots filled by the same
    # content write) tie exactly, and topk breaks ties differently for differently shaped inputs, so the
    # same sequence in one call or split in two would address (and count usage for) different slots
    top, index = sim.sort(dim=-1, descending=True, stable=True)  # ties to the lowest index
    top, index = top[..., :k], index[..., :k]  # (B, Q, H, K)
    weight = torch.softmax(top * sharpness.view(1, 1, -1, 1), dim=-1)
    return index, weight


def gather_slots(slots: Tensor, index: Tensor) -> Tensor:
    """slots (B, N, D), index (B, Q, H, K) -> (B, Q, H, K, D)."""
    B, N, D = slots.shape
    flat = index.reshape(B, -1, 1).expand(-1, -1, D)
    return slots.gather(1, flat).view(*index.shape, D)


class MultiHeadMemoryBank(nn.Module):
    """Slot memory with multi-head top-k reads and gated, allocating, decaying writes.

    Parameters: per-head read sharpness, a write sharpness, and a slot-wise retention logit
    (the learnable decay gate; the controller's decay direction modulates it by content).
    """

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        self.cfg = cfg
        H, N = cfg.mem_heads, cfg.num_slots
        self.log_read_sharpness = nn.Parameter(torch.full((H,), math.log(cfg.sharpness_init)))
        self.log_write_sharpness = nn.Parameter(torch.full((1,), math.log(cfg.sharpness_init)))
        self.decay_logit = nn.Parameter(torch.full((N,), float(cfg.decay_init)))

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """Empty memory: zero keys and values, age 0, usage 0."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        device = device if device is not None else self.decay_logit.device
        N, D = self.cfg.num_slots, self.cfg.slot_dim
        z = torch.zeros(batch_size, N, device=device)
        return MemoryState(torch.zeros(batch_size, N, D, device=device), torch.zeros(batch_size, N, D, device=device),
                           z, z.clone())

    def check_state(self, state: object, batch_size: int, name: str = "memory") -> MemoryState:
        """Raise a clear error unless `state` fits this bank and batch size."""
        if not isinstance(state, MemoryState):
            raise TypeError(f"{name} must be a MemoryState (from out.memory or initial_state), got {type(state).__name__}")
        N, D = self.cfg.num_slots, self.cfg.slot_dim
        slots, scalars = ((N, D), f"(B, num_slots={N}, slot_dim={D})"), ((N,), f"(B, num_slots={N})")
        tails = {"keys": slots, "values": slots, "age": scalars, "usage": scalars}
        for f, (tail, shape) in tails.items():  # tensors of the right rank and trailing shape, before indexing shapes
            t = getattr(state, f)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}.{f} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1 + len(tail) or tuple(t.shape[1:]) != tail:
                raise ValueError(f"{name}.{f} must have shape {shape}, got {tuple(t.shape)}")
        if state.batch_size != batch_size:
            raise ValueError(f"{name} was made for batch size {state.batch_size}, but tokens have batch size {batch_size}")
        for f in ("values", "age", "usage"):
            t = getattr(state, f)
            if t.shape[0] != batch_size:
                raise ValueError(f"{name}.{f} has shape {tuple(t.shape)}, expected batch {batch_size} and {N} slots")
        for f in ("keys", "values", "age", "usage"):
            t = getattr(state, f)
            if t.dtype != torch.float32:
                raise TypeError(f"{name}.{f} must be a float32 tensor (as out.memory is, also under autocast), got {t.dtype}")
            if t.device != self.decay_logit.device:
                raise ValueError(f"{name}.{f} is on {t.device}, the model on {self.decay_logit.device}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}.{f} contains NaN or inf")
        if (state.age < 0).any():
            raise ValueError(f"{name}.age must be >= 0 (segments since the last write), got min {state.age.min().item()}")
        if ((state.usage < 0) | (state.usage > 1)).any():
            raise ValueError(f"{name}.usage must be in [0, 1], got values in "
                             f"[{state.usage.min().item()}, {state.usage.max().item()}]")
        return state

    # ------------------------------------------------------------------ read
    @property
    def read_sharpness(self) -> Tensor:
        """(H,) inverse temperature of each head's top-k softmax."""
        return self.log_read_sharpness.clamp(max=math.log(100.0)).exp()

    @property
    def write_sharpness(self) -> Tensor:
        """(1,) inverse temperature of the writes' content addressing."""
        return self.log_write_sharpness.clamp(max=math.log(100.0)).exp()

    def read(self, state: MemoryState, queries: Tensor) -> ReadResult:
        """queries (B, L, H, D) -> read vectors (B, L, H, D): values of the top-k slots by key cosine."""
        queries = queries.float()
        index, weight = cosine_topk(queries, state.keys, self.cfg.top_k, self.read_sharpness, self.cfg.eps)
        vectors = (weight.unsqueeze(-1) * gather_slots(state.values, index)).sum(-2)  # (B, L, H, D)
        return ReadResult(vectors, index, weight)

    # ------------------------------------------------------------------ write
    def retention(self, state: MemoryState, decay: Tensor) -> Tensor:
        """(B, N) retention gate in (0, 1): the slot-wise logit plus the alignment of the slot's key with `decay` (B, D).

        The logit is clamped to [-15, 15] so the gate stays strictly inside (0, 1) in float32
        (an unclamped sigmoid rounds to exactly 0 or 1 for large `decay`: a slot wiped or frozen).
        """
        k = F.normalize(state.keys, dim=-1, eps=self.cfg.eps)
        logit = self.decay_logit + torch.einsum("bnd,bd->bn", k, decay.float())
        return torch.sigmoid(logit.clamp(-RETENTION_LOGIT_MAX, RETENTION_LOGIT_MAX))

    def allocate(self, state: MemoryState, n: int) -> Tensor:
        """(B, n) the n stalest slots, stalest first; ties go to the lowest index."""
        order = torch.sort(state.staleness(), dim=-1, descending=True, stable=True).indices
        return order[:, :n]

    def write(self, state: MemoryState, req: WriteRequest, read_mass: Tensor | None = None) -> tuple[MemoryState, WriteResult]:
        """Apply one segment's writes. read_mass: (B, N) read weight this segment (feeds usage)."""
        cfg = self.cfg
        B, N, D = state.keys.shape
        W = req.gate.shape[1]
        key, value, erase = req.key.float(), req.value.float(), req.erase.float()
        gate, update = req.gate.float(), req.update.float()

        # 1. forgetting: every slot is scaled by its retention gate
        retention = self.retention(state, req.decay)  # (B, N)
        r = retention.unsqueeze(-1)
        keys, values = state.keys * r, state.values * r

        # 2. addressing: content top-k on keys (residual update) mixed with the stalest slot (allocation)
        k = min(cfg.top_k, N)
        c_index, c_weight = cosine_topk(key.unsqueeze(1), keys, k, self.write_sharpness, cfg.eps)
        c_index, c_weight = c_index[:, 0], c_weight[:, 0]  # (B, W, K)
        alloc = self.allocate(state, W)  # (B, W): the strongest write gets the stalest slot
        index = torch.cat([c_index, alloc.unsqueeze(-1)], dim=-1)  # (B, W, K+1)
        weight = torch.cat([update.unsqueeze(-1) * c_weight, (1 - update).unsqueeze(-1)], dim=-1)
        weight = weight * gate.unsqueeze(-1)  # (B, W, K+1) gated write weights

        # 3. erase then add, all writes at once: M <- M * (1 - sum_j w_j e_j) + sum_j w_j x_j
        flat_index = index.reshape(B, -1)  # (B, W*(K+1))
        flat_w = weight.reshape(B, -1, 1)
        idx_d = flat_index.unsqueeze(-1).expand(-1, -1, D)
        spread = lambda x: x.unsqueeze(2).expand(-1, -1, k + 1, -1).reshape(B, -1, D)  # (B, W, D) -> (B, W*(K+1), D)
        keep = 1.0 - torch.zeros_like(keys).scatter_add(1, idx_d, flat_w * spread(erase)).clamp(max=1.0)
        new_keys = keys * keep + torch.zeros_like(keys).scatter_add(1, idx_d, flat_w * spread(key))
        new_values = values * keep + torch.zeros_like(values).scatter_add(1, idx_d, flat_w * spread(value))

        # 4. bookkeeping: write events reset age; usage is a decaying trace of reads and writes
        strength = torch.zeros(B, N, device=keys.device).scatter_add(1, flat_index, flat_w.squeeze(-1))
        events = strength.detach() >= cfg.write_threshold
        age = torch.where(events, torch.zeros_like(state.age), state.age + 1.0)
        usage = cfg.usage_decay * state.usage + strength.detach()
        if read_mass is not None:
            usage = usage + read_mass.detach().float()
        new_state = MemoryState(new_keys, new_values, age, usage.clamp(0.0, 1.0))
        return new_state, WriteResult(strength, events, alloc, retention)
