"""`MemNet`: encoder -> windowed controller -> memory read -> LayerNorm + residual fusion
-> prediction head, writing to the slot memory at the end of every segment.

The controller never sees past its window, so it runs on all windows of a sequence at
once; the loop over segments (read with the memory as it stands, then write) is the
only Python loop over time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .bottleneck import SemanticBottleneck
from .config import MemNetConfig
from .controller import MemoryInterface, TransformerController
from .encoder import Encoder, check_tokens
from .losses import aux_losses
from .memory import MemoryState, MultiHeadMemoryBank, WriteRequest
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


def take(x: Tensor, pos: Tensor) -> Tensor:
    """x (B, S, L, ...) at positions pos (B, S, H) along L -> (B, S, H, ...)."""
    idx = pos.view(*pos.shape, *([1] * (x.dim() - 3))).expand(*pos.shape, *x.shape[3:])
    return x.gather(2, idx)


class MemNet(nn.Module):
    """A windowed Transformer with an explicit multi-head slot memory.

    ``model(tokens)`` with tokens (B, T) of any T >= 1 returns a :class:`MemNetOutput`.
    Pass ``memory=out.memory`` to continue a sequence; a sequence split at multiples of
    ``segment_len`` gives the same logits in pieces as in one call.
    """

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        if not isinstance(cfg, MemNetConfig):
            raise TypeError(f"cfg must be a MemNetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        D, Dm, H = cfg.d_model, cfg.slot_dim, cfg.mem_heads
        self.encoder = Encoder(cfg.vocab_size, D, cfg.segment_len, cfg.dropout)
        self.controller = TransformerController(cfg)
        self.interface = MemoryInterface(cfg)
        self.bottleneck = SemanticBottleneck(cfg)
        self.memory = MultiHeadMemoryBank(cfg)
        self.read_norm = nn.LayerNorm(H * Dm)
        self.fuse = nn.Linear(H * Dm, D)
        self.fuse_mlp = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.ln_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, cfg.vocab_size)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """An empty memory for `batch_size` sequences."""
        return self.memory.initial_state(batch_size, device)

    def forward(self, tokens: Tensor, memory: MemoryState | None = None, return_trace: bool = False) -> MemNetOutput:
        cfg = self.cfg
        tokens = check_tokens(tokens, cfg.vocab_size)
        B, T = tokens.shape
        state = self.initial_state(B, tokens.device) if memory is None else self.memory.check_state(memory, B)
        H, L = cfg.mem_heads, cfg.segment_len

        # the controller over every window at once (it never looks past its window)
        windows, valid = segment(tokens, L)  # (B, S, L)
        S = windows.shape[1]
        x = self.encoder(windows)  # (B, S, L, D)
        h = self.controller(x.view(B * S, L, -1)).view(B, S, L, -1)
        sig = self.interface(h, valid)

        # every window issues cfg.writes gated writes: its top-W tokens by write score (all tokens by
        # default), strongest first; gate = sigmoid(score), so padding (score -inf) never writes
        score, pos = sig.write_score.topk(cfg.writes, dim=-1)  # (B, S, W)
        gate = torch.sigmoid(score)
        value = self.bottleneck(take(h, pos))  # (B, S, W, Dm)
        key, erase, update = take(sig.write_key, pos), take(sig.erase, pos), take(sig.update, pos)

        reads, steps = [], []
        mass_total = h.new_zeros(cfg.num_slots, dtype=torch.float32)
        for s in range(S):  # the only loop over time
            r = self.memory.read(state, sig.read_query[:, s])  # vectors (B, L, H, Dm)
            v = valid[:, s].to(r.weight.dtype)  # (B, L)
            w = (r.weight * v[:, :, None, None]).reshape(B, -1)
            mass = torch.zeros(B, cfg.num_slots, device=h.device).scatter_add(1, r.index.reshape(B, -1), w)
            mass = mass / v.sum(1, keepdim=True).clamp(min=1.0)  # (B, N) read weight per token, summed over heads
            mass_total = mass_total + mass.sum(0)
            req = WriteRequest(key[:, s], value[:, s], gate[:, s], erase[:, s], update[:, s], sig.decay[:, s])
            state, wr = self.memory.write(state, req, mass / H)
            reads.append(r.vectors)
            steps.append(dict(read_index=r.index, read_weight=r.weight, valid=valid[:, s], write_pos=pos[:, s],
                              write_gate=gate[:, s], write_update=update[:, s], write_erase=erase[:, s].mean(-1),
                              write_alloc=wr.alloc, write_strength=wr.strength, write_events=wr.events,
                              retention=wr.retention, age=state.age, usage=state.usage))

        # LayerNorm'd reads fused residually into the controller's stream
        read = torch.stack(reads, dim=1).reshape(B, S, L, -1)  # (B, S, L, H*Dm)
        z = h + self.fuse(self.read_norm(read.to(h.dtype)))
        z = z + self.fuse_mlp(z)
        logits = self.head(self.ln_out(z)).view(B, S * L, -1)[:, :T]

        read_weight = torch.stack([st["read_weight"] for st in steps], dim=1)  # (B, S, L, H, K)
        retention = torch.stack([st["retention"] for st in steps], dim=1)  # (B, S, N)
        aux = aux_losses(cfg, mass_total, read_weight, valid.unsqueeze(-1), retention)
        trace = MemoryTrace.stack(steps).detach() if return_trace else None
        return MemNetOutput(logits, state, aux, trace)
