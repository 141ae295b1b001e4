"""The slot memory: `MemoryState` (what persists) and `MultiHeadMemoryBank` (how it is read and written).

Shapes: B batch, N slots, D slot_dim, H memory heads, L tokens in a segment, K top_k.

A slot holds a key (what it is addressed by) and a value (what a read returns).
Reads: every head scores all slots by the cosine similarity of its query to their keys, weighted
by the key's strength (its length, up to ``full_key_norm``: written keys have unit direction times
the write's weight, and decay shortens them), keeps the top-k and takes a softmax over those k
with a learnable per-head sharpness. So a weak or faded write is found less than a strong one,
and a write gate is trained by what the reads find.
Writes (once per segment, W of them: by default one per token of the window): each write's
weight over slots mixes content addressing of its key (top-k, residual update of similar
slots) with allocation of a stale slot, chosen from age and usage; the write is gated,
with a learned erase factor, and only a write whose strength passes ``write_threshold``
counts as an event that resets the slot's age, so weak writes keep landing on stale slots. Before writing, every slot is scaled by a learnable retention gate.
All updates are functional: a `MemoryState` passed in is never modified.
"""
from __future__ import annotations

import math
from dataclasses import InitVar, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import native
from .config import MemNetConfig

RETENTION_LOGIT_MAX = 15.0  # sigmoid(15) = 1 - 3e-7: still < 1 in float32
FADED_MIN = 1e-6  # "faded" allocation: the retained fraction is floored here before dividing by it
# a state's keys and values must lie in [-STATE_MAX_ABS, STATE_MAX_ABS]: far above what writes of unit
# keys and bottleneck values reach, and far enough inside float32's range (3.4e38) that what reads and
# writes compute of a slot (its norm, a read's LayerNorm: sums of squares, at most D * 1e16) stays finite
STATE_MAX_ABS = 1e8
# a state's counts (age, segments) must lie in [0, COUNT_MAX]: counting up by 1.0 in float32 stops
# at 2**24 (2**24 + 1 rounds back to it), so no state the model makes holds more
COUNT_MAX = float(2 ** 24)
TENSOR_FIELDS = ("keys", "values", "age", "usage", "retained", "segments")  # MemoryState's tensors, in order


@dataclass(frozen=True)
class MemoryState:
    """What the memory carries from one segment (or call, episode, task) to the next.

    keys:   (B, N, D) float32, what a slot is addressed by, in [-STATE_MAX_ABS, STATE_MAX_ABS]
    values: (B, N, D) float32, what a read of the slot returns, in [-STATE_MAX_ABS, STATE_MAX_ABS]
    age:    (B, N) float32 in [0, COUNT_MAX], segments since the slot's last write event (integer valued)
    usage:  (B, N) float32 in [0, 1], decaying trace of read and write weight
    retained: (B, N) float32 in [0, 1], product of the retention gates since the slot's last write
            event (1 for a fresh slot); None when constructed means all ones
    segments: (B,) float32 in [0, COUNT_MAX], windows this memory has seen (integer valued; what
            MemNet's segment codes are counted from); None when constructed means zeros
    signature: the config the state was made for, as :meth:`MemNetConfig.memory_signature` gives it
            (a tuple of ``(field, value)`` pairs, not a tensor); a model rejects a state made for
            another config. None: unknown (a state built by hand), checked by its shapes and values only.

    The signature is an init-only argument kept as a plain attribute, so that ``dataclasses.fields``
    (and what iterates it) still sees the six tensors only. Every method here that makes a new state
    keeps it; ``dataclasses.replace`` does not unless given ``signature=state.signature``.
    """

    keys: Tensor
    values: Tensor
    age: Tensor
    usage: Tensor
    retained: Tensor | None = None
    segments: Tensor | None = None
    signature: InitVar[tuple | None] = None

    def __post_init__(self, signature: tuple | None) -> None:
        object.__setattr__(self, "signature", signature)
        if self.retained is None and isinstance(self.age, Tensor):
            object.__setattr__(self, "retained", torch.ones_like(self.age))
        if self.segments is None and isinstance(self.age, Tensor) and self.age.dim() >= 1:
            object.__setattr__(self, "segments", self.age.new_zeros(self.age.shape[:1]))

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def tensors(self) -> tuple[Tensor, ...]:
        """The six tensors (keys, values, age, usage, retained, segments), in that order."""
        return tuple(getattr(self, f) for f in TENSOR_FIELDS)

    def _map(self, fn) -> "MemoryState":
        """A state of ``fn(t)`` for each of the six tensors, with the same signature."""
        return MemoryState(*(fn(t) for t in self.tensors()), signature=self.signature)

    def detach(self) -> "MemoryState":
        """The same state cut from the autograd graph (for truncated backprop)."""
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> "MemoryState":
        """The state's tensors moved or cast as ``Tensor.to(*args, **kwargs)`` does."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def clone(self) -> "MemoryState":
        """A copy that shares no storage with this state."""
        return self._map(lambda t: t.clone())

    def expand(self, n: int) -> "MemoryState":
        """A batch-1 state seen as n rows (broadcast views, no copies; for reads only)."""
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def rows(self, start: int, stop: int) -> "MemoryState":
        """Batch rows ``start..stop-1`` (views, not copies)."""
        return self._map(lambda t: t[start:stop])

    @staticmethod
    def cat(states: "list[MemoryState]") -> "MemoryState":
        """Several states as the rows of one batch, in order. States made for different configs
        (different signatures, None aside) cannot be joined: ValueError."""
        known = {s.signature for s in states if s.signature is not None}
        if len(known) > 1:
            raise ValueError("states must be made for the same config to be joined, got states of "
                             f"{len(known)} configs (MemoryState.signature)")
        return MemoryState(*(torch.cat([getattr(s, f) for s in states]) for f in TENSOR_FIELDS),
                           signature=known.pop() if known else None)

    def staleness(self) -> Tensor:
        """(B, N) allocation score: old and little-used slots score highest.

        Age dominates (heavy use can at most halve a slot's staleness), so slots whose usage
        has saturated are still allocated oldest first.
        """
        return (self.age + 1.0) * (1.0 - 0.5 * self.usage)

    def nbytes(self) -> int:
        """Size of the state in bytes (constant in sequence length)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


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
    each slot's retention by its content; pos: optional (B, W) long, the offset in the window of
    the token behind each write: when given, a read of the same window at a later offset also
    sees the write before it is stored (:meth:`MultiHeadMemoryBank.read`).
    """

    key: Tensor
    value: Tensor
    gate: Tensor
    erase: Tensor
    update: Tensor
    decay: Tensor
    pos: Tensor | None = None


@dataclass(frozen=True)
class WriteResult:
    """What one write did. strength: (B, N) summed gated write weight per slot;
    events: (B, N) bool, slots whose age was reset; alloc: (B, W) slot allocated to each write;
    retention: (B, N) the retention gate applied before writing."""

    strength: Tensor
    events: Tensor
    alloc: Tensor
    retention: Tensor


def unit_keys(key: Tensor, eps: float) -> Tensor:
    """``F.normalize(key.float(), dim=-1, eps=eps)``, with a zero gradient on all-zero rows.

    The keys of a window's first tokens are exactly zero (``write_key_shift``); there the gradient
    of F.normalize is the upstream one times 1/eps, which overflows float16 under autocast and turns
    the write-key weights' gradient to NaN (inf times the zero input). The values are the same, and
    so is every other gradient: an all-zero row has no parameter behind it."""
    key = key.float()  # (..., D)
    unit = F.normalize(key, dim=-1, eps=eps)
    return torch.where((key != 0).any(-1, keepdim=True), unit, torch.zeros_like(unit))


def sparse_to_dense(index: Tensor, weight: Tensor, num_slots: int) -> Tensor:
    """Scatter (..., K) sparse addressing weights into (..., N) dense ones."""
    out = weight.new_zeros(*weight.shape[:-1], num_slots)
    return out.scatter_add(-1, index, weight)


SORT_MAX_N = 16  # up to this many candidates (or when k is over a quarter of them) a stable sort is used as is
TOPK_BLOCK = 64  # blocked_topk: entries per block
BLOCKED_MIN_N = 8192  # rows at least this long (and >= 8 k blocks) go through blocked_topk
TOPK_CHUNK = 65536  # slots scored per chunk when a bank is larger: bounds the (..., Q, chunk) similarity block
# StreamingMemory takes the compiled scan (memnet.native) from this many slots on by default: a
# segment's ~160 queries against a bank that fits in cache are about as fast as one matrix product
# (4096 slots, one core: within the machine's noise either way), against one that does not the
# scan is about twice as fast (65536 slots)
NATIVE_MIN_SLOTS = 16384


def sorted_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k entries of ``scores.sort(descending=True, stable=True)`` along the last dim: the
    reference the faster selections below agree with (ties and NaN in the sort's own order)."""
    top, index = scores.sort(dim=-1, descending=True, stable=True)
    return top[..., :k], index[..., :k]


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k entries of a stable descending sort of `scores` (..., N): values and indices (..., k).

    Ties go to the lowest index, as with ``scores.sort(descending=True, stable=True)[..., :k]``, but
    in O(N) rather than O(N log N). On CPU in float32 the compiled :func:`memnet.native.select_rows`
    picks the indices (the values are gathered from `scores`, so gradients flow as through
    ``topk``); elsewhere ``topk`` of k+1 decides it when its k+1 values are distinct (then
    the kept set and its order are unambiguous). Otherwise (a tie inside the top k or at its edge)
    the k-th largest value v, which is unambiguous even where indices tie, splits the row: every
    entry above v is kept, and entries equal to v are taken in index order (a running count) until
    k are kept; the k kept entries are then stably sorted. Inside ``torch.compile`` (see
    :meth:`memnet.MemNet.compile_memory`) it is the stable sort itself, which traces as one operation.
    """
    if torch.compiler.is_compiling():  # inside torch.compile (MemNet.compile_memory): the sort traces as one op
        return sorted_topk(scores, k)
    index = native.select_rows(scores, k)  # CPU float32: one pass per row in C (None elsewhere)
    if index is not None:
        return scores.gather(-1, index), index
    return torch_stable_topk(scores, k)


def torch_stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`stable_topk` in torch operations only (the path off CPU, or without the compiled kernel)."""
    N = scores.shape[-1]
    if N >= BLOCKED_MIN_N and k * TOPK_BLOCK * 8 <= N and scores.stride(-1) == 1:  # long contiguous rows
        return blocked_topk(scores, k)
    if N <= SORT_MAX_N or 4 * (k + 1) > N:  # small rows, or most of a row kept: the sort is as fast
        return sorted_topk(scores, k)
    top, index = scores.topk(k + 1, dim=-1, sorted=True)  # (..., k+1)
    if bool(top[..., 0].isnan().any()):  # topk ranks NaN first: a row holds NaN, take the sort's own order
        return sorted_topk(scores, k)
    if not bool((top[..., 1:] == top[..., :-1]).any()):  # no tie: topk's answer is the sort's
        return top[..., :k], index[..., :k]
    kth = top[..., k - 1:k]  # (..., 1)
    above = scores > kth
    at = scores == kth
    room = k - above.sum(-1, keepdim=True, dtype=torch.int32)  # (..., 1) ties still to take, lowest index first
    keep = above | (at & (at.cumsum(-1, dtype=torch.int32) <= room))  # exactly k per row (no NaN here)
    index = keep.nonzero()[:, -1].view(*scores.shape[:-1], k)  # ascending index within each row
    top, order = scores.gather(-1, index).sort(dim=-1, descending=True, stable=True)
    return top, index.gather(-1, order)


def blocked_topk(scores: Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[Tensor, Tensor]:
    """``stable_topk`` of long rows through their block maxima: the same values and indices.

    The row (..., N) is cut into blocks of `block` entries (the last one padded with -inf) and
    only the k blocks with the largest maxima (ties to the lowest block) are searched. That is
    exact: an entry e of a block not among them is beaten by the maximum of each of the k chosen
    blocks (larger, or equal and at a lower index, since blocks are contiguous and ties go to
    the lower block), so e is not in the top k. One pass of ``amax`` over the row replaces
    ``topk`` over it, which on CPU is several times slower. NaN scores take the sort's path.
    """
    N = scores.shape[-1]
    nb = -(-N // block)
    padded = scores if nb * block == N else F.pad(scores, (0, nb * block - N), value=float("-inf"))
    blocks = padded.unflatten(-1, (nb, block))  # (..., nb, block)
    peak = blocks.amax(-1)  # (..., nb)
    if bool(peak.isnan().any()):  # NaN scores: the sort's own order
        return sorted_topk(scores, k)
    chosen = stable_topk(peak, k)[1].sort(dim=-1).values  # (..., k) blocks in index order
    cand_idx = (chosen.unsqueeze(-1) * block + torch.arange(block, device=scores.device)).flatten(-2)  # (..., k*block)
    top, pos = stable_topk(padded.gather(-1, cand_idx), k)  # candidates in index order keep the tie rule
    return top, cand_idx.gather(-1, pos)


def cosine_scores_topk(q: Tensor, m: Tensor, k: int, chunk: int = TOPK_CHUNK,
                       scale: Tensor | None = None, native: bool = True) -> tuple[Tensor, Tensor]:
    """Exact top-k of cosine scores, scoring the bank in chunks of `chunk` slots.

    q: (B, Q, D) unit queries; m: (B, N, D) unit keys (already normalised); scale: optional (B, N)
    factor applied to each slot's scores. Returns scores and indices (B, Q, K), ties to the lowest
    index. The bank is read once; at most (B, Q, chunk) scores exist at a time. Per chunk the stable
    top-k is kept; the union of these candidates holds the global top-k, and because candidates
    are concatenated in chunk order (lowest indices first) a stable top-k over them keeps the rule.

    With `native` (the default), on CPU in float32 and when no gradient is needed, the compiled
    kernel of :mod:`memnet.native` answers instead when it is available: one pass over the rows,
    the same rule, scores equal up to float rounding; its answer is not differentiable.
    """
    B, N, _ = m.shape
    if native and not (torch.is_grad_enabled() and (q.requires_grad or m.requires_grad)):
        from . import native as kernel
        answers = [kernel.topk_rows(q[b], m[b], k, None if scale is None else scale[b]) for b in range(B)]
        if all(a is not None for a in answers):
            return torch.stack([a[0] for a in answers]), torch.stack([a[1] for a in answers])
    tops, idxs = [], []
    for start in range(0, N, chunk):
        mc = m[:, start:start + chunk]  # (B, C, D)
        # (B, C, Q) then a transposed view (B, Q, C): one pass over the chunk's keys with the few
        # queries as the GEMM's narrow side, about 1.4x faster on CPU than the einsum's (B, Q, C) product
        sim = torch.bmm(mc, q.transpose(1, 2)).transpose(1, 2)
        if scale is not None:
            sim = sim * scale[:, None, start:start + chunk]
        t, i = stable_topk(sim, min(k, mc.shape[1]))
        tops.append(t)
        idxs.append(i + start)
    return merge_candidates(tops, idxs, k)


def merge_candidates(tops: list[Tensor], idxs: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The top k of per-part candidates (..., k_i) with their global indices, parts given in index
    order (lowest first): concatenated in that order, a stable top-k keeps ties at the lowest index."""
    if len(tops) == 1:
        return tops[0], idxs[0]
    top, pos = stable_topk(torch.cat(tops, -1), k)
    return top, torch.cat(idxs, -1).gather(-1, pos)


def cosine_topk(queries: Tensor, slots: Tensor, k: int, sharpness: Tensor, eps: float,
                chunk: int = TOPK_CHUNK, native: bool = True, full_norm: float | None = None) -> tuple[Tensor, Tensor]:
    """Top-k cosine addressing, weighted by the strength of each slot's key.

    queries: (B, Q, H, D); slots: (B, N, D); sharpness: (H,).
    Returns index (B, Q, H, K) and softmax weights (B, Q, H, K) over the kept slots.

    A slot scores ``cos(q, key) * min(|key| / full_norm, 1)``: a key at least `full_norm` long
    addresses at its full cosine, a shorter one (written weakly, or faded by decay) in proportion
    to its length, and an empty slot scores 0. That is ``q_hat . key / max(|key|, full_norm)``, the
    cosine of ``F.normalize(key, eps=full_norm)``; `full_norm` None means `eps` (plain cosine).

    Slots with identical keys (empty slots, or slots filled by the same content write) tie exactly;
    ties go to the lowest index on every path (``stable_topk``), so the same sequence in one call
    or split in two addresses (and counts usage for) the same slots. Banks of more than `chunk`
    slots are scored chunk by chunk (``cosine_scores_topk``, through the compiled kernel where it
    applies and `native` allows): the same indices, with the (B, Q, H, N) similarity matrix never
    held at once.
    """
    top, index = cosine_top_scores(queries, slots, k, eps, chunk, native, full_norm)
    weight = torch.softmax(top * sharpness.view(1, 1, -1, 1), dim=-1)
    return index, weight


def cosine_top_scores(queries: Tensor, slots: Tensor, k: int, eps: float, chunk: int = TOPK_CHUNK,
                      native: bool = True, full_norm: float | None = None) -> tuple[Tensor, Tensor]:
    """The scores (B, Q, H, K) and indices (B, Q, H, K) that :func:`cosine_topk` keeps, before the softmax."""
    q = F.normalize(queries, dim=-1, eps=eps)
    m = F.normalize(slots, dim=-1, eps=eps if full_norm is None else full_norm)
    B, Q, H, D = q.shape
    if slots.shape[1] <= chunk:
        sim = torch.einsum("bqhd,bnd->bqhn", q, m)  # (B, Q, H, N)
        return stable_topk(sim, k)  # (B, Q, H, K), ties to the lowest index
    top, index = cosine_scores_topk(q.reshape(B, Q * H, D), m, k, chunk, native=native)
    return top.view(B, Q, H, k), index.view(B, Q, H, k)


def pending_top_scores(queries: Tensor, req: WriteRequest, k: int, eps: float,
                       full_norm: float) -> tuple[Tensor, Tensor]:
    """Top-k scores (B, L, H, k') and write indices of a window's own writes for the window's reads.

    queries (B, L, H, D) at offsets 0..L-1; the W writes of `req` at offsets ``req.pos`` (B, W).
    A write is a key of unit direction and length ``gate`` (as a fresh slot holds it), scored as the
    bank's slots are, and seen only by the reads of later offsets (causal: -inf before); k' = min(k, W).
    """
    B, L = queries.shape[:2]
    q = F.normalize(queries, dim=-1, eps=eps)
    m = unit_keys(req.key, eps) * req.gate.float().unsqueeze(-1)  # (B, W, D)
    m = m / m.norm(dim=-1, keepdim=True).clamp(min=full_norm)
    sim = torch.einsum("blhd,bwd->blhw", q, m)  # (B, L, H, W)
    seen = req.pos.unsqueeze(1) < torch.arange(L, device=q.device).view(1, L, 1)  # (B, L, W)
    sim = sim.masked_fill(~seen.unsqueeze(2), float("-inf"))
    return stable_topk(sim, min(k, sim.shape[-1]))


def flat_rows(index: Tensor, num_slots: int) -> Tensor:
    """Slot indices (B, ...) -> row indices (B * ...,) into the (B * num_slots, D) view of a bank."""
    B = index.shape[0]
    return (index.reshape(B, -1) + num_slots * torch.arange(B, device=index.device).unsqueeze(-1)).reshape(-1)


def gather_slots(slots: Tensor, index: Tensor) -> Tensor:
    """slots (B, N, D), index (B, Q, H, K) -> (B, Q, H, K, D)."""
    B, N, D = slots.shape
    return slots.reshape(B * N, D).index_select(0, flat_rows(index, N)).view(*index.shape, D)  # whole rows


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
        logit = torch.full((N,), float(cfg.decay_init))
        if cfg.decay_mode == "learned":
            self.decay_logit = nn.Parameter(logit)
        else:  # "fixed" / "none": nothing to learn; a buffer of the same name keeps state_dict keys and device
            self.register_buffer("decay_logit", logit)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """Empty memory: zero keys and values, age 0, usage 0."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        device = device if device is not None else self.decay_logit.device
        N, D = self.cfg.num_slots, self.cfg.slot_dim
        z = torch.zeros(batch_size, N, device=device)
        return MemoryState(torch.zeros(batch_size, N, D, device=device), torch.zeros(batch_size, N, D, device=device),
                           z, z.clone(), torch.ones_like(z), torch.zeros(batch_size, device=device),
                           signature=self.cfg.memory_signature())

    def check_state(self, state: object, batch_size: int, name: str = "memory") -> MemoryState:
        """Raise a clear error unless `state` fits this bank and batch size: a :class:`MemoryState` of
        float32 tensors of this bank's shapes and device, made for this config (its signature, when
        it has one, is this config's :meth:`MemNetConfig.memory_signature`), with every value finite
        and in its documented range (see :class:`MemoryState`). Returns `state`."""
        if not isinstance(state, MemoryState):
            raise TypeError(f"{name} must be a MemoryState (from out.memory or initial_state), got {type(state).__name__}")
        N, D = self.cfg.num_slots, self.cfg.slot_dim
        slots, scalars = ((N, D), f"(B, num_slots={N}, slot_dim={D})"), ((N,), f"(B, num_slots={N})")
        tails = {"keys": slots, "values": slots, "age": scalars, "usage": scalars, "retained": scalars,
                 "segments": ((), "(B,)")}
        for f, (tail, shape) in tails.items():  # tensors of the right rank and trailing shape, before indexing shapes
            t = getattr(state, f)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}.{f} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1 + len(tail) or tuple(t.shape[1:]) != tail:
                raise ValueError(f"{name}.{f} must have shape {shape}, got {tuple(t.shape)}")
        if state.batch_size != batch_size:
            raise ValueError(f"{name} was made for batch size {state.batch_size}, but tokens have batch size {batch_size}")
        for f in ("values", "age", "usage", "retained", "segments"):
            t = getattr(state, f)
            if t.shape[0] != batch_size:
                raise ValueError(f"{name}.{f} has shape {tuple(t.shape)}, expected batch {batch_size} and {N} slots")
        self._check_signature(state.signature, name)
        slot_range = (-STATE_MAX_ABS, STATE_MAX_ABS, f"in [-{STATE_MAX_ABS:g}, {STATE_MAX_ABS:g}] (STATE_MAX_ABS)")
        ranges = {"keys": slot_range, "values": slot_range,
                  "age": (0.0, COUNT_MAX, f">= 0 and <= {COUNT_MAX:g} (segments since the last write; COUNT_MAX)"),
                  "usage": (0.0, 1.0, "in [0, 1]"), "retained": (0.0, 1.0, "in [0, 1]"),
                  "segments": (0.0, COUNT_MAX, f">= 0 and <= {COUNT_MAX:g} (windows seen; COUNT_MAX)")}
        for f, (lo, hi, allowed) in ranges.items():
            t = getattr(state, f)
            if t.dtype != torch.float32:
                raise TypeError(f"{name}.{f} must be a float32 tensor (as out.memory is, also under autocast), got {t.dtype}")
            if t.device != self.decay_logit.device:
                raise ValueError(f"{name}.{f} is on {t.device}, the model on {self.decay_logit.device}")
            if not bool(((t >= lo) & (t <= hi)).all()):  # one pass: NaN and inf fail it too
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{name}.{f} contains NaN or inf")
                raise ValueError(f"{name}.{f} must be {allowed}, "
                                 f"got values in [{t.min().item():g}, {t.max().item():g}]")
        return state

    def _check_signature(self, signature: object, name: str) -> None:
        """Raise unless `signature` (a state's) is None or this config's memory signature; the error
        names every field whose value differs."""
        if signature is None:
            return
        if (not isinstance(signature, tuple)
                or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in signature)):
            raise TypeError(f"{name}.signature must be None or a tuple of (field, value) pairs "
                            f"(MemNetConfig.memory_signature), got {type(signature).__name__}")
        ours = self.cfg.memory_signature()
        if signature == ours:
            return
        theirs, mine, missing = dict(signature), dict(ours), "<absent>"
        names = [*mine, *(k for k in theirs if k not in mine)]
        diff = [f"{k}={theirs.get(k, missing)!r} (this model: {mine.get(k, missing)!r})"
                for k in names if theirs.get(k, missing) != mine.get(k, missing)]
        raise ValueError(f"{name} is a MemoryState made for another config: {', '.join(diff)}; pass a state "
                         "made by this model (out.memory or initial_state), or one built for this config")

    # ------------------------------------------------------------------ read
    @property
    def read_sharpness(self) -> Tensor:
        """(H,) inverse temperature of each head's top-k softmax."""
        return self.log_read_sharpness.clamp(max=math.log(100.0)).exp()

    @property
    def write_sharpness(self) -> Tensor:
        """(1,) inverse temperature of the writes' content addressing."""
        return self.log_write_sharpness.clamp(max=math.log(100.0)).exp()

    def read(self, state: MemoryState, queries: Tensor, pending: WriteRequest | None = None) -> ReadResult:
        """queries (B, L, H, D) -> read vectors (B, L, H, D): values of the top-k slots by key cosine.

        With `pending`, the window's own writes (a request with ``pos``, not yet stored), a read at
        offset t also weighs the writes of offsets < t, with values ``gate * value``, and keeps the
        top-k of slots and writes together (ties: slots first, then writes in order). Its index then
        records a write by the slot allocation gives it (``self.allocate(state, W)``), where it lands.
        """
        cfg = self.cfg
        queries = queries.float()
        if pending is None or pending.pos is None:
            index, weight = cosine_topk(queries, state.keys, cfg.top_k, self.read_sharpness, cfg.eps,
                                        full_norm=cfg.full_key_norm)
            vectors = (weight.unsqueeze(-1) * gather_slots(state.values, index)).sum(-2)  # (B, L, H, D)
            return ReadResult(vectors, index, weight)
        N = state.keys.shape[1]
        top_b, idx_b = cosine_top_scores(queries, state.keys, cfg.top_k, cfg.eps, full_norm=cfg.full_key_norm)
        top_p, idx_p = pending_top_scores(queries, pending, cfg.top_k, cfg.eps, cfg.full_key_norm)
        top, pick = stable_topk(torch.cat([top_b, top_p], -1), cfg.top_k)
        src = torch.cat([idx_b, idx_p + N], -1).gather(-1, pick)  # (B, L, H, K) into [slots; writes]
        weight = torch.softmax(top * self.read_sharpness.view(1, 1, -1, 1), dim=-1)
        both = torch.cat([state.values, pending.value.float() * pending.gate.float().unsqueeze(-1)], 1)  # (B, N+W, D)
        vectors = (weight.unsqueeze(-1) * gather_slots(both, src)).sum(-2)
        alloc = self.allocate(state, pending.gate.shape[1])  # (B, W)
        landed = alloc.gather(1, (src - N).clamp(min=0).view(src.shape[0], -1)).view(src.shape)
        return ReadResult(vectors, torch.where(src >= N, landed, src), weight)

    # ------------------------------------------------------------------ write
    def retention(self, state: MemoryState, decay: Tensor) -> Tensor:
        """(B, N) retention gate in (0, 1): the slot-wise logit plus the alignment of the slot's key with `decay` (B, D).

        The logit is clamped to [-15, 15] so the gate stays strictly inside (0, 1) in float32
        (an unclamped sigmoid rounds to exactly 0 or 1 for large `decay`: a slot wiped or frozen).
        With ``cfg.decay_mode`` "fixed" the gate is the constant sigmoid(decay_init) and with "none"
        exactly 1; both ignore `decay` and learn nothing.
        """
        B, N = state.age.shape
        if self.cfg.decay_mode != "learned":
            return self._gate(None, B, state.keys.device)
        k = F.normalize(state.keys, dim=-1, eps=self.cfg.eps)
        return self._gate(torch.einsum("bnd,bd->bn", k, decay.float()), B, state.keys.device)

    def retention_of_directions(self, unit: Tensor, factor: Tensor, decay: Tensor) -> Tensor:
        """(N,) the retention gate of one sequence's slots given as directions: keys ``unit * length``
        with unit (N, D) of norm 1 (or 0 for an empty slot), factor (N,) = min(length / eps, 1) and
        decay (D,). Equal to :meth:`retention` of those keys, since F.normalize(key, eps) is
        ``unit * factor``, without forming the keys: one pass over `unit`, no (N, D) temporary."""
        if self.cfg.decay_mode != "learned":
            return self._gate(None, 1, unit.device)[0]
        return self._gate((factor * (unit @ decay.float()))[None], 1, unit.device)[0]

    def _gate(self, alignment: Tensor | None, B: int, device: torch.device) -> Tensor:
        """(B, N) sigmoid of the clamped slot-wise logit plus the keys' `alignment` (B, N) with the
        decay direction ("learned"); the constant gate ("fixed") or ones ("none") otherwise."""
        N = self.cfg.num_slots
        if self.cfg.decay_mode == "none":
            return torch.ones(B, N, device=device)
        if self.cfg.decay_mode == "fixed":
            return torch.sigmoid(self.decay_logit.clamp(-RETENTION_LOGIT_MAX, RETENTION_LOGIT_MAX)).expand(B, N)
        logit = self.decay_logit + alignment
        return torch.sigmoid(logit.clamp(-RETENTION_LOGIT_MAX, RETENTION_LOGIT_MAX))

    def allocation_score(self, state: MemoryState) -> Tensor:
        """(B, N) what allocation ranks: the staleness, divided with ``cfg.allocation = "faded"`` by
        the retained fraction of the slot's content (a slot faded to half its strength looks twice
        as stale), so that what decay lets go of is reused first."""
        score = state.staleness()
        if self.cfg.allocation == "faded":
            score = score / state.retained.clamp(min=FADED_MIN)
        return score

    def allocate(self, state: MemoryState, n: int) -> Tensor:
        """(B, n) the n slots of highest allocation score, highest first; ties go to the lowest index."""
        return stable_topk(self.allocation_score(state), n)[1]

    def write(self, state: MemoryState, req: WriteRequest, read_mass: Tensor | None = None) -> tuple[MemoryState, WriteResult]:
        """Apply one segment's writes. read_mass: (B, N) read weight this segment (feeds usage)."""
        cfg = self.cfg
        B, N, D = state.keys.shape
        W = req.gate.shape[1]
        key = unit_keys(req.key, cfg.eps)  # unit keys: a slot's key length is its write strength
        value, erase = req.value.float(), req.erase.float()
        gate, update = req.gate.float(), req.update.float()

        # 1. forgetting: every slot is scaled by its retention gate
        retention = self.retention(state, req.decay)  # (B, N)
        r = retention.unsqueeze(-1)
        keys, values = state.keys * r, state.values * r

        # 2. addressing: content top-k on keys (residual update) mixed with the stalest slot (allocation)
        k = min(cfg.top_k, N)
        c_index, c_weight = cosine_topk(key.unsqueeze(1), keys, k, self.write_sharpness, cfg.eps,
                                        full_norm=cfg.full_key_norm)
        c_index, c_weight = c_index[:, 0], c_weight[:, 0]  # (B, W, K)
        alloc = self.allocate(state, W)  # (B, W): the strongest write gets the stalest slot
        index = torch.cat([c_index, alloc.unsqueeze(-1)], dim=-1)  # (B, W, K+1)
        weight = torch.cat([update.unsqueeze(-1) * c_weight, (1 - update).unsqueeze(-1)], dim=-1)
        weight = weight * gate.unsqueeze(-1)  # (B, W, K+1) gated write weights

        # 3. erase then add, all writes at once: M <- M * (1 - sum_j w_j e_j) + sum_j w_j x_j
        flat_index = index.reshape(B, -1)  # (B, W*(K+1))
        flat_w = weight.reshape(B, -1, 1)
        rows = flat_rows(flat_index, N)  # into (B*N, D)
        # (B, W, D) -> the weighted (B*N, D) sum of its rows at their slots; index_add moves whole rows
        acc = lambda x: keys.new_zeros(B * N, D).index_add(
            0, rows, (flat_w.view(B, W, k + 1, 1) * x.unsqueeze(2)).reshape(-1, D)).view(B, N, D)
        keep = 1.0 - acc(erase).clamp(max=1.0)
        new_keys = keys * keep + acc(key)
        new_values = values * keep + acc(value)

        # 4. bookkeeping: write events reset age; usage is a decaying trace of reads and writes
        strength = torch.zeros(B, N, device=keys.device).scatter_add(1, flat_index, flat_w.squeeze(-1))
        events = strength.detach() >= cfg.write_threshold
        age = torch.where(events, torch.zeros_like(state.age), state.age + 1.0)
        retained = torch.where(events, torch.ones_like(state.retained), state.retained * retention.detach())
        usage = cfg.usage_decay * state.usage + strength.detach()
        if read_mass is not None:
            usage = usage + read_mass.detach().float()
        new_state = MemoryState(new_keys, new_values, age, usage.clamp(0.0, 1.0), retained, state.segments + 1.0,
                                signature=state.signature)
        return new_state, WriteResult(strength, events, alloc, retention)


class StreamingMemory:
    """The memory of one sequence (B=1) for inference, updated in place where it is written.

    The functional :meth:`MultiHeadMemoryBank.write` builds new (B, N, D) keys and values every
    segment, since retention scales every slot. Here retention is folded into a per-slot log scale
    (slot n's true key and value are ``stored[n] * exp(log_scale[n])``; cosine addressing only needs
    the key's direction, cached as ``unit``), and a segment changes the bank's rows only where it
    writes (at most W * (K+1) of them). Reads and content-addressed writes score the cached unit
    keys in one pass, with exact top-k and ties to the lowest index, so a segment reads the bank
    once whatever its size: through the compiled kernel of :mod:`memnet.native` when it is
    available and `native` asks for it (None: for banks of at least ``NATIVE_MIN_SLOTS`` slots),
    else in torch, ``chunk`` slots at a time. The per-slot bookkeeping (age,
    usage, retention, allocation) stays O(N) per segment, 1/D of the bank. No autograd.

    It computes what :meth:`MultiHeadMemoryBank.read` then :meth:`~MultiHeadMemoryBank.write`
    compute, up to float rounding (tests/test_memory.py checks the agreement); build it from a
    :class:`MemoryState` of batch size 1 and get one back with :meth:`to_state`.
    """

    def __init__(self, bank: MultiHeadMemoryBank, state: MemoryState | None = None, chunk: int = TOPK_CHUNK,
                 native: bool | None = None):
        if not isinstance(bank, MultiHeadMemoryBank):
            raise TypeError(f"bank must be a MultiHeadMemoryBank, got {type(bank).__name__}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        if native is not None and not isinstance(native, bool):
            raise TypeError(f"native must be a bool or None, got {type(native).__name__}")
        self.bank, self.chunk, self.native = bank, chunk, native
        state = bank.initial_state(1) if state is None else bank.check_state(state, 1, name="state")
        self.segments = int(state.segments[0])  # windows seen
        with torch.no_grad():
            self.keys = state.keys[0].clone()  # (N, D) stored keys; true keys are keys * exp(log_scale)
            self.values = state.values[0].clone()  # (N, D) stored values, same scale
            self.log_scale = torch.zeros(self.keys.shape[0], dtype=torch.float64, device=self.keys.device)  # (N,)
            self.norm = self.keys.norm(dim=-1)  # (N,) norm of the stored keys
            self.unit = self.keys / self.norm.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)  # (N, D)
            self.age = state.age[0].clone()  # (N,)
            self.usage = state.usage[0].clone()  # (N,)
            # (N,) retained fraction, kept only where allocation reads it, so an "lru" state stays as small
            self.retained = state.retained[0].clone() if bank.cfg.allocation == "faded" else None

    def nbytes(self) -> int:
        """Bytes held: stored keys and values, unit keys and the per-slot buffers (constant in tokens seen)."""
        ts = (self.keys, self.values, self.unit, self.log_scale, self.norm, self.age, self.usage, self.retained)
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def clone(self) -> "StreamingMemory":
        """An independent copy (same bank), e.g. to branch a stream."""
        new = object.__new__(StreamingMemory)
        new.__dict__.update(self.__dict__)
        for name in ("keys", "values", "log_scale", "norm", "unit", "age", "usage", "retained"):
            if getattr(self, name) is not None:
                setattr(new, name, getattr(self, name).clone())
        return new

    def to_state(self) -> MemoryState:
        """The equivalent functional state (batch size 1). With ``allocation = "lru"`` the retained
        fraction is not kept (nothing reads it) and comes back as ones."""
        s = self.log_scale.exp().float().unsqueeze(-1)  # (N, 1)
        return MemoryState((self.keys * s)[None], (self.values * s)[None], self.age[None].clone(),
                           self.usage[None].clone(), None if self.retained is None else self.retained[None].clone(),
                           torch.full((1,), min(float(self.segments), COUNT_MAX), device=self.keys.device),
                           signature=self.bank.cfg.memory_signature())

    def _addressing_scale(self, scale: Tensor, full_norm: float) -> Tensor:
        """(N,) factor turning unit-key cosines into those of F.normalize(true key, full_norm), for
        slot scales `scale` (N,): a key shorter than `full_norm` scores in proportion to its length."""
        return (self.norm * scale / full_norm).clamp(max=1.0)

    def _native_scores(self, q: Tensor, LH: int, k_read: int, k_write: int, f_read: Tensor | None,
                       f_write: Tensor | None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
        """The reads' (first LH rows of q) and the writes' top-k over the unit keys from the compiled
        kernel (:mod:`memnet.native`): one pass over the bank when both sides share k and scale, else
        two; None when the kernel cannot answer (the chunked torch loop then does)."""
        from . import native as kernel
        if not (self.native if self.native is not None else self.keys.shape[0] >= NATIVE_MIN_SLOTS):
            return None
        if k_read == k_write and f_read is None and f_write is None:
            both = kernel.topk_rows(q, self.unit, k_read)
            return None if both is None else ((both[0][:LH], both[1][:LH]), (both[0][LH:], both[1][LH:]))
        r = kernel.topk_rows(q[:LH], self.unit, k_read, f_read)
        w = None if r is None else kernel.topk_rows(q[LH:], self.unit, k_write, f_write)
        return None if w is None else (r, w)

    @torch.no_grad()
    def step(self, queries: Tensor, req: WriteRequest, valid: Tensor | None = None) -> ReadResult:
        """Read with the memory as it stands, then apply the segment's writes, in place.

        queries: (1, L, H, D); req: a batch-1 WriteRequest of W writes; valid: (1, L) bool mask of
        real tokens (all when None). Returns the reads, as :meth:`MultiHeadMemoryBank.read`.
        """
        bank, cfg = self.bank, self.bank.cfg
        N, D = self.keys.shape
        _, L, H, _ = queries.shape
        W = req.gate.shape[1]
        k_read, k_write = cfg.top_k, min(cfg.top_k, N)
        valid = torch.ones(1, L, dtype=torch.bool, device=queries.device) if valid is None else valid

        # retention of every slot (needs only key directions); the write addresses the retained keys
        scale = self.log_scale.exp().float()  # (N,) slot scale before this segment's write
        f_read = self._addressing_scale(scale, cfg.full_key_norm)
        retention = bank.retention_of_directions(self.unit, self._addressing_scale(scale, cfg.eps), req.decay[0])  # (N,)
        log_post = self.log_scale + retention.double().log()
        f_write = self._addressing_scale(log_post.exp().float(), cfg.full_key_norm)

        # one pass over the unit keys scores the reads' and the content writes' queries together
        q = torch.cat([F.normalize(queries[0].float(), dim=-1, eps=cfg.eps).reshape(L * H, D),
                       unit_keys(req.key[0], cfg.eps)], 0)  # (L*H + W, D)
        LH = L * H
        tops_r, idx_r, tops_w, idx_w = [], [], [], []
        # a key shorter than full_key_norm (0 < f < 1) scores in proportion to its length
        shrunk = lambda f: f if bool(((f > 0) & (f < 1)).any()) else None
        answers = self._native_scores(q, LH, k_read, k_write, shrunk(f_read), shrunk(f_write))
        for start in range(0, N if answers is None else 0, self.chunk):
            sim = q @ self.unit[start:start + self.chunk].T  # (L*H + W, C), rows contiguous for top-k
            c = sim.shape[1]
            fr, fw = shrunk(f_read[start:start + c]), shrunk(f_write[start:start + c])
            t, i = stable_topk(sim[:LH] if fr is None else sim[:LH] * fr, min(k_read, c))
            tops_r.append(t), idx_r.append(i + start)
            t, i = stable_topk(sim[LH:] if fw is None else sim[LH:] * fw, min(k_write, c))
            tops_w.append(t), idx_w.append(i + start)
        (top_r, r_index), (top_w, c_index) = answers or (merge_candidates(tops_r, idx_r, k_read),
                                                         merge_candidates(tops_w, idx_w, k_write))

        # the read: values of the kept slots at their current scale (and of the window's own earlier writes)
        slots = MemoryState(self.keys[None], self.values[None], self.age[None], self.usage[None],
                            None if self.retained is None else self.retained[None])  # allocation reads age, usage, retained
        alloc = bank.allocate(slots, W)[0]  # (W,)
        r_index, top_r = r_index.view(1, L, H, k_read), top_r.view(1, L, H, k_read)
        vals = self.values[r_index] * scale[r_index].unsqueeze(-1)  # (1, L, H, K, D)
        if req.pos is not None:  # merge with the top-k of the window's writes, as MultiHeadMemoryBank.read does
            top_p, idx_p = pending_top_scores(queries.float(), req, k_read, cfg.eps, cfg.full_key_norm)
            top_r, pick = stable_topk(torch.cat([top_r, top_p], -1), k_read)
            src = torch.cat([r_index, idx_p + N], -1).gather(-1, pick)  # (1, L, H, K) into [slots; writes]
            pend = req.value[0].float() * req.gate[0].float().unsqueeze(-1)  # (W, D)
            vals = torch.cat([vals, pend[idx_p]], -2).gather(-2, pick.unsqueeze(-1).expand(*pick.shape, D))
            r_index = torch.where(src >= N, alloc[(src - N).clamp(min=0)], src)
        r_weight = torch.softmax(top_r * bank.read_sharpness.view(1, 1, -1, 1), dim=-1)
        vectors = (r_weight.unsqueeze(-1) * vals).sum(-2)  # (1, L, H, D)
        v = valid.to(r_weight.dtype)  # (1, L)
        w = (r_weight * v[:, :, None, None]).reshape(1, -1)
        mass = torch.zeros(1, N, device=self.keys.device).scatter_add(1, r_index.reshape(1, -1), w)
        mass = mass / v.sum(1, keepdim=True).clamp(min=1.0)  # (1, N)

        # the write: content top-k mixed with the stalest slots, erase then add on the touched rows only
        key, value, erase = q[LH:], req.value[0].float(), req.erase[0].float()  # (W, D), unit keys as in write()
        gate, update = req.gate[0].float(), req.update[0].float()  # (W,)
        c_weight = torch.softmax(top_w * bank.write_sharpness, dim=-1)  # (W, K)
        index = torch.cat([c_index, alloc.unsqueeze(-1)], -1)  # (W, K+1)
        weight = torch.cat([update.unsqueeze(-1) * c_weight, (1 - update).unsqueeze(-1)], -1) * gate.unsqueeze(-1)
        flat_index, flat_w = index.reshape(-1), weight.reshape(-1)  # (W*(K+1),)
        spread = lambda x: x.unsqueeze(1).expand(-1, k_write + 1, -1).reshape(-1, D)  # (W, D) -> (W*(K+1), D)
        rows, inv = torch.unique(flat_index, return_inverse=True)  # (U,) touched slots
        acc = lambda x: torch.zeros(rows.numel(), D, device=x.device).index_add_(0, inv, flat_w.unsqueeze(-1) * spread(x))
        keep = 1.0 - acc(erase).clamp(max=1.0)  # (U, D)
        s_rows = log_post[rows].exp().float().unsqueeze(-1)  # (U, 1)
        new_keys = self.keys[rows] * s_rows * keep + acc(key)
        new_values = self.values[rows] * s_rows * keep + acc(value)
        self.log_scale = log_post
        self.log_scale[rows] = 0.0
        self.keys[rows], self.values[rows] = new_keys, new_values
        self.norm[rows] = new_keys.norm(dim=-1)
        self.unit[rows] = new_keys / self.norm[rows].clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)

        # bookkeeping, as the functional write does it
        strength = torch.zeros(N, device=self.keys.device).scatter_add(0, flat_index, flat_w)
        events = strength >= cfg.write_threshold
        self.age = torch.where(events, torch.zeros_like(self.age), self.age + 1.0)
        if self.retained is not None:
            self.retained = torch.where(events, torch.ones_like(self.retained), self.retained * retention)
        self.usage = (cfg.usage_decay * self.usage + strength + mass[0] / H).clamp(0.0, 1.0)
        self.segments += 1
        return ReadResult(vectors, r_index, r_weight)
