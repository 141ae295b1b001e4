"""`TransformerController`: a causal Transformer over one window, and the memory
interface it emits (read queries, write keys/values, gates, erase, update and decay)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import MemNetConfig


class Block(nn.Module):
    """Pre-LayerNorm Transformer block with causal scaled-dot-product attention.

    No biases (as nanoGPT's ``bias=False``): a bias adds the same vector to every position,
    and a memory query built on such a vector matches slots by type, not by content.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model, bias=False)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.ln2 = nn.LayerNorm(d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff, bias=False), nn.GELU(), nn.Linear(d_ff, d_model, bias=False))
        self.dropout = dropout
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, D) -> (N, L, D)
        N, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.view(N, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(N, L, D)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TransformerController(nn.Module):
    """A causal Transformer over the tokens it is given.

    MemNet and WindowedTransformer give it one window (``segment_len`` tokens) at a time,
    as a batch of windows: it never attends beyond its window. FullTransformer gives it
    the whole sequence. ``d_ff`` lets the baselines match MemNet's parameter count.
    """

    def __init__(self, cfg: MemNetConfig, d_ff: int | None = None):
        super().__init__()
        d_ff = d_ff if d_ff is not None else cfg.mlp_ratio * cfg.d_model
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, d_ff, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, D) -> (N, L, D)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x)


@dataclass(frozen=True)
class MemorySignals:
    """Per-token memory interface emitted by the controller, for all segments at once.

    Shapes with S segments of L tokens: read_query (B, S, L, H, Dm); write_score (B, S, L);
    write_key, erase (B, S, L, Dm); update (B, S, L); decay (B, S, Dm) from the whole window.
    """

    read_query: Tensor
    write_score: Tensor
    write_key: Tensor
    erase: Tensor
    update: Tensor
    decay: Tensor


def shift(h: Tensor, n: int) -> Tensor:
    """h (..., L, D) moved n positions later along L inside the window, zeros first: position t holds h[t - n]."""
    if n == 0:
        return h
    return F.pad(h[..., :-n, :], (0, 0, n, 0)) if n < h.shape[-2] else torch.zeros_like(h)


class MemoryInterface(nn.Module):
    """Linear read-outs of the controller's states that drive the memory."""

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        D, Dm, H = cfg.d_model, cfg.slot_dim, cfg.mem_heads
        self.H, self.Dm = H, Dm
        self.read_query = nn.Linear(D, H * Dm, bias=False)
        self.write_score = nn.Linear(D, 1)  # write gate logit; the top-H tokens of a window write
        self.write_key = nn.Linear(D, Dm, bias=False)
        self.erase = nn.Linear(D, Dm)
        self.update = nn.Linear(D, 1)
        self.decay = nn.Linear(D, Dm)
        with torch.no_grad():  # keys start in the space the heads query: the mean of their query maps
            self.write_key.weight.copy_(self.read_query.weight.view(H, Dm, D).mean(0))
        self.key_shift = cfg.write_key_shift
        nn.init.constant_(self.update.bias, -2.0)  # start by allocating fresh slots
        nn.init.zeros_(self.decay.weight)  # start with content-independent retention
        nn.init.zeros_(self.decay.bias)

    def forward(self, h: Tensor, valid: Tensor) -> MemorySignals:
        """h (B, S, L, D) controller states; valid (B, S, L) bool mask of real tokens."""
        B, S, L, _ = h.shape
        score = self.write_score(h).squeeze(-1).masked_fill(~valid, float("-inf"))
        w = valid.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(2) / w.sum(2).clamp(min=1.0)  # (B, S, D)
        return MemorySignals(
            read_query=self.read_query(h).view(B, S, L, self.H, self.Dm),
            write_score=score,
            write_key=self.write_key(shift(h, self.key_shift)),
            erase=torch.sigmoid(self.erase(h)),
            update=torch.sigmoid(self.update(h)).squeeze(-1),
            decay=self.decay(pooled),
        )
