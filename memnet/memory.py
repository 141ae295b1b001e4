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
slots) with allocation of a slot (``cfg.allocation``: the stalest by age and usage, or the one
holding its content most weakly, which decay decides); the write is gated,
with a learned erase factor, and only a write whose strength passes ``write_threshold``
counts as an event that resets the slot's age, so weak writes keep landing on stale slots. Before writing, every slot is scaled by a learnable retention gate.
All updates are functional: a `MemoryState` passed in is never modified.

One segment of memory is one step, :meth:`MultiHeadMemoryBank.step`: read with the memory as it
stands, then write. Its inputs (a `MemoryState`, the queries, a `WriteRequest`, the valid mask) and
its output (a `StepResult`) are pytrees of tensors. :meth:`MultiHeadMemoryBank.scan` takes the steps of
a call's segments, as MemNet and the book drive it: on the CPU as one compiled call each way
(:func:`memnet.fused.scan`), elsewhere as :func:`run_segments`, the loop of steps.
:class:`StreamingMemory` takes the same step in place, for inference, from the same parts
(:func:`read_mass`, :func:`write_weights`, :func:`erase_then_add`, :func:`bookkeeping`). Which slots a query finds is :mod:`memnet.addressing`.
"""
from __future__ import annotations

import math
from dataclasses import InitVar, dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils import _pytree as pytree

from .addressing import (  # noqa: F401  (the addressing names are also importable from here)
    BLOCKED_MIN_N, NATIVE_MIN_SLOTS, SORT_MAX_N, TOPK_BLOCK, TOPK_CHUNK, blocked_topk, cosine_scores_topk,
    cosine_top_scores, cosine_topk, flat_rows, gather_slots, merge_candidates, pending_top_scores, scan_unit_keys,
    sorted_topk, sparse_to_dense, stable_topk, torch_stable_topk, unit_keys)
from . import fused
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
TENSOR_FIELDS = ("keys", "values", "age", "usage", "retained", "segments", "evidence")  # MemoryState's tensors, in order
# decay_mode "evidence": the age a slot's retention sees is capped here (windows), and its two learned weights
# (on read evidence and on age) enter the logit times EVIDENCE_SCALE, so that an optimiser's steps of about
# its learning rate move the logit by a useful amount (a weight of 1 is 10 logits)
EVIDENCE_AGE_CAP = 8.0
EVIDENCE_SCALE = 10.0


@dataclass(frozen=True)
class MemoryState:
    """What the memory carries from one segment (or call, episode, task) to the next.

    keys:   (B, N, D) float32, what a slot is addressed by, in [-STATE_MAX_ABS, STATE_MAX_ABS]
    values: (B, N, D) float32, what a read of the slot returns, in [-STATE_MAX_ABS, STATE_MAX_ABS]
    age:    (B, N) float32 in [0, COUNT_MAX], segments since the slot's last write event (integer valued)
    usage:  (B, N) float32 in [0, 1], decaying trace of read and write weight
    retained: (B, N) float32 in [0, 1], product of the retention gates since the slot's last write
            event (1 for a fresh slot); with ``allocation = "weakest"``, that product times the
            strength of the event (capped at 1): how strongly the slot still holds its content, 0 for
            a slot never written. None when constructed means all ones
    segments: (B,) float32 in [0, COUNT_MAX], windows this memory has seen (integer valued; what
            MemNet's segment codes are counted from); None when constructed means zeros
    evidence: (B, N) float32 in [0, 1], what reads revealed of the slot since its last write event:
            the strongest read hit it received (:func:`read_hits`), 0 after a write event. Kept with
            ``decay_mode = "evidence"``, whose retention weighs it; zeros otherwise. None when
            constructed means zeros
    signature: the config the state was made for, as :meth:`MemNetConfig.memory_signature` gives it
            (a tuple of ``(field, value)`` pairs, not a tensor); a model rejects a state made for
            another config. None: unknown (a state built by hand), checked by its shapes and values only.

    The signature is an init-only argument kept as a plain attribute, so that ``dataclasses.fields``
    (and what iterates it) still sees the seven tensors only. Every method here that makes a new state
    keeps it; ``dataclasses.replace`` does not unless given ``signature=state.signature``.
    """

    keys: Tensor
    values: Tensor
    age: Tensor
    usage: Tensor
    retained: Tensor | None = None
    segments: Tensor | None = None
    evidence: Tensor | None = None
    signature: InitVar[tuple | None] = None

    def __post_init__(self, signature: tuple | None) -> None:
        object.__setattr__(self, "signature", signature)
        if self.retained is None and isinstance(self.age, Tensor):
            object.__setattr__(self, "retained", torch.ones_like(self.age))
        if self.segments is None and isinstance(self.age, Tensor) and self.age.dim() >= 1:
            object.__setattr__(self, "segments", self.age.new_zeros(self.age.shape[:1]))
        if self.evidence is None and isinstance(self.age, Tensor):
            object.__setattr__(self, "evidence", torch.zeros_like(self.age))

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def tensors(self) -> tuple[Tensor, ...]:
        """The seven tensors (keys, values, age, usage, retained, segments, evidence), in that order."""
        return tuple(getattr(self, f) for f in TENSOR_FIELDS)

    def _map(self, fn) -> "MemoryState":
        """A state of ``fn(t)`` for each of the seven tensors, with the same signature."""
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
    """One segment's reads. vectors: (B, L, H, D); index, weight: (B, L, H, K) sparse weights;
    score: (B, L, H, K) the kept candidates' scores before the softmax (what :func:`read_hits`
    weighs), or None where a path does not return them."""

    vectors: Tensor
    index: Tensor
    weight: Tensor
    score: Tensor | None = None


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


@dataclass(frozen=True)
class StepResult:
    """What one memory step (:meth:`MultiHeadMemoryBank.step`) gives back: the state after the
    segment's writes, the segment's reads, what the writes did, and read_mass (B, N): the read
    weight each slot received per real token, summed over heads (:func:`read_mass`)."""

    state: MemoryState
    read: ReadResult
    write: WriteResult
    read_mass: Tensor


@dataclass(frozen=True)
class Segments:
    """What the steps of S segments gave back, stacked along dim 1 (:meth:`MultiHeadMemoryBank.scan`).

    vectors (B, S, L, H, D); read_index, read_weight (B, S, L, H, K); read_score (B, S, L, H, K) or
    None; read_mass, write_strength, write_events (bool), retention (B, S, N); write_alloc (B, S, W);
    age, usage, evidence (B, S, N): the state's counts after each segment's writes."""

    vectors: Tensor
    read_index: Tensor
    read_weight: Tensor
    read_score: Tensor | None
    read_mass: Tensor
    write_strength: Tensor
    write_events: Tensor
    write_alloc: Tensor
    retention: Tensor
    age: Tensor
    usage: Tensor
    evidence: Tensor

    @classmethod
    def of_steps(cls, steps: Sequence[StepResult]) -> "Segments":
        """The stacked results of S steps, in order."""
        stack = lambda ts: torch.stack(list(ts), dim=1)  # noqa: E731
        scores = [st.read.score for st in steps]
        return cls(stack(st.read.vectors for st in steps), stack(st.read.index for st in steps),
                   stack(st.read.weight for st in steps), None if any(t is None for t in scores) else stack(scores),
                   stack(st.read_mass for st in steps), stack(st.write.strength for st in steps),
                   stack(st.write.events for st in steps), stack(st.write.alloc for st in steps),
                   stack(st.write.retention for st in steps), stack(st.state.age for st in steps),
                   stack(st.state.usage for st in steps), stack(st.state.evidence for st in steps))


def stack_requests(requests: Sequence[WriteRequest]) -> WriteRequest:
    """S requests of (B, W, ...) fields -> one of (B, S, W, ...) fields (pos None unless every one has it)."""
    pos = [r.pos for r in requests]
    return WriteRequest(*(torch.stack([getattr(r, f) for r in requests], dim=1)
                          for f in ("key", "value", "gate", "erase", "update", "decay")),
                        None if any(p is None for p in pos) else torch.stack(pos, dim=1))


def unbind_requests(req: WriteRequest) -> list[WriteRequest]:
    """A request of (B, S, W, ...) fields -> the S requests of its segments (views; unbind's backward
    stacks their gradients in one go)."""
    fields_ = [req.key, req.value, req.gate, req.erase, req.update, req.decay]
    parts = [t.unbind(1) for t in fields_] + [req.pos.unbind(1) if req.pos is not None else [None] * req.gate.shape[1]]
    return [WriteRequest(*f) for f in zip(*parts)]


# the step's inputs and outputs as pytrees (torch.utils._pytree), so that tracers and compilers see their
# tensors as leaves; a state's signature is the context of its node, so it survives flattening
pytree.register_pytree_node(MemoryState, lambda s: (list(s.tensors()), s.signature),
                            lambda leaves, signature: MemoryState(*leaves, signature=signature),
                            serialized_type_name="memnet.memory.MemoryState")
for _cls in (ReadResult, WriteRequest, WriteResult, StepResult):
    pytree.register_dataclass(_cls, serialized_type_name=f"memnet.memory.{_cls.__name__}")


# ---------------------------------------------------------------------------- the parts of a step
def read_mass(index: Tensor, weight: Tensor, valid: Tensor, num_slots: int) -> Tensor:
    """(B, N) read weight each slot received per real token, summed over heads: the reads' sparse
    weights index, weight (B, L, H, K) summed over the tokens with `valid` (B, L) true, divided by
    their number (at least 1). Padding tokens add nothing."""
    B = index.shape[0]
    v = valid.to(weight.dtype)  # (B, L)
    w = (weight * v[:, :, None, None]).reshape(B, -1)
    mass = torch.zeros(B, num_slots, device=index.device).scatter_add(1, index.reshape(B, -1), w)
    return mass / v.sum(1, keepdim=True).clamp(min=1.0)


def read_hits(index: Tensor, weight: Tensor, score: Tensor, valid: Tensor, num_slots: int) -> Tensor:
    """(B, N) the strongest read hit each slot received in a segment: for each real token (`valid`
    (B, L)), the read weight (B, L, H, K) times the score (clamped at 0) the slot was kept with,
    averaged over the heads, then the maximum over the tokens. A query that finds its slot in every
    head scores near its cosine; one that matches nothing spreads low scores, so a slot's hit tells a
    read that found it from the reads that only passed by. No gradient flows."""
    B, L, H, K = index.shape
    hit = (weight.detach().float() * score.detach().float().clamp(min=0.0) / H
           * valid[:, :, None, None].to(weight.dtype))  # (B, L, H, K)
    per_token = torch.zeros(B, L, num_slots, device=index.device).scatter_add(2, index.reshape(B, L, H * K),
                                                                              hit.reshape(B, L, H * K))
    return per_token.amax(1).clamp(0.0, 1.0)


def window_index(src: Tensor, alloc: Tensor, num_slots: int) -> Tensor:
    """Read addresses src (B, L, H, K) into [slots; the window's writes] -> slots: an address
    ``num_slots + j`` is write j, which lands in the slot allocation gives it, alloc (B, W)."""
    B = src.shape[0]
    landed = alloc.gather(1, (src - num_slots).clamp(min=0).view(B, -1)).view(src.shape)
    return torch.where(src >= num_slots, landed, src)


def write_weights(c_index: Tensor, c_weight: Tensor, alloc: Tensor, update: Tensor,
                  gate: Tensor) -> tuple[Tensor, Tensor]:
    """Where each write lands and how strongly: its content top-k c_index, c_weight (..., W, K)
    taking the share `update` (..., W) and its allocated slot alloc (..., W) the rest, all scaled by
    its gate (..., W). Returns index and weight (..., W, K+1)."""
    index = torch.cat([c_index, alloc.unsqueeze(-1)], dim=-1)  # (..., W, K+1)
    weight = torch.cat([update.unsqueeze(-1) * c_weight, (1 - update).unsqueeze(-1)], dim=-1)
    return index, weight * gate.unsqueeze(-1)  # (..., W, K+1) gated write weights


def erase_then_add(keys: Tensor, values: Tensor, rows: Tensor, weight: Tensor, erase: Tensor, key: Tensor,
                   value: Tensor) -> tuple[Tensor, Tensor]:
    """All writes at once: ``M <- M * (1 - sum_j w_j e_j) + sum_j w_j x_j`` on the rows written.

    keys, values: (R, D) the bank's rows; weight (..., W, J) of write w on its j-th target, whose
    row is rows (M,) (the flattened (..., W, J) order); erase, key, value (..., W, D). Returns the
    new keys and values (R, D). The erase of a row is clamped at 1 (a row is at most wiped).
    """
    R, D = keys.shape
    # (..., W, D) -> the weighted (R, D) sum of its rows at their targets; index_add moves whole rows
    acc = lambda x: keys.new_zeros(R, D).index_add(0, rows, (weight.unsqueeze(-1) * x.unsqueeze(-2)).reshape(-1, D))
    keep = 1.0 - acc(erase).clamp(max=1.0)
    return keys * keep + acc(key), values * keep + acc(value)


def update_evidence(evidence: Tensor, hits: Tensor, events: Tensor) -> Tensor:
    """(..., N) the evidence after a segment: the larger of `evidence` and the segment's `hits`
    (:func:`read_hits`; the reads come before the writes), and 0 where `events` (bool) reset a slot."""
    return torch.where(events, torch.zeros_like(evidence), torch.maximum(evidence, hits.detach().float()))


def bookkeeping(age: Tensor, usage: Tensor, retained: Tensor | None, retention: Tensor, strength: Tensor,
                read_mass: Tensor | None, write_threshold: float,
                usage_decay: float, held: bool = False, evidence: Tensor | None = None,
                hits: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-slot counts after a segment's writes, all (..., N): a write of `strength` at least
    `write_threshold` is an event that resets the slot's age (else it grows by 1) and its retained
    fraction to 1, or with `held` to the event's strength capped at 1 (else scaled by `retention`);
    usage decays by `usage_decay` and gains the write strength and `read_mass`, clamped to [0, 1];
    `evidence` becomes the larger of itself and the segment's `hits` (:func:`read_hits`, the reads
    come before the writes), and 0 at an event (hits None: unchanged). `retained` or `evidence` None
    stays None. No gradient flows. Returns events (bool), age, usage, retained, evidence."""
    strength = strength.detach()
    events = strength >= write_threshold
    age = torch.where(events, torch.zeros_like(age), age + 1.0)
    if retained is not None:
        fresh = strength.clamp(max=1.0) if held else torch.ones_like(retained)
        retained = torch.where(events, fresh, retained * retention.detach())
    usage = usage_decay * usage + strength
    if read_mass is not None:
        usage = usage + read_mass.detach().float()
    if evidence is not None and hits is not None:
        evidence = update_evidence(evidence, hits, events)
    return events, age, usage.clamp(0.0, 1.0), retained, evidence


def run_segments(step: Callable[[MemoryState, Tensor, WriteRequest, Tensor], StepResult], state: MemoryState,
                 queries: Sequence[Tensor], requests: Sequence[WriteRequest], valid: Sequence[Tensor],
                 detach_every: int | None = None) -> tuple[MemoryState, list[StepResult]]:
    """The loop over segments: ``step`` (a bank's :meth:`~MultiHeadMemoryBank.step`, or a compiled
    one) on each segment's queries (B, L, H, D), request and valid mask (B, L), the state passing
    from one to the next. With `detach_every` k the state is cut from the autograd graph before
    every k-th segment (truncated backprop). Returns the last state and every step's result."""
    results = []
    for s, (q, req, v) in enumerate(zip(queries, requests, valid)):  # the only loop over time
        if detach_every is not None and s > 0 and s % detach_every == 0:
            state = state.detach()
        out = step(state, q, req, v)
        state = out.state
        results.append(out)
    return state, results


class MultiHeadMemoryBank(nn.Module):
    """Slot memory with multi-head top-k reads and gated, allocating, decaying writes.

    Parameters: per-head read sharpness, a write sharpness, and a slot-wise retention logit
    (the learnable decay gate; the controller's decay direction modulates it by content); with
    ``decay_mode = "evidence"`` also the retention's weights on read evidence and on age.
    """

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        self.cfg = cfg
        H, N = cfg.mem_heads, cfg.num_slots
        self.log_read_sharpness = nn.Parameter(torch.full((H,), math.log(cfg.sharpness_init)))
        self.log_write_sharpness = nn.Parameter(torch.full((1,), math.log(cfg.sharpness_init)))
        logit = torch.full((N,), float(cfg.decay_init))
        # step() on the CPU takes the compiled kernel of memnet.fused (same values and gradients, one call
        # each way); False keeps it on the torch operations of reference_step()
        self.fused = True
        if cfg.decay_mode in ("learned", "evidence"):
            self.decay_logit = nn.Parameter(logit)
        else:  # "fixed" / "none": nothing to learn; a buffer of the same name keeps state_dict keys and device
            self.register_buffer("decay_logit", logit)
        if cfg.decay_mode == "evidence":  # the retention logit's weights on read evidence and on age, 0 at init
            self.evidence_weight = nn.Parameter(torch.zeros(()))
            self.age_weight = nn.Parameter(torch.zeros(()))

    # ------------------------------------------------------------------ state
    @property
    def holds_strength(self) -> bool:
        """Whether a state's ``retained`` is what a slot holds (``allocation = "weakest"``: an event
        sets it to the event's strength, an empty slot holds 0) rather than the retained fraction."""
        return self.cfg.allocation == "weakest"

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """Empty memory: zero keys and values, age 0, usage 0, retained 1 (0 with ``allocation =
        "weakest"``, where it is what a slot holds)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        device = device if device is not None else self.decay_logit.device
        N, D = self.cfg.num_slots, self.cfg.slot_dim
        z = torch.zeros(batch_size, N, device=device)
        held = z.clone() if self.holds_strength else torch.ones_like(z)  # an empty slot holds nothing
        return MemoryState(torch.zeros(batch_size, N, D, device=device), torch.zeros(batch_size, N, D, device=device),
                           z, z.clone(), held, torch.zeros(batch_size, device=device), z.clone(),
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
                 "segments": ((), "(B,)"), "evidence": scalars}
        for f, (tail, shape) in tails.items():  # tensors of the right rank and trailing shape, before indexing shapes
            t = getattr(state, f)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}.{f} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1 + len(tail) or tuple(t.shape[1:]) != tail:
                raise ValueError(f"{name}.{f} must have shape {shape}, got {tuple(t.shape)}")
        if state.batch_size != batch_size:
            raise ValueError(f"{name} was made for batch size {state.batch_size}, but tokens have batch size {batch_size}")
        for f in ("values", "age", "usage", "retained", "segments", "evidence"):
            t = getattr(state, f)
            if t.shape[0] != batch_size:
                raise ValueError(f"{name}.{f} has shape {tuple(t.shape)}, expected batch {batch_size} and {N} slots")
        self._check_signature(state.signature, name)
        slot_range = (-STATE_MAX_ABS, STATE_MAX_ABS, f"in [-{STATE_MAX_ABS:g}, {STATE_MAX_ABS:g}] (STATE_MAX_ABS)")
        ranges = {"keys": slot_range, "values": slot_range,
                  "age": (0.0, COUNT_MAX, f">= 0 and <= {COUNT_MAX:g} (segments since the last write; COUNT_MAX)"),
                  "usage": (0.0, 1.0, "in [0, 1]"), "retained": (0.0, 1.0, "in [0, 1]"),
                  "segments": (0.0, COUNT_MAX, f">= 0 and <= {COUNT_MAX:g} (windows seen; COUNT_MAX)"),
                  "evidence": (0.0, 1.0, "in [0, 1]")}
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
            top, index = cosine_top_scores(queries, state.keys, cfg.top_k, cfg.eps, full_norm=cfg.full_key_norm)
            weight = torch.softmax(top * self.read_sharpness.view(1, 1, -1, 1), dim=-1)  # as cosine_topk
            vectors = (weight.unsqueeze(-1) * gather_slots(state.values, index)).sum(-2)  # (B, L, H, D)
            return ReadResult(vectors, index, weight, top)
        N = state.keys.shape[1]
        top_b, idx_b = cosine_top_scores(queries, state.keys, cfg.top_k, cfg.eps, full_norm=cfg.full_key_norm)
        top_p, idx_p = pending_top_scores(queries, pending.key, pending.gate, pending.pos, cfg.top_k, cfg.eps,
                                          cfg.full_key_norm)
        top, src = merge_candidates([top_b, top_p], [idx_b, idx_p + N], cfg.top_k)  # (B, L, H, K) into [slots; writes]
        weight = torch.softmax(top * self.read_sharpness.view(1, 1, -1, 1), dim=-1)
        both = torch.cat([state.values, pending.value.float() * pending.gate.float().unsqueeze(-1)], 1)  # (B, N+W, D)
        vectors = (weight.unsqueeze(-1) * gather_slots(both, src)).sum(-2)
        alloc = self.allocate(state, pending.gate.shape[1])  # (B, W)
        return ReadResult(vectors, window_index(src, alloc, N), weight, top)

    # ------------------------------------------------------------------ write
    def retention(self, state: MemoryState, decay: Tensor) -> Tensor:
        """(B, N) retention gate in (0, 1): the slot-wise logit plus the alignment of the slot's key with `decay` (B, D).

        The logit is clamped to [-15, 15] so the gate stays strictly inside (0, 1) in float32
        (an unclamped sigmoid rounds to exactly 0 or 1 for large `decay`: a slot wiped or frozen).
        With ``cfg.decay_mode`` "evidence" the logit also weighs what the slot's reads revealed since
        its last write event and its age (:meth:`slot_logit`). With "fixed" the gate is the
        constant sigmoid(decay_init) and with "none" exactly 1; both ignore `decay` and learn nothing.
        """
        B, N = state.age.shape
        if self.cfg.decay_mode not in ("learned", "evidence"):
            return self._gate(None, B, state.keys.device)
        k = F.normalize(state.keys, dim=-1, eps=self.cfg.eps)
        return self._gate(torch.einsum("bnd,bd->bn", k, decay.float()), B, state.keys.device,
                          self.slot_logit(state.evidence, state.age))

    def slot_logit(self, evidence: Tensor | None, age: Tensor) -> Tensor:
        """The slot-wise retention logit, before the content term: ``decay_logit`` (N,), and with
        ``decay_mode = "evidence"`` (..., N) ``decay_logit + EVIDENCE_SCALE * (evidence_weight * evidence
        + age_weight * min(age, EVIDENCE_AGE_CAP) / EVIDENCE_AGE_CAP)``: two learned weights (0 at
        init) on the strongest read hit since the slot's last write event and on the windows since
        then, so a retention can learn that what has been read is read again, and how long to wait
        for that evidence. `evidence` and `age` are read in that mode only."""
        if self.cfg.decay_mode != "evidence":
            return self.decay_logit
        aged = age.float().clamp(max=EVIDENCE_AGE_CAP) / EVIDENCE_AGE_CAP
        return self.decay_logit + EVIDENCE_SCALE * (self.evidence_weight * evidence.float() + self.age_weight * aged)

    def retention_of_directions(self, unit: Tensor, factor: Tensor, decay: Tensor, evidence: Tensor | None,
                                age: Tensor) -> Tensor:
        """(N,) the retention gate of one sequence's slots given as directions: keys ``unit * length``
        with unit (N, D) of norm 1 (or 0 for an empty slot), factor (N,) = min(length / eps, 1),
        decay (D,), and the slots' evidence and age (N,; read with "evidence" only). Equal to :meth:`retention` of those keys,
        since F.normalize(key, eps) is ``unit * factor``, without forming the keys: one pass over
        `unit`, no (N, D) temporary."""
        if self.cfg.decay_mode not in ("learned", "evidence"):
            return self._gate(None, 1, unit.device)[0]
        return self._gate((factor * (unit @ decay.float()))[None], 1, unit.device, self.slot_logit(evidence, age))[0]

    def _gate(self, alignment: Tensor | None, B: int, device: torch.device, slot: Tensor | None = None) -> Tensor:
        """(B, N) sigmoid of the clamped ``slot + alignment`` (B, N): the slot-wise logit
        (:meth:`slot_logit`, what the compiled step takes as its logit) plus the keys' alignment with
        the decay direction ("learned", "evidence"); the constant gate ("fixed") or ones ("none")
        otherwise."""
        N = self.cfg.num_slots
        if self.cfg.decay_mode == "none":
            return torch.ones(B, N, device=device)
        if self.cfg.decay_mode == "fixed":
            return torch.sigmoid(self.decay_logit.clamp(-RETENTION_LOGIT_MAX, RETENTION_LOGIT_MAX)).expand(B, N)
        logit = slot + alignment
        return torch.sigmoid(logit.clamp(-RETENTION_LOGIT_MAX, RETENTION_LOGIT_MAX))

    def allocation_score(self, state: MemoryState) -> Tensor:
        """(B, N) what allocation ranks, highest first.

        "lru": the staleness (:meth:`MemoryState.staleness`); "faded": the staleness divided by the
        retained fraction of the slot's content (a slot faded to half its strength looks twice as
        stale), so that what decay lets go of is reused first; "weakest": one minus what the slot
        holds (the strength of its last write event times the retention since), so empty slots go
        first, then the most weakly held, whatever their age: a write event displaces only content
        held more weakly than the others, and an old, strongly written slot is kept until decay lets
        it go. Ties go to the lowest index.
        """
        if self.holds_strength:
            return 1.0 - state.retained
        score = state.staleness()
        if self.cfg.allocation == "faded":
            score = score / state.retained.clamp(min=FADED_MIN)
        return score

    def allocate(self, state: MemoryState, n: int) -> Tensor:
        """(B, n) the n slots of highest allocation score, highest first; ties go to the lowest index."""
        return stable_topk(self.allocation_score(state), n)[1]

    def write(self, state: MemoryState, req: WriteRequest, read_mass: Tensor | None = None,
              hits: Tensor | None = None) -> tuple[MemoryState, WriteResult]:
        """Apply one segment's writes. read_mass: (B, N) read weight this segment (feeds usage);
        hits: (B, N) its reads' hits (:func:`read_hits`; feed the evidence, None: unchanged)."""
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
        alloc = self.allocate(state, W)  # (B, W): the strongest write gets the stalest slot
        index, weight = write_weights(c_index[:, 0], c_weight[:, 0], alloc, update, gate)  # (B, W, K+1)

        # 3. erase then add, all writes at once, on the (B*N, D) rows of the bank
        flat_index = index.reshape(B, -1)  # (B, W*(K+1))
        new_keys, new_values = erase_then_add(keys.reshape(B * N, D), values.reshape(B * N, D), flat_rows(flat_index, N),
                                              weight, erase, key, value)

        # 4. bookkeeping: write events reset age; usage is a decaying trace of reads and writes
        strength = torch.zeros(B, N, device=keys.device).scatter_add(1, flat_index, weight.reshape(B, -1))
        events, age, usage, retained, evidence = bookkeeping(
            state.age, state.usage, state.retained, retention, strength, read_mass, cfg.write_threshold,
            cfg.usage_decay, self.holds_strength, state.evidence, hits)
        new_state = MemoryState(new_keys.view(B, N, D), new_values.view(B, N, D), age, usage, retained,
                                state.segments + 1.0, evidence, signature=state.signature)
        return new_state, WriteResult(strength, events, alloc, retention)

    # ------------------------------------------------------------------ the step
    def step(self, state: MemoryState, queries: Tensor, req: WriteRequest, valid: Tensor) -> StepResult:
        """One segment of memory: read with the memory as it stands, then write.

        state: the memory before the segment; queries: (B, L, H, D) the segment's read queries;
        req: its W writes; valid: (B, L) bool, the real (not padding) tokens. With
        ``cfg.window_reads`` and ``req.pos`` given, a read also sees the writes of earlier tokens of
        its window (:meth:`read`). The reads' mass per real token (:func:`read_mass`), divided by the
        heads, feeds usage. The new state keeps `state`'s signature. Everything here is a function
        of its arguments and the bank's parameters, so ``torch.compile(bank.step, fullgraph=True)``
        traces it whole (:meth:`memnet.MemNet.compile_memory`).
        """
        if self.fused and fused.applies([state.keys, queries, req.key, self.decay_logit]):
            return fused.step(self, state, queries, req, valid)
        return self.reference_step(state, queries, req, valid)

    def scan(self, state: MemoryState, queries: Tensor, req: WriteRequest, valid: Tensor,
             detach_every: int | None = None, step: Callable | None = None) -> tuple[MemoryState, Segments]:
        """The steps of S segments, each reading the state the one before wrote (:func:`run_segments`):
        queries (B, S, L, H, D), the writes as one :class:`WriteRequest` of (B, S, W, ...) fields
        (:func:`stack_requests`), valid (B, S, L). With `detach_every` k the state is cut from the
        autograd graph before every k-th segment. Returns the final state and the stacked
        :class:`Segments`. On the CPU the whole loop is one compiled call each way
        (:func:`memnet.fused.scan`: the same step, so the same values); elsewhere, or with `step` given
        (a compiled step), the loop runs :meth:`step` per segment."""
        if step is None and self.fused and fused.applies([state.keys, queries, self.decay_logit]):
            done = fused.scan(self, state, queries, req, valid, detach_every)
            if done is not None:
                return done
        state, steps = run_segments(step or self.step, state, queries.unbind(1), unbind_requests(req),
                                    valid.unbind(1), detach_every)
        return state, Segments.of_steps(steps)

    def reference_step(self, state: MemoryState, queries: Tensor, req: WriteRequest, valid: Tensor) -> StepResult:
        """:meth:`step` as torch operations (what the compiled kernel of :mod:`memnet.fused` agrees with,
        and what runs off the CPU and inside ``torch.compile``)."""
        cfg = self.cfg
        read = self.read(state, queries, req if cfg.window_reads else None)  # vectors (B, L, H, D)
        mass = read_mass(read.index, read.weight, valid, cfg.num_slots)  # (B, N)
        hits = read_hits(read.index, read.weight, read.score, valid, cfg.num_slots) if cfg.decay_mode == "evidence" else None
        new, write = self.write(state, req, mass / cfg.mem_heads, hits)
        return StepResult(new, read, write, mass)


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

    It computes what :meth:`MultiHeadMemoryBank.step` computes, up to float rounding (the retention
    folded into a scale, the scan's dot products; tests/test_model.py checks the agreement); build it from a
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
            self.retained = state.retained[0].clone() if bank.cfg.allocation != "lru" else None
            # (N,) read evidence, kept only where retention reads it
            self.evidence = state.evidence[0].clone() if bank.cfg.decay_mode == "evidence" else None

    def nbytes(self) -> int:
        """Bytes held: stored keys and values, unit keys and the per-slot buffers (constant in tokens seen)."""
        ts = (self.keys, self.values, self.unit, self.log_scale, self.norm, self.age, self.usage, self.retained,
              self.evidence)
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def clone(self) -> "StreamingMemory":
        """An independent copy (same bank), e.g. to branch a stream."""
        new = object.__new__(StreamingMemory)
        new.__dict__.update(self.__dict__)
        for name in ("keys", "values", "log_scale", "norm", "unit", "age", "usage", "retained", "evidence"):
            if getattr(self, name) is not None:
                setattr(new, name, getattr(self, name).clone())
        return new

    def to_state(self) -> MemoryState:
        """The equivalent functional state (batch size 1). With ``allocation = "lru"`` the retained
        fraction is not kept (nothing reads it) and comes back as ones; the evidence is kept only
        with ``decay_mode = "evidence"`` and comes back as zeros otherwise."""
        s = self.log_scale.exp().float().unsqueeze(-1)  # (N, 1)
        return MemoryState((self.keys * s)[None], (self.values * s)[None], self.age[None].clone(),
                           self.usage[None].clone(), None if self.retained is None else self.retained[None].clone(),
                           torch.full((1,), min(float(self.segments), COUNT_MAX), device=self.keys.device),
                           None if self.evidence is None else self.evidence[None].clone(),
                           signature=self.bank.cfg.memory_signature())

    def _addressing_scale(self, scale: Tensor, full_norm: float) -> Tensor:
        """(N,) factor turning unit-key cosines into those of F.normalize(true key, full_norm), for
        slot scales `scale` (N,): a key shorter than `full_norm` scores in proportion to its length."""
        return (self.norm * scale / full_norm).clamp(max=1.0)

    @torch.no_grad()
    def step(self, queries: Tensor, req: WriteRequest, valid: Tensor | None = None) -> ReadResult:
        """Read with the memory as it stands, then apply the segment's writes, in place: the step of
        :meth:`MultiHeadMemoryBank.step` on this representation (its parts: :func:`read_mass`,
        :func:`window_index`, :func:`write_weights`, :func:`erase_then_add`, :func:`bookkeeping`).

        queries: (1, L, H, D); req: a batch-1 WriteRequest of W writes (with ``cfg.window_reads`` and
        ``req.pos`` given, a read also sees the writes of earlier tokens of its window); valid: (1, L)
        bool mask of real tokens (all when None). Returns the reads, as :meth:`MultiHeadMemoryBank.read`.
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
        retention = bank.retention_of_directions(self.unit, self._addressing_scale(scale, cfg.eps), req.decay[0],
                                                 self.evidence, self.age)  # (N,)
        log_post = self.log_scale + retention.double().log()
        f_write = self._addressing_scale(log_post.exp().float(), cfg.full_key_norm)

        # one pass over the unit keys scores the reads' and the content writes' queries together
        q = torch.cat([F.normalize(queries[0].float(), dim=-1, eps=cfg.eps).reshape(L * H, D),
                       unit_keys(req.key[0], cfg.eps)], 0)  # (L*H + W, D)
        use_native = self.native if self.native is not None else N >= NATIVE_MIN_SLOTS
        (top_r, r_index), (top_w, c_index) = scan_unit_keys(q, self.unit, L * H, k_read, k_write, f_read, f_write,
                                                            self.chunk, use_native)

        # the read: values of the kept slots at their current scale (and of the window's own earlier writes)
        slots = MemoryState(self.keys[None], self.values[None], self.age[None], self.usage[None],
                            None if self.retained is None else self.retained[None])  # allocation reads age, usage, retained
        alloc = bank.allocate(slots, W)[0]  # (W,)
        r_index, top_r = r_index.view(1, L, H, k_read), top_r.view(1, L, H, k_read)
        if cfg.window_reads and req.pos is not None:  # merged with the top-k of the window's writes, as bank.read does
            top_p, idx_p = pending_top_scores(queries.float(), req.key, req.gate, req.pos, k_read, cfg.eps,
                                              cfg.full_key_norm)
            # (1, L, H, K) addresses into [slots; writes]
            top_r, src = merge_candidates([top_r, top_p], [r_index, idx_p + N], k_read)
            slot = src.clamp(max=N - 1)
            pend = req.value[0].float() * req.gate[0].float().unsqueeze(-1)  # (W, D)
            vals = torch.where((src >= N).unsqueeze(-1), pend[(src - N).clamp(min=0)],
                               self.values[slot] * scale[slot].unsqueeze(-1))  # (1, L, H, K, D)
            r_index = window_index(src, alloc[None], N)
        else:
            vals = self.values[r_index] * scale[r_index].unsqueeze(-1)  # (1, L, H, K, D)
        r_weight = torch.softmax(top_r * bank.read_sharpness.view(1, 1, -1, 1), dim=-1)
        vectors = (r_weight.unsqueeze(-1) * vals).sum(-2)  # (1, L, H, D)
        mass = read_mass(r_index, r_weight, valid, N)  # (1, N)
        hits = read_hits(r_index, r_weight, top_r, valid, N)[0] if self.evidence is not None else None  # (N,)

        # the write: content top-k mixed with the stalest slots, erase then add on the touched rows only
        key, value, erase = q[L * H:], req.value[0].float(), req.erase[0].float()  # (W, D), unit keys as in write()
        gate, update = req.gate[0].float(), req.update[0].float()  # (W,)
        c_weight = torch.softmax(top_w * bank.write_sharpness, dim=-1)  # (W, K)
        index, weight = write_weights(c_index, c_weight, alloc, update, gate)  # (W, K+1)
        flat_index, flat_w = index.reshape(-1), weight.reshape(-1)  # (W*(K+1),)
        rows, inv = torch.unique(flat_index, return_inverse=True)  # (U,) touched slots
        s_rows = log_post[rows].exp().float().unsqueeze(-1)  # (U, 1)
        new_keys, new_values = erase_then_add(self.keys[rows] * s_rows, self.values[rows] * s_rows, inv, weight,
                                              erase, key, value)
        self.log_scale = log_post
        self.log_scale[rows] = 0.0
        self.keys[rows], self.values[rows] = new_keys, new_values
        self.norm[rows] = new_keys.norm(dim=-1)
        self.unit[rows] = new_keys / self.norm[rows].clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)

        # bookkeeping, as the functional write does it
        strength = torch.zeros(N, device=self.keys.device).scatter_add(0, flat_index, flat_w)
        _, self.age, self.usage, self.retained, self.evidence = bookkeeping(
            self.age, self.usage, self.retained, retention, strength, mass[0] / H, cfg.write_threshold,
            cfg.usage_decay, bank.holds_strength, self.evidence, hits)
        self.segments += 1
        return ReadResult(vectors, r_index, r_weight, top_r)
