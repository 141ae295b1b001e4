"""Shifting-Prototypes: a synthetic class-incremental stream whose token statistics shift per task.

Every class has a prototype: a sequence of ``item_len`` symbols. An item of the class is its
prototype with each position independently replaced, with probability ``noise``, by a symbol
drawn from the task's own symbol distribution. The distribution shifts from task to task:
task ``t`` draws its prototypes and its noise from a window of ``window`` consecutive symbols
starting at ``t * stride`` (so consecutive tasks share some symbols and distant ones none).
Classes, labels and the token layout are those of :class:`~memnet.tasks.stream.TaskStream`.
"""
from __future__ import annotations

import numpy as np

from .stream import TaskStream, check_count


class ShiftingPrototypes(TaskStream):
    """``n_tasks`` tasks of ``classes_per_task`` classes; ``train_per_class`` + ``test_per_class``
    items per class, all fixed by ``seed``; ``val_fraction`` of every class's training items held
    out for validation (:meth:`~memnet.tasks.stream.TaskStream.hold_out_validation`)."""

    name = "shifting_prototypes"

    def __init__(self, n_tasks: int = 5, classes_per_task: int = 2, item_len: int = 8, window: int = 6,
                 stride: int = 3, noise: float = 0.3, train_per_class: int = 60, test_per_class: int = 30,
                 seed: int = 0, val_fraction: float = 0.0):
        for k, v in (("n_tasks", n_tasks), ("classes_per_task", classes_per_task), ("item_len", item_len),
                     ("window", window), ("stride", stride), ("train_per_class", train_per_class),
                     ("test_per_class", test_per_class)):
            check_count(v, k)
        if window < 2:
            raise ValueError(f"window must be >= 2 symbols, got {window}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 1:
            raise ValueError(f"noise must be a float in [0, 1), got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.n_tasks, self.item_len, self.window, self.stride = n_tasks, item_len, window, stride
        self.noise, self.seed = float(noise), int(seed)
        self.n_classes = n_tasks * classes_per_task
        self.n_symbols = (n_tasks - 1) * stride + window
        rng = np.random.default_rng(seed)
        xs, ys, splits = [], [], []
        n = train_per_class + test_per_class
        for t in range(n_tasks):
            lo = t * stride  # this task's symbols: lo .. lo + window - 1
            for c in range(t * classes_per_task, (t + 1) * classes_per_task):
                proto = lo + rng.integers(0, window, item_len)  # (P,)
                items = np.tile(proto, (n, 1))
                flip = rng.random((n, item_len)) < noise
                items[flip] = lo + rng.integers(0, window, int(flip.sum()))
                xs.append(items)
                ys.append(np.full(n, c))
                splits.append(np.arange(n) >= train_per_class)
        self._x = np.concatenate(xs).astype(np.int64)
        self._y = np.concatenate(ys).astype(np.int64)
        self._split = np.concatenate(splits)
        self.hold_out_validation(val_fraction, seed)
