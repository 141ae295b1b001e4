"""`MQAR`: multi-query associative recall, in the form of Zoology (Arora et al. 2023).

One vocabulary of ``vocab_size`` ids: keys are drawn from the lower half (id 0 excluded: it
is the blank token), values from the upper half. A sequence opens with ``n_pairs`` key-value
pairs ``k1 v1 k2 v2 ...`` (distinct keys). Then every key is queried once: the key comes back
at an even offset of the query region and the model must predict its value *at the key's
position* (the value is never shown after a query). The offsets of the queries follow a
power law, ``p(g) ~ power_a * g ** (power_a - 1)`` over the ``(T - 2P) / 2`` possible gaps g,
so that most queries come soon after the pairs and some come at the end of the sequence.
Every other position is blank (0) or, with probability ``random_share`` (1 in Zoology's
``random_non_queries``), a token drawn uniformly from the *whole* vocabulary: filler may hold
keys and values, so nothing in a token's id says whether it is a pair, a query or noise.

Key updates (``update_share > 0``): that share of the pairs is bound again later, by a pair
``k v'`` placed in the query region before the key's query; the answer is the latest value.
A key then occurs in the query region as a query or as an update, so, to keep the task
defined, filler and the tokens after queries never hold this sequence's keys and the token
after a query is never a value: "key, then value" means a binding and nothing else.

Pressure knobs for the experiments: ``delay`` tokens of filler between the pairs and the query
region (the queries then come that far after the pairs, whatever the gaps), and ``local_pairs``:
pairs of fresh keys bound and queried inside one aligned window of ``window`` tokens, placed
anywhere after the opening block (the in-window queries that a model with a window can answer by
attention). Local keys are distinct from the opening keys, and, as with updates, filler and the
tokens after queries keep "key, then value" a binding.

Draws are a pure function of (split, seed): training, validation and test batches come from
disjoint seed streams (``numpy.random.SeedSequence`` with the split as a spawn key).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import IGNORE_INDEX as IGNORE
from .recall import RecallBatch  # tokens, targets, distance: (B, T); distance back to the (latest) value asked for

SPLITS = ("train", "validation", "test")
BLANK = 0  # the token at non-query positions that are not random filler


@dataclass(frozen=True)
class MQAR:
    """The task's knobs. ``seq_len`` T, ``n_pairs`` P, keys from [1, V/2), values from [V/2, V)."""

    vocab_size: int = 512
    seq_len: int = 256
    n_pairs: int = 8
    power_a: float = 0.01
    random_share: float = 1.0
    update_share: float = 0.0
    delay: int = 0
    local_pairs: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        for name, lo in (("vocab_size", 1), ("seq_len", 1), ("n_pairs", 1), ("delay", 0), ("local_pairs", 0),
                         ("window", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"MQAR.{name} must be an int >= {lo}, got {v!r}")
        if self.delay % 2:
            raise ValueError(f"MQAR.delay must be even (queries sit at even offsets), got {self.delay}")
        if self.local_pairs and (self.window < 4 or self.window % 2):
            raise ValueError(f"MQAR.window must be an even int >= 4 when local_pairs > 0, got {self.window!r}")
        for name, lo, hi in (("power_a", 0.0, 1.0), ("random_share", 0.0, 1.0), ("update_share", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"MQAR.{name} must be a float in [{lo}, {hi}], got {v!r}")
        if self.power_a == 0.0:
            raise ValueError("MQAR.power_a must be > 0 (the power law p(g) ~ g ** (power_a - 1))")
        if self.n_pairs + self.local_pairs > self.n_keys:
            raise ValueError(f"MQAR.n_pairs + local_pairs ({self.n_pairs} + {self.local_pairs}) must be <= the "
                             f"{self.n_keys} key ids (vocab_size // 2 - 1)")
        if self.vocab_size // 2 < self.n_pairs:
            raise ValueError(f"MQAR.vocab_size ({self.vocab_size}) leaves fewer value ids than n_pairs")
        if self.n_gaps < self.n_pairs * (2 if self.update_share > 0 else 1):
            need = 2 * self.n_pairs + self.delay + 2 * self.n_pairs * (2 if self.update_share > 0 else 1)
            raise ValueError(f"MQAR.seq_len ({self.seq_len}) is too short for {self.n_pairs} pairs, a delay of "
                             f"{self.delay} and their queries{' and updates' if self.update_share > 0 else ''}: "
                             f"need >= {need}")
        if self.local_pairs and self.local_room < self.local_pairs:
            raise ValueError(f"MQAR.seq_len ({self.seq_len}) leaves room for only {self.local_room} local pairs in "
                             f"windows of {self.window} after {self.n_pairs} pairs and their queries, "
                             f"not {self.local_pairs}")

    # ------------------------------------------------------------------ layout
    @property
    def n_keys(self) -> int:
        """Number of key ids: [1, vocab_size // 2)."""
        return self.vocab_size // 2 - 1

    @property
    def value_lo(self) -> int:
        """First value id; values are [value_lo, vocab_size)."""
        return self.vocab_size // 2

    @property
    def context_len(self) -> int:
        """Length of the opening pair block (2 P)."""
        return 2 * self.n_pairs

    @property
    def n_gaps(self) -> int:
        """Even offsets of the query region (after the pairs and the delay) a query (or an update) can take."""
        return (self.seq_len - self.context_len - self.delay) // 2

    @property
    def query_start(self) -> int:
        """First position of the query region."""
        return self.context_len + self.delay

    @property
    def local_room(self) -> int:
        """Local pairs that fit whatever the gaps: a local pair takes two free even offsets of one aligned
        window after the pairs, and the queries (and updates) take at most ``n_fixed`` of them, so the
        windows hold at least (free offsets - windows) / 2 pairs."""
        if not self.window:
            return 0
        w_after = self.seq_len // self.window - -(-self.context_len // self.window)  # whole windows after the pairs
        n_fixed = self.n_pairs * (2 if self.update_share > 0 else 1)
        return max(0, (w_after * (self.window // 2) - n_fixed - w_after) // 2)

    @property
    def constrained(self) -> bool:
        """Whether filler keeps "key, then value" a binding (with updates or local pairs)."""
        return self.update_share > 0 or self.local_pairs > 0

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / (self.vocab_size - self.value_lo)

    def gap_probabilities(self) -> np.ndarray:
        """(n_gaps,) the power law over gaps g = 0 .. n_gaps-1 (rank g+1), normalised."""
        a = float(self.power_a)
        p = a * np.arange(1, self.n_gaps + 1, dtype=np.float64) ** (a - 1.0)
        return p / p.sum()

    # ------------------------------------------------------------------ draws
    @staticmethod
    def rng(split: str, seed: int) -> np.random.Generator:
        """The generator of one draw: a seed stream per split, so splits never share a draw."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split),)))

    def sample(self, batch: int, seed: int, split: str = "train", seq_len: int | None = None) -> RecallBatch:
        """A batch of `batch` sequences of length `seq_len` (default ``self.seq_len``), a pure
        function of (split, seed)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        task = self if seq_len is None or seq_len == self.seq_len else replace(self, seq_len=seq_len)
        return task._draw(task.rng(split, seed), batch)

    def _draw(self, rng: np.random.Generator, B: int) -> RecallBatch:
        P, T, V, C, Q = self.n_pairs, self.seq_len, self.vocab_size, self.context_len, self.query_start
        NL = self.local_pairs
        rows = np.arange(B)[:, None]
        all_keys = 1 + np.argsort(rng.random((B, self.n_keys)), axis=1)[:, :P + NL]  # (B, P + NL) distinct keys
        keys = all_keys[:, :P]  # (B, P) the opening block's keys
        values = self.value_lo + rng.integers(0, V - self.value_lo, size=(B, P))  # (B, P)
        # the gaps of the queries (and of updates): distinct, drawn by the power law
        n_draw = 2 * P if self.update_share > 0 else P
        gaps = np.stack([rng.choice(self.n_gaps, size=n_draw, replace=False, p=self.gap_probabilities())
                         for _ in range(B)])  # (B, n_draw)
        q_gap = gaps[:, :P]  # (B, P) gap of key i's query
        tokens = np.full((B, T), BLANK, dtype=np.int64)
        tokens[rows, 2 * np.arange(P)[None, :]] = keys
        tokens[rows, 2 * np.arange(P)[None, :] + 1] = values
        latest_pos = np.broadcast_to(2 * np.arange(P)[None, :] + 1, (B, P)).copy()  # where each key's answer is
        answer = values.copy()
        fixed = np.zeros((B, T), dtype=bool)  # positions that filler must not touch
        fixed[:, :C] = True
        if self.update_share > 0:
            # an update of key i takes the spare gap u_i if it comes before key i's query; its value is new
            u_gap = gaps[:, P:]
            chosen = (rng.random((B, P)) < self.update_share) & (u_gap < q_gap)
            new_vals = self.value_lo + rng.integers(0, V - self.value_lo, size=(B, P))
            b, i = np.nonzero(chosen)
            pos = Q + 2 * u_gap[b, i]
            tokens[b, pos], tokens[b, pos + 1] = keys[b, i], new_vals[b, i]
            fixed[b, pos] = fixed[b, pos + 1] = True
            answer[b, i], latest_pos[b, i] = new_vals[b, i], pos + 1
        q_pos = Q + 2 * q_gap  # (B, P)
        tokens[rows, q_pos] = keys
        fixed[rows, q_pos] = True
        l_pos = np.zeros((B, NL, 2), dtype=np.int64)  # (B, NL, [value position, query position])
        if NL:
            l_vals = self.value_lo + rng.integers(0, V - self.value_lo, size=(B, NL))
            Lw = self.window
            evens = np.arange(-(-C // Lw) * Lw, (T // Lw) * Lw, 2)  # even positions of whole windows after the pairs
            for r in range(B):
                free = evens[~fixed[r, evens]]
                for j in range(NL):
                    w_of = free // Lw
                    ws, counts = np.unique(w_of, return_counts=True)
                    w = rng.choice(ws[counts >= 2])  # local_room guarantees one
                    ka, kq = np.sort(rng.choice(free[w_of == w], size=2, replace=False))
                    tokens[r, ka], tokens[r, ka + 1], tokens[r, kq] = all_keys[r, P + j], l_vals[r, j], all_keys[r, P + j]
                    fixed[r, [ka, ka + 1, kq]] = True
                    l_pos[r, j] = ka + 1, kq
                    free = free[(free != ka) & (free != kq)]
        filler = (~fixed) & (rng.random((B, T)) < self.random_share)
        draw = rng.integers(0, V, size=(B, T))
        if self.constrained:  # no key of the sequence in filler, no value right after a query
            own = (draw[:, :, None] == all_keys[:, None, :]).any(-1)
            after_q = np.zeros((B, T), dtype=bool)
            after_q[rows, np.minimum(q_pos + 1, T - 1)] = True
            if NL:
                after_q[rows, np.minimum(l_pos[:, :, 1] + 1, T - 1)] = True
            bad = own | (after_q & (draw >= self.value_lo))
            while bad[filler].any():
                redraw = rng.integers(0, V, size=(B, T))
                draw = np.where(bad, redraw, draw)
                own = (draw[:, :, None] == all_keys[:, None, :]).any(-1)
                bad = own | (after_q & (draw >= self.value_lo))
        tokens[filler] = draw[filler]
        targets = np.full((B, T), IGNORE, dtype=np.int64)
        targets[rows, q_pos] = answer
        distance = np.zeros((B, T), dtype=np.int64)
        distance[rows, q_pos] = q_pos - latest_pos
        if NL:
            targets[rows, l_pos[:, :, 1]] = l_vals
            distance[rows, l_pos[:, :, 1]] = l_pos[:, :, 1] - l_pos[:, :, 0]
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return RecallBatch(as_t(tokens), as_t(targets), as_t(distance))
