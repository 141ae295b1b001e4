"""`Encoder`: token embedding plus positions; `ShiftedEmbedding`: the same token embedding and
token shift without positions, the input the memory peers read; and the token validation every
model shares."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def check_tokens(tokens: object, vocab_size: int, name: str = "tokens") -> Tensor:
    """Raise a clear error unless `tokens` is an integer (B, T) tensor of ids in [0, vocab_size)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T), got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T) (rank 2), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"{name} must have B >= 1 and T >= 1, got shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must be ids in [0, vocab_size={vocab_size}), got values in [{lo}, {hi}]")
    return tokens.long()


def sinusoidal_positions(n: int, d: int, device: torch.device | None = None) -> Tensor:
    """(n, d) fixed sinusoidal position codes, defined for any length."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


def token_shift(e: Tensor, proj: nn.Module, window: int | None = None) -> Tensor:
    """e (..., T, D) -> e_t + proj(e_{t-1}) (..., T, D): each position gets a linear map of its
    predecessor's embedding, zero at the first position and, with `window`, at every position
    t with t % window == 0 (the predecessor lies in an earlier window)."""
    prev = F.pad(e[..., :-1, :], (0, 0, 1, 0))  # (..., T, D): position t holds e_{t-1}
    if window is not None:
        first = torch.arange(e.shape[-2], device=e.device) % window == 0  # (T,)
        prev = prev.masked_fill(first.unsqueeze(-1), 0.0)
    return e + proj(prev)


class Encoder(nn.Module):
    """Token embedding + a token shift + positions.

    The token shift adds a linear map of the previous token's embedding (zero at the first
    position), a one-step causal convolution as in H3 and RWKV: it hands every position its
    predecessor without spending an attention layer on it, which is what key-value binding needs.

    With ``max_positions`` set, positions are learned and index the place of a token
    inside its window (so a windowed model sees the same code at the same offset in every
    segment); with ``max_positions=None`` they are sinusoidal over the whole sequence.
    """

    def __init__(self, vocab_size: int, d_model: int, max_positions: int | None, dropout: float = 0.0):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_positions, d_model) if max_positions is not None else None
        self.shift = nn.Linear(d_model, d_model, bias=False)  # token shift: the previous token, within the window
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.tok.weight, std=1.0)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (..., L) -> (..., L, d_model); positions count along the last axis."""
        L = tokens.shape[-1]
        x = token_shift(self.tok(tokens), self.shift)  # x_t = e_t + W e_{t-1}; zero before the window
        if self.pos is not None:
            x = x + self.pos.weight[:L]
        else:
            x = x + sinusoidal_positions(L, x.shape[-1], x.device).to(x.dtype)
        return self.drop(x)


class ShiftedEmbedding(nn.Module):
    """Token embedding + the token shift of :class:`Encoder`, without positions: tokens (B, T) ->
    (B, T, d_model). It replaces a peer's own token embedding (:mod:`memnet.peers`), so that every
    model of a comparison reads the same input and a peer, like MemNet and its baselines, gets each
    token's predecessor without spending an attention layer on it; the peer adds its own positions.

    window: the shift stops at multiples of `window` (a model that attends within windows gets its
    predecessor only inside its window, as :class:`Encoder` does); None: along the whole sequence.
    """

    def __init__(self, vocab_size: int, d_model: int, window: int | None = None):
        super().__init__()
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be None or an int >= 1, got {window!r}")
        self.window = window
        self.tok = nn.Embedding(vocab_size, d_model)
        self.shift = nn.Linear(d_model, d_model, bias=False)
        nn.init.normal_(self.tok.weight, std=1.0)

    def forward(self, tokens: Tensor) -> Tensor:
        return token_shift(self.tok(tokens), self.shift, self.window)  # (B, T, D)
