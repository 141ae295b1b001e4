"""`ForgettingStream`: a stream of key-value items of known future value, for the study of forgetting.

Every window of ``segment_len`` tokens opens with ``items_per_window`` key-value pairs
(``k1 v1 k2 v2 ...``); the rest of the window holds queries and filler. Each item has a type,
drawn independently with the configured rates:

* **useful**: its key comes back once as a query in a later window (uniformly among the windows
  at least ``min_gap`` windows later), and the model must predict its value there;
* **expiring**: its key is queried once within ``horizon`` windows, never after;
* **distractor**: its key never comes back.

The type is visible in the key: each type has its own key range, so a model can learn which
content will be needed. Items are written in every window but the last, so a sequence holds
``items_per_window * (n_windows - 1)`` items: with more items than slots (memory pressure) the
memory cannot keep everything. Queries sit at the positions after the item block; positions
without a query hold random filler tokens. Everything is drawn from a NumPy generator seeded
by the caller, so a batch is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE_INDEX as IGNORE  # target at positions that are not queries

ITEM_TYPES = ("useful", "distractor", "expiring")  # item_type codes 0, 1, 2
USEFUL, DISTRACTOR, EXPIRING = range(3)


@dataclass(frozen=True)
class ForgettingBatch:
    """One batch of streams.

    tokens, targets: (B, T) long; targets are IGNORE except at queries (the queried item's value)
    item_at: (B, T) long, the item whose key or value sits at each position (-1 elsewhere, queries included)
    item_type: (B, M) long in {0: useful, 1: distractor, 2: expiring}, M items per sequence
    item_pos: (B, M) long, position of each item's value token
    query_pos: (B, M) long, position of each item's query (-1: never queried)
    """

    tokens: Tensor
    targets: Tensor
    item_at: Tensor
    item_type: Tensor
    item_pos: Tensor
    query_pos: Tensor

    def to(self, device: torch.device | str) -> "ForgettingBatch":
        return ForgettingBatch(*(t.to(device) for t in (self.tokens, self.targets, self.item_at, self.item_type,
                                                         self.item_pos, self.query_pos)))


@dataclass(frozen=True)
class ForgettingStream:
    """Vocabulary: useful keys [0, K), distractor keys [K, 2K), expiring keys [2K, 3K) with
    K = ``n_keys``, then ``n_values`` values, then ``n_filler`` filler tokens."""

    n_keys: int = 72
    n_values: int = 16
    n_filler: int = 16
    segment_len: int = 16
    items_per_window: int = 3
    n_windows: int = 24
    p_useful: float = 0.3
    p_expiring: float = 0.2
    horizon: int = 2  # windows within which an expiring item is queried
    min_gap: int = 1  # windows between a useful item and its query, at least

    def __post_init__(self) -> None:
        for name in ("n_keys", "n_values", "n_filler", "segment_len", "items_per_window", "horizon", "min_gap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ForgettingStream.{name} must be an int >= 1, got {v!r}")
        if isinstance(self.n_windows, bool) or not isinstance(self.n_windows, int) or self.n_windows < 2:
            raise ValueError(f"ForgettingStream.n_windows must be an int >= 2, got {self.n_windows!r}")
        if 2 * self.items_per_window >= self.segment_len:
            raise ValueError(f"ForgettingStream: 2 * items_per_window ({2 * self.items_per_window}) must be < "
                             f"segment_len ({self.segment_len}), to leave room for queries")
        for name in ("p_useful", "p_expiring"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"ForgettingStream.{name} must be a float in [0, 1], got {v!r}")
        if self.p_useful + self.p_expiring > 1.0:
            raise ValueError(f"ForgettingStream: p_useful + p_expiring must be <= 1, got "
                             f"{self.p_useful} + {self.p_expiring}")
        if self.n_keys < self.n_items:
            raise ValueError(f"ForgettingStream.n_keys ({self.n_keys}) must be >= the items per sequence "
                             f"({self.n_items}): keys of a type are distinct within a sequence")

    # ------------------------------------------------------------------ sizes
    @property
    def n_items(self) -> int:
        """Items per sequence: every window but the last opens with ``items_per_window`` items."""
        return self.items_per_window * (self.n_windows - 1)

    @property
    def seq_len(self) -> int:
        return self.n_windows * self.segment_len

    @property
    def vocab_size(self) -> int:
        return 3 * self.n_keys + self.n_values + self.n_filler

    @property
    def value_tokens(self) -> tuple[int, int]:
        """The id range [lo, hi) of the value tokens. They sit only at the items' value positions,
        one per item, so as ``MemNetConfig.write_tokens`` they write every item (its key is visible
        to the value token through the encoder's token shift)."""
        return (3 * self.n_keys, 3 * self.n_keys + self.n_values)

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / self.n_values

    def pressure(self, num_slots: int) -> float:
        """Items per sequence per slot: > 1 means the memory cannot keep everything."""
        return self.n_items / num_slots

    def key_type(self, tokens: Tensor) -> Tensor:
        """The item type (0, 1, 2) a key token belongs to; -1 for values and filler."""
        t = torch.as_tensor(tokens)
        return torch.where(t < 3 * self.n_keys, t // self.n_keys, torch.full_like(t, -1))

    # ------------------------------------------------------------------ sampling
    def sample(self, batch: int, seed: int) -> ForgettingBatch:
        """`batch` independent streams of ``n_windows`` windows."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        L, I, S, M, K = self.segment_len, self.items_per_window, self.n_windows, self.n_items, self.n_keys
        T = S * L
        first_value, first_filler = self.value_tokens
        tokens = rng.integers(first_filler, first_filler + self.n_filler, size=(batch, T))
        targets = np.full((batch, T), IGNORE, dtype=np.int64)
        item_at = np.full((batch, T), -1, dtype=np.int64)
        u = rng.random((batch, M))
        item_type = np.where(u < self.p_useful, USEFUL, np.where(u < self.p_useful + self.p_expiring, EXPIRING,
                                                                  DISTRACTOR)).astype(np.int64)
        values = first_value + rng.integers(0, self.n_values, size=(batch, M))
        m = np.arange(M)
        window = m // I  # (M,) window of each item
        key_pos = window * L + 2 * (m % I)  # (M,)
        item_pos = np.broadcast_to(key_pos + 1, (batch, M)).copy()
        query_pos = np.full((batch, M), -1, dtype=np.int64)
        n_query = L - 2 * I  # query positions per window
        for b in range(batch):
            keys = np.empty(M, dtype=np.int64)
            for t in range(3):  # distinct keys per type within the sequence
                sel = np.nonzero(item_type[b] == t)[0]
                keys[sel] = t * K + rng.permutation(K)[: len(sel)]
            tokens[b, key_pos], tokens[b, key_pos + 1] = keys, values[b]
            item_at[b, key_pos], item_at[b, key_pos + 1] = m, m
            free = [list(rng.permutation(n_query)) for _ in range(S)]  # free query offsets per window
            for i in rng.permutation(M):  # random order, so no item type or window gets first pick
                w, t = window[i], item_type[b, i]
                if t == DISTRACTOR:
                    continue
                lo, hi = (w + self.min_gap, S - 1) if t == USEFUL else (w + 1, min(w + self.horizon, S - 1))
                cand = [v for v in range(lo, hi + 1) if free[v]]
                if not cand:
                    continue  # no room: the item is never queried (query_pos stays -1)
                v = cand[int(rng.integers(len(cand)))]
                q = v * L + 2 * I + free[v].pop()
                tokens[b, q], targets[b, q], query_pos[b, i] = keys[i], values[b, i], q
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return ForgettingBatch(as_t(tokens), as_t(targets), as_t(item_at), as_t(item_type), as_t(item_pos),
                               as_t(query_pos))
