"""`KeyValueRecall`: the long-term dependency task.

A sequence opens with ``n_pairs`` key-value pairs (``k1 v1 k2 v2 ...``) at a random
offset inside the first window; distractor tokens follow; later each key comes back once
as a query, and the model must predict its value at the query position. The distance
of a query is the number of tokens from its value to the query. Everything is drawn
from a NumPy generator seeded by the caller, so a batch is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE_INDEX as IGNORE  # target at positions that are not queries


@dataclass(frozen=True)
class RecallBatch:
    """tokens, targets: (B, T) long (targets are IGNORE except at queries);
    distance: (B, T) long, the query's distance (0 elsewhere)."""

    tokens: Tensor
    targets: Tensor
    distance: Tensor

    def to(self, device: torch.device | str) -> "RecallBatch":
        return RecallBatch(self.tokens.to(device), self.targets.to(device), self.distance.to(device))


@dataclass(frozen=True)
class KeyValueRecall:
    """Vocabulary: keys [0, n_keys), values [n_keys, n_keys + n_values), then distractors."""

    n_keys: int = 32
    n_values: int = 16
    n_distractors: int = 32
    n_pairs: int = 4
    segment_len: int = 16

    def __post_init__(self) -> None:
        for name in ("n_keys", "n_values", "n_distractors", "n_pairs", "segment_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"KeyValueRecall.{name} must be an int >= 1, got {v!r}")
        if self.n_pairs > self.n_keys:
            raise ValueError(f"KeyValueRecall.n_pairs ({self.n_pairs}) must be <= n_keys ({self.n_keys})")
        if 2 * self.n_pairs > self.segment_len:
            raise ValueError(f"KeyValueRecall: 2 * n_pairs ({2 * self.n_pairs}) must fit in segment_len ({self.segment_len})")

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values + self.n_distractors

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / self.n_values

    def min_distance(self) -> int:
        """The shortest distance at which every query lands after the pair block."""
        return 2 * self.n_pairs - 1

    @staticmethod
    def _check_batch(batch: object) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")

    def _prefix(self, rng: np.random.Generator, batch: int, seq_len: int):
        n = self.n_pairs
        tokens = rng.integers(self.n_keys + self.n_values, self.vocab_size, size=(batch, seq_len))
        keys = np.argsort(rng.random((batch, self.n_keys)), axis=1)[:, :n]  # distinct keys per row
        values = self.n_keys + rng.integers(0, self.n_values, size=(batch, n))
        offset = rng.integers(0, self.segment_len - 2 * n + 1, size=batch)
        rows = np.arange(batch)[:, None]
        key_pos = offset[:, None] + 2 * np.arange(n)[None, :]  # (B, n)
        tokens[rows, key_pos] = keys
        tokens[rows, key_pos + 1] = values
        return tokens, keys, values, key_pos + 1

    def _finish(self, tokens, keys, values, value_pos, query_pos) -> RecallBatch:
        B, T = tokens.shape
        rows = np.arange(B)[:, None]
        targets = np.full((B, T), IGNORE, dtype=np.int64)
        distance = np.zeros((B, T), dtype=np.int64)
        tokens[rows, query_pos] = keys
        targets[rows, query_pos] = values
        distance[rows, query_pos] = query_pos - value_pos
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return RecallBatch(as_t(tokens), as_t(targets), as_t(distance))

    def sample(self, batch: int, seq_len: int, seed: int) -> RecallBatch:
        """Training batch: each key queried once, at a uniformly drawn position after the pairs."""
        self._check_batch(batch)
        if seq_len < self.segment_len + self.n_pairs:
            raise ValueError(f"seq_len must be >= segment_len + n_pairs = {self.segment_len + self.n_pairs}, got {seq_len}")
        rng = np.random.default_rng(seed)
        tokens, keys, values, value_pos = self._prefix(rng, batch, seq_len)
        start = value_pos[:, -1] + 1  # first position after the pair block
        # n distinct query positions per row in [start, seq_len), in random order
        u = rng.random((batch, seq_len))
        u[np.arange(seq_len)[None, :] < start[:, None]] = 2.0
        query_pos = np.argsort(u, axis=1)[:, : self.n_pairs]
        return self._finish(tokens, keys, values, value_pos, query_pos)

    def sample_at_distance(self, batch: int, distance: int, seed: int) -> RecallBatch:
        """Evaluation batch: every query at exactly `distance` tokens from its value."""
        self._check_batch(batch)
        if distance < self.min_distance():
            raise ValueError(f"distance must be >= {self.min_distance()} (2 * n_pairs - 1), got {distance}")
        rng = np.random.default_rng(seed)
        seq_len = self.segment_len + distance + 1
        tokens, keys, values, value_pos = self._prefix(rng, batch, seq_len)
        return self._finish(tokens, keys, values, value_pos, value_pos + distance)
