"""`MemNet`: encoder -> windowed controller -> memory read -> LayerNorm + residual fusion
-> prediction head, writing to the slot memory at the end of every segment.

The controller never sees past its window, so it runs on all windows of a sequence at
once; the loop over segments (read with the memory as it stands, then write) is the
only Python loop over time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .bottleneck import SemanticBottleneck
from .config import IGNORE_INDEX, MemNetConfig
from .controller import MemoryInterface, MemorySignals, TransformerController
from .encoder import Encoder, check_tokens
from .losses import aux_losses
from .memory import MemoryState, MultiHeadMemoryBank, StreamingMemory, WriteRequest, unbind_requests
from .trace import MemoryTrace


@dataclass
class MemNetOutput:
    """logits (B, T, V); memory: state after the last segment; aux_losses: weighted
    scalars; trace: per-segment memory I/O when asked for."""

    logits: Tensor
    memory: MemoryState | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    trace: MemoryTrace | None = None


def segment(tokens: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """(B, T) -> padded windows (B, S, L) and their validity mask (B, S, L)."""
    B, T = tokens.shape
    S = -(-T // L)
    padded = F.pad(tokens, (0, S * L - T))
    valid = (torch.arange(S * L, device=tokens.device) < T).view(1, S, L).expand(B, -1, -1)
    return padded.view(B, S, L), valid


class WindowSignals(NamedTuple):
    """Everything the controller emits for a call, before the loop over segments: states h
    (B, S, L, D), the validity mask (B, S, L), the per-token :class:`MemorySignals`, and each
    window's W write requests: positions, gates (B, S, W) and keys, values, erases (B, S, W, Dm),
    updates (B, S, W)."""

    h: Tensor
    valid: Tensor
    sig: MemorySignals
    pos: Tensor
    gate: Tensor
    key: Tensor
    value: Tensor
    erase: Tensor
    update: Tensor


def take(x: Tensor, pos: Tensor) -> Tensor:
    """x (B, S, L, ...) at positions pos (B, S, H) along L -> (B, S, H, ...)."""
    idx = pos.view(*pos.shape, *([1] * (x.dim() - 3))).expand(*pos.shape, *x.shape[3:])
    return x.gather(2, idx)


class MemNet(nn.Module):
    """A windowed Transformer with an explicit multi-head slot memory.

    ``model(tokens)`` with tokens (B, T) of any T >= 1 returns a :class:`MemNetOutput`.
    Pass ``memory=out.memory`` to continue a sequence; a sequence split at multiples of
    ``segment_len`` gives the same logits in pieces as in one call.

    interface: the module that turns the controller's states into write requests and read
    queries (default :class:`~memnet.controller.MemoryInterface`); a subclass changes where and
    what the memory is asked, as :class:`memnet.continual.SegmentEndWrites` does for item streams.
    """

    def __init__(self, cfg: MemNetConfig, interface: nn.Module | None = None):
        super().__init__()
        if not isinstance(cfg, MemNetConfig):
            raise TypeError(f"cfg must be a MemNetConfig, got {type(cfg).__name__}")
        if interface is not None and not isinstance(interface, MemoryInterface):
            raise TypeError(f"interface must be a MemoryInterface (or a subclass), got {type(interface).__name__}")
        self.cfg = cfg
        D, Dm, H = cfg.d_model, cfg.slot_dim, cfg.mem_heads
        self.encoder = Encoder(cfg.vocab_size, D, cfg.segment_len, cfg.dropout)
        # which window of the stream: one code per early window, the last shared by all later ones
        self.segment_code = nn.Embedding(cfg.segment_codes, D) if cfg.segment_codes > 0 else None
        if self.segment_code is not None:
            nn.init.normal_(self.segment_code.weight, std=0.02)
        self.controller = TransformerController(cfg)
        self.interface = MemoryInterface(cfg) if interface is None else interface
        self.bottleneck = SemanticBottleneck(cfg)
        self.memory = MultiHeadMemoryBank(cfg)
        self.read_norm = nn.LayerNorm(H * Dm)
        self.fuse = nn.Linear(H * Dm, D)
        self.fuse_mlp = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.ln_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, cfg.vocab_size)
        self._compiled_step = None  # set by compile_memory()

    def compile_memory(self, **compile_kwargs) -> "MemNet":
        """Compile the per-segment memory step (the read, then the write: :meth:`MultiHeadMemoryBank.step`)
        with ``torch.compile(**compile_kwargs)`` and use it in :meth:`forward`; returns the model.

        The loop over segments stays in Python; what compiles is the body that it runs once per
        segment, dozens of small operations forward and backward. On CPU this takes the per-segment
        overhead down (``python -m memnet.bench`` measures it); the first call of every new shape
        compiles (tens of seconds). Under compilation the top-k selections take the stable sort
        (:func:`memnet.addressing.stable_topk`), with the same tie rule, so the compiled step computes
        what the eager one does up to float rounding. :meth:`stream` is not affected.
        """
        self._compiled_step = torch.compile(self.memory.step, **compile_kwargs)
        return self

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """An empty memory for `batch_size` sequences."""
        return self.memory.initial_state(batch_size, device)

    def signals(self, tokens: Tensor, seen: Tensor | None = None) -> WindowSignals:
        """What the memory is asked for every window of ``tokens`` (B, T): the hook between the
        controller and the memory, which :meth:`forward` and :meth:`stream` call once per call and
        a subclass may override to change how keys and queries are formed (as
        :class:`memnet.continual.StreamMemNet` does with fixed addresses).

        The controller over every window at once (it never looks past its window) and each window's
        write requests: its top-W tokens by write score (all tokens by default), strongest first;
        gate = sigmoid(score), so padding (score -inf) never writes. With ``cfg.write_tokens`` only
        the tokens of that id range are candidates, and they write at gate 1 with update 0 (each
        takes the slot that allocation gives it): what is written is fixed, what is kept is not.
        seen (B,): windows the memory has seen before these tokens (where the segment codes count
        from; None: none, a fresh memory)."""
        cfg = self.cfg
        B = tokens.shape[0]
        L = cfg.segment_len
        windows, valid = segment(tokens, L)  # (B, S, L)
        S = windows.shape[1]
        x = self.encoder(windows)  # (B, S, L, D)
        if self.segment_code is not None:  # window s of the stream gets code min(s, segment_codes - 1)
            seen = torch.zeros(B, device=tokens.device) if seen is None else seen
            index = (seen.long().view(B, 1) + torch.arange(S, device=tokens.device)).clamp(max=cfg.segment_codes - 1)
            x = x + self.segment_code(index).unsqueeze(2).to(x.dtype)  # (B, S, 1, D)
        h = self.controller(x.view(B * S, L, -1)).view(B, S, L, -1)
        sig = self.interface(h, valid)
        if cfg.write_tokens is None:
            score, pos = sig.write_score.topk(cfg.writes, dim=-1)  # (B, S, W)
            gate = torch.sigmoid(score)
        else:  # a fixed write schedule: the chosen tokens write at gate 1, the rest not at all
            lo, hi = cfg.write_tokens
            chosen = (windows >= lo) & (windows < hi) & valid  # (B, S, L)
            pos = sig.write_score.masked_fill(~chosen, float("-inf")).topk(cfg.writes, dim=-1).indices
            gate = chosen.gather(2, pos).to(h.dtype)  # (B, S, W): 0 where a window has fewer chosen tokens than W
        value = self.bottleneck(take(h, pos))  # (B, S, W, Dm)
        key, erase = take(sig.write_key, pos), take(sig.erase, pos)
        # a fixed schedule writes each chosen token into a slot of its own: allocation only, no residual update
        update = take(sig.update, pos) if cfg.write_tokens is None else torch.zeros_like(gate)
        return WindowSignals(h, valid, sig, pos, gate, key, value, erase, update)

    @staticmethod
    def _request(ws: WindowSignals) -> WriteRequest:
        """Every window's writes as one :class:`WriteRequest` of (B, S, W, ...) fields."""
        return WriteRequest(ws.key, ws.value, ws.gate, ws.erase, ws.update, ws.sig.decay, ws.pos)

    @classmethod
    def _segments(cls, ws: WindowSignals) -> tuple[list[Tensor], list[WriteRequest], list[Tensor]]:
        """Per segment: the read queries (B, L, H, Dm), the :class:`WriteRequest` and the valid mask (B, L).

        Views made once: unbind's backward stacks the S gradients in one go, where S slices x[:, s]
        would each materialise a zero gradient of the whole tensor (O(S^2) in backward)."""
        return list(ws.sig.read_query.unbind(1)), unbind_requests(cls._request(ws)), list(ws.valid.unbind(1))

    def _logits(self, h: Tensor, read: Tensor, T: int) -> Tensor:
        """The reads (B, S, L, H, Dm), LayerNorm'd and fused residually into the controller's stream ->
        logits (B, T, V)."""
        B, S, L = h.shape[:3]
        z = h + self.fuse(self.read_norm(read.reshape(B, S, L, -1).to(h.dtype)))
        z = z + self.fuse_mlp(z)
        return self.head(self.ln_out(z)).view(B, S * L, -1)[:, :T]

    def forward(self, tokens: Tensor, memory: MemoryState | None = None, return_trace: bool = False) -> MemNetOutput:
        """tokens (B, T) -> :class:`MemNetOutput`; continue from `memory` when given.

        With ``cfg.tbptt_segments = k`` the memory state is detached from the graph every k segments
        (truncated backprop through time): activations for the backward pass are then still kept
        for the whole call, but gradients flow back through at most k segments of memory. The
        default (None) backpropagates through every segment of the call.
        """
        cfg = self.cfg
        tokens = check_tokens(tokens, cfg.vocab_size)
        B, T = tokens.shape
        state = self.initial_state(B, tokens.device) if memory is None else self.memory.check_state(memory, B)
        state = MemoryState(*state.tensors(), signature=cfg.memory_signature())  # the states made here: this config's
        ws = self.signals(tokens, state.segments)
        req = self._request(ws)
        state, seg = self.memory.scan(state, ws.sig.read_query, req, ws.valid, cfg.tbptt_segments,
                                      self._compiled_step)

        logits = self._logits(ws.h, seg.vectors, T)
        mass_total = seg.read_mass.float().sum((0, 1))  # (N,) over rows and segments
        # the read weights and retention gates enter only a loss that weighs them (else it is 0)
        read_weight = seg.read_weight if cfg.read_entropy_weight else None
        retention = seg.retention if cfg.pressure_weight else None
        aux = aux_losses(cfg, mass_total, read_weight, ws.valid.unsqueeze(-1), retention, ws.gate,
                         ws.valid.gather(2, ws.pos))
        trace = MemoryTrace.of_segments(req, ws.valid, seg) if return_trace else None
        return MemNetOutput(logits, state, aux, trace)

    @torch.no_grad()
    def stream(self, tokens: Tensor, memory: StreamingMemory | None = None) -> tuple[Tensor, StreamingMemory]:
        """Inference on one sequence as its tokens arrive: tokens (1, T) -> (logits (1, T, V), memory).

        The memory (a :class:`StreamingMemory`, a fresh one when None) is updated in place and
        returned; pass it back with the next tokens. The same logits as ``forward`` (up to float
        rounding) when calls split the sequence at multiples of ``segment_len``; the cost of a call
        depends on T and the bank's size, never on how many tokens came before.
        """
        cfg = self.cfg
        tokens = check_tokens(tokens, cfg.vocab_size)
        if tokens.shape[0] != 1:
            raise ValueError(f"tokens must have batch size 1 for stream(), got shape {tuple(tokens.shape)}")
        if memory is None:
            memory = StreamingMemory(self.memory)
        elif not isinstance(memory, StreamingMemory) or memory.bank is not self.memory:
            raise TypeError("memory must be a StreamingMemory of this model's bank (from a previous stream() call)")
        seen = torch.full((1,), float(memory.segments), device=tokens.device)
        ws = self.signals(tokens, seen)
        reads = [memory.step(q, req, v).vectors for q, req, v in zip(*self._segments(ws))]  # the only loop over time
        return self._logits(ws.h, torch.stack(reads, dim=1), tokens.shape[1]), memory


def truncated_backward(model: MemNet, tokens: Tensor, targets: Tensor, chunk_segments: int,
                       memory: MemoryState | None = None) -> tuple[float, MemoryState]:
    """Forward and backward through a long sequence ``chunk_segments`` segments at a time.

    Truncated backprop through time with bounded memory: each chunk's loss is backpropagated
    before the next chunk runs, and the memory passes on detached, so autograd holds the
    activations of one chunk, never of the whole sequence. Gradients accumulate in ``.grad``.
    The loss is the mean cross-entropy over the targets that are not ignored (as the trainer's)
    plus each chunk's auxiliary losses weighted by its share of the tokens. Without auxiliary
    losses the gradients equal those of one call with ``cfg.tbptt_segments = chunk_segments``.

    tokens, targets: (B, T) integer tensors on one device; targets are ids in [0, vocab_size) or
    ``IGNORE_INDEX``. Every argument is checked before the first chunk runs, so a bad one raises
    with no ``.grad`` touched. Returns the loss (a float) and the final memory (detached).
    """
    if not isinstance(model, MemNet):
        raise TypeError(f"model must be a MemNet, got {type(model).__name__}")
    if isinstance(chunk_segments, bool) or not isinstance(chunk_segments, int) or chunk_segments < 1:
        raise ValueError(f"chunk_segments must be an int >= 1, got {chunk_segments!r}")
    V = model.cfg.vocab_size
    tokens = check_tokens(tokens, V)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor of the tokens' shape {tuple(tokens.shape)}, "
                        f"got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer ids (torch.long), got dtype {targets.dtype}")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets must be a tensor of the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(targets.shape)}")
    if targets.device != tokens.device:
        raise ValueError(f"targets must be on the tokens' device {tokens.device}, got {targets.device}")
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= V))
    if bool(bad.any()):
        raise ValueError(f"targets must be ids in [0, vocab_size={V}) or IGNORE_INDEX ({IGNORE_INDEX}), "
                         f"got {int(targets[bad][0])} at position {tuple(bad.nonzero()[0].tolist())}")
    if memory is not None:
        model.memory.check_state(memory, tokens.shape[0])
    T = tokens.shape[1]
    step = chunk_segments * model.cfg.segment_len
    n_targets = int((targets != IGNORE_INDEX).sum().clamp(min=1))
    total = 0.0
    for start in range(0, T, step):
        x, y = tokens[:, start:start + step], targets[:, start:start + step]
        out = model(x, memory=memory)
        ce = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), y.reshape(-1).long(),
                             ignore_index=IGNORE_INDEX, reduction="sum") / n_targets
        loss = ce + sum(out.aux_losses.values()) * (x.shape[1] / T)
        loss.backward()
        total += float(loss.detach())
        memory = out.memory.detach()
    return total, memory
