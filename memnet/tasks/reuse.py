"""`ReuseStream`: key-value items whose future value is revealed only after they are written.

Every window of ``segment_len`` tokens opens with an item block of ``items_per_window`` key-value
pairs (``k1 v1 k2 v2 ...``); the rest of the window holds queries and filler. All keys come from
one shared vocabulary (distinct within a sequence), all values from another, and the item block
of a sequence is drawn before, and apart from, anything that decides an item's fate: at write time
nothing about an item tells whether it will be needed again. What tells it arrives later:

* **useful**: a first query (the *cue*) asks for the item's value ``cue_gap`` windows after its
  write (drawn from ``cue_gap``), and a second query (the *recall*) asks again at least
  ``min_gap`` windows after the cue;
* **once**: the cue comes, the recall never does (``p_once``; 0 by default, which makes the cue a
  certain sign of re-use);
* **distractor**: never asked for.

So a memory that keeps every item for ``max(cue_gap)`` windows and then only the cued ones answers
everything; keeping items by age alone loses the useful items whose recall comes late, and with
more items per sequence than slots (memory pressure) it cannot keep them all. The last
``max(cue_gap) + min_gap`` windows hold no items, so every useful item has time for its cue and
recall. Queries sit at random free positions after the item block (anywhere in a window without
items); positions without a query hold filler. A cue or recall that finds no free position in any
window it may use is not asked, and the item is recorded as what its queries make it. Everything is drawn from NumPy generators seeded by the caller: a batch is a pure function
of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE_INDEX as IGNORE

REUSE_TYPES = ("useful", "distractor", "once")  # item_type codes 0, 1, 2
USEFUL, DISTRACTOR, ONCE = range(3)
QUERY_KINDS = ("none", "cue", "recall")  # kind codes 0, 1, 2


@dataclass(frozen=True)
class ReuseBatch:
    """One batch of streams (B sequences, T tokens, M items per sequence).

    tokens, targets: (B, T) long; targets are IGNORE except at cues and recalls (the item's value)
    kind: (B, T) long, 1 at a cue, 2 at a recall, 0 elsewhere
    item_at: (B, T) long, the item whose key or value sits at each position (-1 elsewhere, queries included)
    item_type: (B, M) long in {0: useful, 1: distractor, 2: once}, as scheduled (what the queries ask)
    item_pos: (B, M) long, position of each item's value token
    cue_pos, recall_pos: (B, M) long, position of each item's cue and recall (-1: none)
    """

    tokens: Tensor
    targets: Tensor
    kind: Tensor
    item_at: Tensor
    item_type: Tensor
    item_pos: Tensor
    cue_pos: Tensor
    recall_pos: Tensor

    def to(self, device: torch.device | str) -> "ReuseBatch":
        return ReuseBatch(*(t.to(device) for t in (self.tokens, self.targets, self.kind, self.item_at, self.item_type,
                                                    self.item_pos, self.cue_pos, self.recall_pos)))


def _check_int(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"ReuseStream.{name} must be an int >= {lo}, got {v!r}")


@dataclass(frozen=True)
class ReuseStream:
    """Vocabulary: keys [0, K) with K = ``n_keys``, then ``n_values`` values, then ``n_filler`` filler tokens.

    cue_gap: (lo, hi) windows from an item's write to its cue, drawn uniformly per item.
    min_gap: windows from the cue to the recall, at least (the recall is uniform over the windows
    from there to the last)."""

    n_keys: int = 128
    n_values: int = 32
    n_filler: int = 32
    segment_len: int = 16
    items_per_window: int = 3
    n_windows: int = 24
    p_useful: float = 0.3
    p_once: float = 0.0
    cue_gap: tuple[int, int] = (1, 2)
    min_gap: int = 4

    def __post_init__(self) -> None:
        for name in ("n_keys", "n_values", "n_filler", "segment_len", "items_per_window", "min_gap"):
            _check_int(name, getattr(self, name), 1)
        cg = self.cue_gap
        if (not isinstance(cg, (tuple, list)) or len(cg) != 2 or any(isinstance(x, bool) or not isinstance(x, int)
                                                                       for x in cg) or not 1 <= cg[0] <= cg[1]):
            raise ValueError(f"ReuseStream.cue_gap must be a pair of ints (lo, hi) with 1 <= lo <= hi, got {cg!r}")
        object.__setattr__(self, "cue_gap", (int(cg[0]), int(cg[1])))
        _check_int("n_windows", self.n_windows, self.cue_gap[1] + self.min_gap + 1)
        if 2 * self.items_per_window >= self.segment_len:
            raise ValueError(f"ReuseStream: 2 * items_per_window ({2 * self.items_per_window}) must be < "
                             f"segment_len ({self.segment_len}), to leave room for queries")
        for name in ("p_useful", "p_once"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"ReuseStream.{name} must be a float in [0, 1], got {v!r}")
        if self.p_useful + self.p_once > 1.0:
            raise ValueError(f"ReuseStream: p_useful + p_once must be <= 1, got {self.p_useful} + {self.p_once}")
        if self.n_keys < self.n_items:
            raise ValueError(f"ReuseStream.n_keys ({self.n_keys}) must be >= the items per sequence "
                             f"({self.n_items}): keys are distinct within a sequence")

    # ------------------------------------------------------------------ sizes
    @property
    def item_windows(self) -> int:
        """Windows that open with items: all but the last ``max(cue_gap) + min_gap``."""
        return self.n_windows - self.cue_gap[1] - self.min_gap

    @property
    def n_items(self) -> int:
        return self.items_per_window * self.item_windows

    @property
    def seq_len(self) -> int:
        return self.n_windows * self.segment_len

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values + self.n_filler

    @property
    def value_tokens(self) -> tuple[int, int]:
        """The id range [lo, hi) of the value tokens. They sit only at the items' value positions,
        one per item, so as ``MemNetConfig.write_tokens`` they write every item (its key is visible
        to the value token through the encoder's token shift)."""
        return (self.n_keys, self.n_keys + self.n_values)

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / self.n_values

    def pressure(self, num_slots: int) -> float:
        """Items per sequence per slot: > 1 means the memory cannot keep everything."""
        return self.n_items / num_slots

    # ------------------------------------------------------------------ sampling
    def sample(self, batch: int, seed: int) -> ReuseBatch:
        """`batch` independent streams of ``n_windows`` windows.

        Three generators, derived from `seed`, draw the item blocks and filler, the item types, and
        the query schedule: the items written do not depend on their types (with the same seed, any
        ``p_useful`` gives the same item blocks)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        items_rng, type_rng, when_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
        L, I, S, M = self.segment_len, self.items_per_window, self.n_windows, self.n_items
        T = S * L
        first_value, first_filler = self.value_tokens
        tokens = items_rng.integers(first_filler, first_filler + self.n_filler, size=(batch, T))
        keys = np.stack([items_rng.permutation(self.n_keys)[:M] for _ in range(batch)])  # (B, M) distinct per row
        values = first_value + items_rng.integers(0, self.n_values, size=(batch, M))
        m = np.arange(M)
        window = m // I  # (M,) window of each item
        key_pos = window * L + 2 * (m % I)
        tokens[:, key_pos], tokens[:, key_pos + 1] = keys, values
        item_at = np.full((batch, T), -1, dtype=np.int64)
        item_at[:, key_pos], item_at[:, key_pos + 1] = m, m

        u = type_rng.random((batch, M))
        drawn = np.where(u < self.p_useful, USEFUL, np.where(u < self.p_useful + self.p_once, ONCE, DISTRACTOR))

        targets = np.full((batch, T), IGNORE, dtype=np.int64)
        kind = np.zeros((batch, T), dtype=np.int64)
        cue_pos = np.full((batch, M), -1, dtype=np.int64)
        recall_pos = np.full((batch, M), -1, dtype=np.int64)
        lo_gap, hi_gap = self.cue_gap
        for b in range(batch):
            # free query offsets per window: after the item block, or anywhere in a window without items
            free = [list(2 * I * (v < self.item_windows) + when_rng.permutation(L - 2 * I * (v < self.item_windows)))
                    for v in range(S)]
            for i in when_rng.permutation(M):  # random order: no item or window gets first pick
                if drawn[b, i] == DISTRACTOR:
                    continue
                w = window[i]
                cues = [c for c in range(w + lo_gap, w + hi_gap + 1) if free[c]]
                if not cues:
                    continue  # no room for a cue: never queried (scheduled as a distractor below)
                c = cues[int(when_rng.integers(len(cues)))]
                recalls = [r for r in range(c + self.min_gap, S) if free[r]] if drawn[b, i] == USEFUL else []
                for v, field, code in [(c, cue_pos, 1)] + ([(recalls[int(when_rng.integers(len(recalls)))],
                                                              recall_pos, 2)] if recalls else []):
                    q = v * L + free[v].pop()
                    tokens[b, q], targets[b, q], kind[b, q], field[b, i] = keys[b, i], values[b, i], code, q
        item_type = np.where(recall_pos >= 0, USEFUL, np.where(cue_pos >= 0, ONCE, DISTRACTOR))
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return ReuseBatch(as_t(tokens), as_t(targets), as_t(kind), as_t(item_at), as_t(item_type),
                          as_t(np.tile(key_pos + 1, (batch, 1))), as_t(cue_pos), as_t(recall_pos))
