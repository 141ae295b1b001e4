"""`TaskStream`: a class-incremental stream of labelled items, and how items become tokens.

An *item* is a fixed-length sequence of ``item_len`` integer tokens (8x8 digit pixels, or a
synthetic pattern) with a class label in ``0..n_classes-1``. Task ``t`` holds the classes
``task_classes(t)``; every task's items are split once, by the stream's seed, into train and
test parts. There is one shared label space: a label never says which task it came from.

Vocabulary of every stream: item tokens ``0..n_symbols-1``, then one *label token* per class
(``label_token(c) = n_symbols + c``), then ``QUERY``. Two segment layouts, both
``item_len + 1`` tokens long (one MemNet window each):

- a *support* segment ``x_1 .. x_P  label(y)``: an item shown with its label (what memory stores);
- a *query* segment ``x_1 .. x_P  QUERY``: the model must predict ``label(y)`` at ``QUERY``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import IGNORE_INDEX


def check_index(value: object, name: str, upper: int) -> int:
    """``value`` as an int in ``0..upper-1``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < upper:
        raise ValueError(f"{name} must be an int in 0..{upper - 1}, got {value!r}")
    return int(value)


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class TaskStream:
    """Base class: subclasses fill ``self._x`` (n, item_len) int64, ``self._y`` (n,) int64 and
    ``self._split`` (n,) bool (True = test) in their constructor, and set the sizes below."""

    name = "stream"
    n_tasks: int
    n_classes: int
    n_symbols: int
    item_len: int
    _x: np.ndarray
    _y: np.ndarray
    _split: np.ndarray

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Item symbols, one label token per class, and QUERY."""
        return self.n_symbols + self.n_classes + 1

    @property
    def query_token(self) -> int:
        return self.n_symbols + self.n_classes

    @property
    def segment_len(self) -> int:
        """Tokens per support or query segment: the item and one label/QUERY token."""
        return self.item_len + 1

    @property
    def label_tokens(self) -> Tensor:
        """(n_classes,) the token ids of the labels, in class order."""
        return torch.arange(self.n_symbols, self.n_symbols + self.n_classes)

    def label_token(self, y: np.ndarray | Tensor | int):
        """Class index -> label token id."""
        return y + self.n_symbols

    @property
    def chance(self) -> float:
        """Accuracy of guessing among all classes (class-incremental: no task id at test time)."""
        return 1.0 / self.n_classes

    # ------------------------------------------------------------------ data
    def task_classes(self, task: int) -> list[int]:
        """The classes of task ``task`` (``n_classes // n_tasks`` consecutive ones)."""
        task = check_index(task, "task", self.n_tasks)
        per = self.n_classes // self.n_tasks
        return list(range(task * per, (task + 1) * per))

    SPLITS = ("train", "val", "test")

    def hold_out_validation(self, fraction: float, seed: int) -> None:
        """Carve a validation part from the training items only: ``fraction`` of every class's
        training items (rounded, stratified, drawn by ``seed``) move to ``"val"``. The test items
        are untouched, so choices made on ``"val"`` never see them. Called once, by the
        constructor of a subclass; ``fraction=0`` leaves no validation items."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ValueError(f"val_fraction must be a float in [0, 1), got {fraction!r}")
        if getattr(self, "_val", None) is not None:
            raise RuntimeError("the validation part of this stream is already carved")
        self.val_fraction = float(fraction)
        self._val = np.zeros(self._y.shape[0], dtype=bool)
        rng = np.random.default_rng([int(seed), 7])  # its own draw: the test split's draws stay as they were
        for c in range(self.n_classes):
            idx = rng.permutation(np.flatnonzero((self._y == c) & ~self._split))
            self._val[idx[: int(round(fraction * idx.size))]] = True

    def items(self, task: int | None, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, item_len) int64, y (n,) int64) of one task (or of every task when ``task`` is None),
        ``split`` "train", "val" (carved from the training items by :meth:`hold_out_validation`; none
        without it) or "test", in a fixed order."""
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        val = getattr(self, "_val", None)
        val = np.zeros_like(self._split) if val is None else val
        sel = self._split.copy() if split == "test" else (~self._split & (val == (split == "val")))
        if task is not None:
            sel &= np.isin(self._y, self.task_classes(task))
        return self._x[sel], self._y[sel]

    def support_set(self, task: int | None, per_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``per_class`` training items of every class of ``task`` (all tasks when None), drawn by
        ``seed`` and shuffled: what the continual protocol streams into memory. ``per_class=None``
        takes every training item of the task (still shuffled)."""
        x, y = self.items(task, "train")
        rng = np.random.default_rng(seed)
        if per_class is None:
            order = rng.permutation(y.size)
            return x[order], y[order]
        per_class = check_count(per_class, "per_class")
        picks = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            if per_class > idx.size:
                raise ValueError(f"per_class ({per_class}) exceeds the {idx.size} training items of class {c}")
            picks.append(rng.choice(idx, per_class, replace=False))
        order = rng.permutation(np.concatenate(picks))
        return x[order], y[order]

    # ------------------------------------------------------------------ tokens
    def support_tokens(self, x: np.ndarray, y: np.ndarray) -> Tensor:
        """Items (n, P) with classes (n,) -> one support sequence (1, n * (P + 1))."""
        seg = np.concatenate([x, self.label_token(y)[:, None]], axis=1)  # (n, P+1)
        return torch.from_numpy(np.ascontiguousarray(seg.reshape(1, -1), dtype=np.int64))

    def query_tokens(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        """Items (n, P) -> query segments (n, P + 1) and targets (n, P + 1): the label token at
        the QUERY position, IGNORE_INDEX elsewhere."""
        n, P = x.shape
        tokens = np.concatenate([x, np.full((n, 1), self.query_token)], axis=1)
        targets = np.full((n, P + 1), IGNORE_INDEX, dtype=np.int64)
        targets[:, -1] = self.label_token(y)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return as_t(tokens), as_t(targets)

    def episodes(self, task: int | None, batch: int, n_support: int, n_query: int, seed: int,
                 permute: bool = True, label_pool: list[int] | None = None,
                 source: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
        """A batch of meta-training episodes from ``task``'s training items (every task when None).

        Each episode is ``n_support`` support segments (items with their labels) followed by
        ``n_query`` query segments of *other* items of the same classes: (batch, (n_support +
        n_query) * (P + 1)) tokens and targets (the label at each QUERY, IGNORE_INDEX elsewhere).
        The support shows ``min(n_support, #classes)`` classes drawn at random, in balanced turns.
        With ``permute`` the episode's classes get fresh random label tokens (MANN, Santoro et al.
        2016), so the label of a query can only come from the support segments. ``label_pool``
        (default: every class) is the set of labels the permutation draws from; it must hold at
        least as many labels as the episode shows classes. ``source`` (items (n, P), classes (n,))
        replaces the task's training items as what the episodes draw from (``task`` is then
        ignored): a replay buffer, say; every class in it needs ``n_support + n_query`` items.
        """
        batch, n_support, n_query = (check_count(v, k) for k, v in
                                     (("batch", batch), ("n_support", n_support), ("n_query", n_query)))
        x, y = self.items(task, "train") if source is None else self._source(source)
        classes = np.unique(y)
        rng = np.random.default_rng(seed)
        P = self.item_len
        tok = np.empty((batch, n_support + n_query, P + 1), dtype=np.int64)
        tgt = np.full((batch, n_query, P + 1), IGNORE_INDEX, dtype=np.int64)
        by_class = [np.flatnonzero(y == c) for c in classes]
        pool = np.arange(self.n_classes) if label_pool is None else np.unique(np.asarray(label_pool, dtype=np.int64))
        if pool.size < min(n_support, classes.size) or pool.min() < 0 or pool.max() >= self.n_classes:
            raise ValueError(f"label_pool must hold at least {min(n_support, classes.size)} distinct classes in "
                             f"0..{self.n_classes - 1}, got {label_pool!r}")
        for b in range(batch):
            # balanced support (classes in turn, shuffled), queries of classes the support shows
            shown = rng.permutation(classes.size)[: min(n_support, classes.size)]  # at most n_support classes
            sup_cls = rng.permutation(shown[np.arange(n_support) % shown.size])
            qry_cls = rng.choice(np.unique(sup_cls), n_query)
            want = np.concatenate([sup_cls, qry_cls])
            idx = np.empty(want.size, dtype=np.int64)
            for k in np.unique(want):
                slots = np.flatnonzero(want == k)
                idx[slots] = rng.choice(by_class[k], slots.size, replace=False)
            lab = y[idx]
            if permute:
                perm = np.full(classes.size, -1)
                perm[np.unique(sup_cls)] = rng.permutation(pool)[: np.unique(sup_cls).size]
                lab = perm[np.searchsorted(classes, lab)]
            tok[b, :, :P] = x[idx]
            tok[b, :n_support, P] = self.label_token(lab[:n_support])
            tok[b, n_support:, P] = self.query_token
            tgt[b, :, P] = self.label_token(lab[n_support:])
        targets = np.concatenate([np.full((batch, n_support, P + 1), IGNORE_INDEX), tgt], axis=1)
        return torch.from_numpy(tok.reshape(batch, -1)), torch.from_numpy(targets.reshape(batch, -1))

    def symbol_code(self) -> Tensor:
        """(vocab_size, c) a fixed code of every token for addressing by content: what "similar
        items" means for this stream, without any learning. Item symbols get one-hot rows (two
        items are as similar as the positions where their symbols agree); label tokens and QUERY
        get zero rows, so the label never enters an address. Streams whose symbols are ordered
        (pixel intensities) override it."""
        code = torch.zeros(self.vocab_size, self.n_symbols)
        code[: self.n_symbols] = torch.eye(self.n_symbols)
        return code

    def perturb(self, x: np.ndarray, strength: int, rng: np.random.Generator) -> np.ndarray:
        """A noisy copy of items ``x`` (n, P): each token replaced, with probability
        ``0.1 * strength``, by a symbol drawn uniformly from ``0..n_symbols-1``. Streams whose
        symbols are ordered (pixel intensities) override it."""
        x = x.copy()
        hit = rng.random(x.shape) < min(1.0, 0.1 * strength)
        x[hit] = rng.integers(0, self.n_symbols, int(hit.sum()))
        return x

    def instance_episodes(self, task: int | None, batch: int, n_support: int, n_query: int, seed: int,
                          strength: int = 2, label_pool: list[int] | None = None,
                          source: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
        """Self-supervised episodes from ``task``'s training items (every task when None), in the
        layout of :meth:`episodes`: ``n_support`` distinct items, each its own class with a label
        drawn at random from ``label_pool`` (default: every label), then ``n_query`` queries, each a
        :meth:`perturb`-ed copy of one support item, whose target is that item's label.

        No class label is used: an episode asks only "which of these items is this one, give or
        take some noise", so the keys it trains separate items, not just the classes of the task
        at hand (instance discrimination, as in unsupervised meta-learning). ``source`` as in
        :meth:`episodes`.
        """
        batch, n_support, n_query = (check_count(v, k) for k, v in
                                     (("batch", batch), ("n_support", n_support), ("n_query", n_query)))
        if isinstance(strength, bool) or not isinstance(strength, (int, np.integer)) or strength < 0:
            raise ValueError(f"strength must be an int >= 0, got {strength!r}")
        x, _ = self.items(task, "train") if source is None else self._source(source)
        pool = np.arange(self.n_classes) if label_pool is None else np.unique(np.asarray(label_pool, dtype=np.int64))
        if n_support > min(pool.size, x.shape[0]):
            raise ValueError(f"n_support ({n_support}) must be at most the {pool.size} labels of label_pool and "
                             f"the {x.shape[0]} training items")
        rng = np.random.default_rng(seed)
        P = self.item_len
        tok = np.empty((batch, n_support + n_query, P + 1), dtype=np.int64)
        tgt = np.full((batch, n_support + n_query, P + 1), IGNORE_INDEX, dtype=np.int64)
        for b in range(batch):
            sup = x[rng.choice(x.shape[0], n_support, replace=False)]  # (n_support, P)
            lab = rng.permutation(pool)[:n_support]
            which = rng.integers(0, n_support, n_query)
            tok[b, :n_support, :P] = sup
            tok[b, :n_support, P] = self.label_token(lab)
            tok[b, n_support:, :P] = self.perturb(sup[which], int(strength), rng)
            tok[b, n_support:, P] = self.query_token
            tgt[b, n_support:, P] = self.label_token(lab[which])
        return torch.from_numpy(tok.reshape(batch, -1)), torch.from_numpy(tgt.reshape(batch, -1))

    def _source(self, source: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``source`` checked as items (n, item_len) of symbols with classes (n,) of this stream."""
        try:
            x, y = (np.asarray(a) for a in source)
        except (TypeError, ValueError):
            raise ValueError("source must be a pair (items (n, item_len), classes (n,))") from None
        if (x.ndim != 2 or x.shape[1] != self.item_len or y.shape != (x.shape[0],) or x.shape[0] == 0
                or not np.issubdtype(x.dtype, np.integer) or not np.issubdtype(y.dtype, np.integer)):
            raise ValueError(f"source must be integer items (n >= 1, {self.item_len}) with classes (n,), got shapes "
                             f"{x.shape} and {y.shape}")
        if x.min() < 0 or x.max() >= self.n_symbols or y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError(f"source items must be symbols in 0..{self.n_symbols - 1} and classes in "
                             f"0..{self.n_classes - 1}")
        return x.astype(np.int64), y.astype(np.int64)

    def classifier_batch(self, task: int | None, batch: int, seed: int,
                         source: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
        """A batch of query segments (batch, P + 1) from ``task``'s training items (``source``, as in
        :meth:`episodes`, instead when given), true labels: what the plain classifiers (the
        baselines) are trained on."""
        batch = check_count(batch, "batch")
        x, y = self.items(task, "train") if source is None else self._source(source)
        idx = np.random.default_rng(seed).integers(0, x.shape[0], batch)
        return self.query_tokens(x[idx], y[idx])

    def describe(self) -> dict:
        """Sizes and per-task train/test counts (JSON-ready)."""
        counts = [[int(self.items(t, s)[0].shape[0]) for s in self.SPLITS] for t in range(self.n_tasks)]
        return {"name": self.name, "n_tasks": self.n_tasks, "n_classes": self.n_classes,
                "n_symbols": self.n_symbols, "item_len": self.item_len, "vocab_size": self.vocab_size,
                "task_classes": [self.task_classes(t) for t in range(self.n_tasks)],
                "train_val_test_per_task": counts}
