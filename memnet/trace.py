"""`MemoryTrace`: the recorded memory I/O of one forward pass, segment by segment.

Everything the book plots and every memory metric is computed from a trace, never
from the model's private attributes. Shapes: B batch, S segments, L segment_len,
H mem_heads, K top_k, N num_slots, W writes per segment.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .addressing import sparse_to_dense
from .memory import Segments, StepResult, WriteRequest, stack_requests


@dataclass(frozen=True)
class MemoryTrace:
    """Per-segment memory I/O.

    read_index, read_weight: (B, S, L, H, K) top-k read addressing of every token
    valid: (B, S, L) bool, real (not padding) tokens
    write_pos: (B, S, W) offset inside the window of the token behind each write
    write_gate, write_update, write_erase: (B, S, W) gate, update share and mean erase of each write
    write_alloc: (B, S, W) slot allocated to each write
    write_strength: (B, S, N) gated write weight received by each slot
    write_events: (B, S, N) bool, slots whose age was reset (a new content's birth)
    retention: (B, S, N) retention gate applied before the segment's writes
    age, usage: (B, S, N) after the segment's writes
    evidence: (B, S, N) the slots' read evidence after the segment (MemoryState.evidence; zeros unless
        decay_mode is "evidence"), or None in a trace recorded without it
    """

    read_index: Tensor
    read_weight: Tensor
    valid: Tensor
    write_pos: Tensor
    write_gate: Tensor
    write_update: Tensor
    write_erase: Tensor
    write_alloc: Tensor
    write_strength: Tensor
    write_events: Tensor
    retention: Tensor
    age: Tensor
    usage: Tensor
    evidence: Tensor | None = None

    @property
    def num_slots(self) -> int:
        return self.write_strength.shape[-1]

    @property
    def num_segments(self) -> int:
        return self.write_strength.shape[1]

    def read_weights_dense(self) -> Tensor:
        """(B, S, L, H, N) dense read weights (padding tokens are zero)."""
        w = self.read_weight * self.valid[..., None, None]
        return sparse_to_dense(self.read_index, w, self.num_slots)

    def read_mass(self) -> Tensor:
        """(B, S, H, N) mean read weight per slot over the real tokens of each segment."""
        dense = self.read_weights_dense().sum(2)  # (B, S, H, N)
        n = self.valid.sum(-1).clamp(min=1)[..., None, None]
        return dense / n

    def _map(self, fn) -> "MemoryTrace":
        """The trace of ``fn(t)`` for every tensor (an absent one stays None)."""
        return MemoryTrace(**{k: None if t is None else fn(t) for k, t in self.as_dict().items()})

    def to(self, *args, **kwargs) -> "MemoryTrace":
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "MemoryTrace":
        return self._map(lambda t: t.detach())

    def as_dict(self) -> dict[str, Tensor | None]:
        """Field name -> tensor (for saving with torch.save / numpy); None for an absent one."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of_segments(cls, req: WriteRequest, valid: Tensor, seg: Segments) -> "MemoryTrace":
        """The trace (detached) of S memory steps: their writes as one request of (B, S, W, ...)
        fields, valid (B, S, L) and their stacked :class:`~memnet.memory.Segments`. A request without
        ``pos`` records its writes at offsets 0..W-1."""
        B, S, W = req.gate.shape
        pos = req.pos if req.pos is not None else torch.arange(W, device=req.gate.device).expand(B, S, -1)
        return cls(read_index=seg.read_index, read_weight=seg.read_weight, valid=valid, write_pos=pos,
                   write_gate=req.gate, write_update=req.update, write_erase=req.erase.mean(-1),
                   write_alloc=seg.write_alloc, write_strength=seg.write_strength, write_events=seg.write_events,
                   retention=seg.retention, age=seg.age, usage=seg.usage, evidence=seg.evidence).detach()

    @classmethod
    def of_steps(cls, requests: list[WriteRequest], valid: list[Tensor], steps: list[StepResult]) -> "MemoryTrace":
        """The trace (detached) of S memory steps: each segment's request, valid mask (B, L) and
        :class:`~memnet.memory.StepResult` (:meth:`of_segments` of them stacked)."""
        return cls.of_segments(stack_requests(requests), torch.stack(list(valid), dim=1), Segments.of_steps(steps))
