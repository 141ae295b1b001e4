"""`SemanticBottleneck`: the MLP every write passes through before it reaches memory."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .config import MemNetConfig


class SemanticBottleneck(nn.Module):
    """Compress a controller state to ``bottleneck_dim`` and expand it to ``slot_dim``.

    The narrow middle forces a write to keep what the task needs and drop the rest;
    the output is what is stored in a slot.
    """

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(cfg.d_model),
            nn.Linear(cfg.d_model, cfg.bottleneck_dim),
            nn.GELU(),
            nn.Linear(cfg.bottleneck_dim, cfg.slot_dim),
        )

    def forward(self, h: Tensor) -> Tensor:  # (..., d_model) -> (..., slot_dim)
        return self.net(h)
