"""Baselines with MemNet's parameter budget (within 10%) and the same output type.

- `WindowedTransformer`: MemNet's encoder and controller, the same window, no memory.
- `LSTMBaseline`: an LSTM over the whole sequence (its state can, in principle, carry anything).
- `FullTransformer`: causal attention over the whole sequence: a reference, not a competitor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from .config import MemNetConfig
from .controller import TransformerController
from .encoder import Encoder, check_tokens
from .model import MemNet, segment


@dataclass
class BaselineOutput:
    """logits: (B, T, V)."""

    logits: Tensor


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def memnet_budget(cfg: MemNetConfig) -> int:
    """Parameter count of MemNet for `cfg`, the budget the baselines match."""
    return count_params(MemNet(cfg))


def matched_d_ff(cfg: MemNetConfig, full: bool) -> int:
    """Controller MLP width that brings a memory-free Transformer to MemNet's budget."""
    base_ff = cfg.mlp_ratio * cfg.d_model
    base = count_params(_TransformerLM(cfg, base_ff, full))
    per_unit = cfg.n_layers * 2 * cfg.d_model  # weights added per extra MLP unit (no biases)
    return max(1, base_ff + round((memnet_budget(cfg) - base) / per_unit))


class _TransformerLM(nn.Module):
    def __init__(self, cfg: MemNetConfig, d_ff: int, full: bool):
        super().__init__()
        self.cfg, self.full = cfg, full
        self.encoder = Encoder(cfg.vocab_size, cfg.d_model, None if full else cfg.segment_len, cfg.dropout)
        self.controller = TransformerController(cfg, d_ff=d_ff)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, tokens: Tensor) -> BaselineOutput:
        tokens = check_tokens(tokens, self.cfg.vocab_size)
        B, T = tokens.shape
        if self.full:
            h = self.controller(self.encoder(tokens))  # (B, T, D)
        else:
            windows, _ = segment(tokens, self.cfg.segment_len)  # (B, S, L)
            S, L = windows.shape[1:]
            h = self.controller(self.encoder(windows).view(B * S, L, -1)).view(B, S * L, -1)[:, :T]
        return BaselineOutput(self.head(h))


class WindowedTransformer(_TransformerLM):
    """MemNet without memory: the same windowed controller; each window is on its own."""

    def __init__(self, cfg: MemNetConfig):
        super().__init__(cfg, matched_d_ff(cfg, full=False), full=False)


class FullTransformer(_TransformerLM):
    """Causal attention over the whole sequence (sinusoidal positions): an upper reference."""

    def __init__(self, cfg: MemNetConfig):
        super().__init__(cfg, matched_d_ff(cfg, full=True), full=True)


def _lstm_params(cfg: MemNetConfig, hidden: int) -> int:
    V, D, n = cfg.vocab_size, cfg.d_model, cfg.n_layers
    lstm = 4 * hidden * (D + hidden + 2) + (n - 1) * 4 * hidden * (2 * hidden + 2)
    return V * D + lstm + hidden * V + V


class LSTMBaseline(nn.Module):
    """Embedding -> ``n_layers`` LSTM -> linear head; hidden size chosen to match MemNet's budget."""

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        self.cfg = cfg
        target = memnet_budget(cfg)
        self.hidden = min(range(1, 4 * target // (cfg.d_model + 1) + 2),
                          key=lambda h: abs(_lstm_params(cfg, h) - target))
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.lstm = nn.LSTM(cfg.d_model, self.hidden, num_layers=cfg.n_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        self.head = nn.Linear(self.hidden, cfg.vocab_size)

    def forward(self, tokens: Tensor) -> BaselineOutput:
        tokens = check_tokens(tokens, self.cfg.vocab_size)
        h, _ = self.lstm(self.embed(tokens))  # (B, T, hidden)
        return BaselineOutput(self.head(h))
