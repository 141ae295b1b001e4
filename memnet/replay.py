"""Bounded buffers of raw training items for continual learning: what experience replay stores.

A :class:`ReplayBuffer` holds at most ``capacity`` items (with their classes) seen in a stream,
under one of two policies:

- ``"reservoir"``: reservoir sampling (Vitter 1985, Algorithm R): after ``n`` offered items every
  one of them is held with the same probability ``capacity / n``, whatever task it came from;
  the buffer of experience replay in Chaudhry et al. 2019 ("On tiny episodic memories in
  continual learning").
- ``"balanced"``: class-balanced reservoir sampling (Chrysakis & Moens 2020): when full, an item
  of a class that does not hold the most items evicts a random item of a class that does; an
  item of a largest class replaces one of its own class's items with probability held / offered
  of that class (reservoir sampling within the class). Every class seen keeps an equal share
  (within one item) however long or short its task was.

Every decision is drawn from the buffer's own generator, seeded once, so a buffer fed the same
items makes the same choices. ``nbytes`` counts what the buffer stores: one byte per token of an
item (the streams have fewer than 256 symbols) and one for its class.
"""
from __future__ import annotations

import numpy as np

POLICIES = ("reservoir", "balanced")


class ReplayBuffer:
    """At most ``capacity`` items (item_len,) int with classes, kept by ``policy`` (see module)."""

    def __init__(self, capacity: int, item_len: int, policy: str = "balanced", seed: int = 0):
        for name, v in (("capacity", capacity), ("item_len", item_len)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.capacity, self.item_len, self.policy = int(capacity), int(item_len), policy
        self._x = np.zeros((self.capacity, self.item_len), dtype=np.int64)
        self._y = np.zeros(self.capacity, dtype=np.int64)
        self.size, self.seen = 0, 0  # items held, items offered so far
        self._seen_of: dict[int, int] = {}  # class -> items of it offered so far
        self._rng = np.random.default_rng([int(seed), 11])

    def __len__(self) -> int:
        return self.size

    @staticmethod
    def item_bytes(item_len: int) -> int:
        """Bytes one stored item costs: a byte per token and one for its class."""
        return int(item_len) + 1

    @property
    def nbytes(self) -> int:
        """Bytes of stored data when full (``item_bytes`` per item)."""
        return self.capacity * self.item_bytes(self.item_len)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(x (size, item_len), y (size,)): copies of the items held, in slot order."""
        return self._x[: self.size].copy(), self._y[: self.size].copy()

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Offer items ``x`` (n, item_len) with classes ``y`` (n,), in order. Checked before any
        is stored, so a rejected call leaves the buffer as it was."""
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 2 or x.shape[1] != self.item_len or y.shape != (x.shape[0],):
            raise ValueError(f"x must be (n, {self.item_len}) and y (n,), got {x.shape} and {y.shape}")
        if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
            raise ValueError(f"x and y must be integer arrays, got {x.dtype} and {y.dtype}")
        for xi, yi in zip(x, y):
            self._offer(xi, int(yi))

    def _offer(self, x: np.ndarray, y: int) -> None:
        self.seen += 1
        self._seen_of[y] = self._seen_of.get(y, 0) + 1
        if self.size < self.capacity:
            slot = self.size
            self.size += 1
        elif self.policy == "reservoir":
            slot = int(self._rng.integers(0, self.seen))
            if slot >= self.capacity:
                return
        else:
            slot = self._balanced_slot(y)
            if slot < 0:
                return
        self._x[slot], self._y[slot] = x, y

    def _balanced_slot(self, y: int) -> int:
        """The slot a new item of class ``y`` takes in a full balanced buffer (-1: not kept): one of
        the largest class's items at random when ``y`` is not among the largest; else, as reservoir
        sampling within ``y``, one of ``y``'s own items with probability held / seen of ``y``."""
        classes, counts = np.unique(self._y, return_counts=True)
        held = int(counts[classes == y][0]) if y in classes else 0
        if held < counts.max():
            big = classes[counts == counts.max()]
            victim = big[int(self._rng.integers(0, big.size))]
            return int(self._rng.choice(np.flatnonzero(self._y == victim)))
        if self._rng.random() >= held / self._seen_of[y]:
            return -1
        return int(self._rng.choice(np.flatnonzero(self._y == y)))
