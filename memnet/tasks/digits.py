"""Split-Digits: scikit-learn's bundled 8x8 handwritten digits as a class-incremental stream.

Five tasks of two classes each (0/1, 2/3, 4/5, 6/7, 8/9), one shared 10-way label space and no
task id at test time (the "class-incremental" scenario of van de Ven et al.). An image is its
64 pixel intensities read row by row; each intensity is already an integer 0..16, so it is a
token as it stands. The data ship inside the scikit-learn wheel (``sklearn.datasets.load_digits``,
1797 images of the UCI optical-digits test set): nothing is downloaded.

The train/test split is stratified per class and fixed by ``seed``. ``pool=2`` averages 2x2
pixel blocks (rounded, still 0..16) into a 4x4 image of 16 tokens: four times fewer tokens per
image for CPU budgets, at some cost in how separable the digits are (1-nearest-neighbour
accuracy on the raw pixels drops from about 98% to about 92%).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .stream import TaskStream, check_count


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 64) int64 in 0..16, labels (1797,) int64) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Split-Digits needs scikit-learn (its 8x8 digits ship inside the wheel): "
                          "pip install scikit-learn") from e
    d = load_digits()
    return d.data.astype(np.int64), d.target.astype(np.int64)


class SplitDigits(TaskStream):
    """Class-incremental Split-Digits: ``n_tasks`` tasks of ``10 // n_tasks`` digits each.

    test_fraction: share of every class held out for testing (stratified, fixed by ``seed``).
    val_fraction: share of every class's *training* items held out for validation
    (:meth:`~memnet.tasks.stream.TaskStream.hold_out_validation`).
    """

    name = "split_digits"

    def __init__(self, n_tasks: int = 5, test_fraction: float = 0.3, seed: int = 0, pool: int = 1,
                 val_fraction: float = 0.0):
        n_tasks = check_count(n_tasks, "n_tasks")
        if 10 % n_tasks != 0:
            raise ValueError(f"n_tasks must divide the 10 digit classes (1, 2, 5 or 10), got {n_tasks}")
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if pool not in (1, 2):
            raise ValueError(f"pool must be 1 (8x8 pixels) or 2 (4x4 means of 2x2 blocks), got {pool!r}")
        self.n_tasks, self.test_fraction, self.seed, self.pool = n_tasks, float(test_fraction), int(seed), pool
        x, self._y = load_digits_arrays()
        if pool == 2:  # (n, 8, 8) -> (n, 4, 4) block means, rounded half up: still integers 0..16
            x = np.floor(x.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)) + 0.5).astype(np.int64).reshape(-1, 16)
        self._x = x
        self.n_classes, self.n_symbols, self.item_len = 10, 17, x.shape[1]
        rng = np.random.default_rng(seed)
        self._split = np.zeros(self._y.shape[0], dtype=bool)
        for c in range(self.n_classes):  # stratified: the same share of every class is held out
            idx = rng.permutation(np.flatnonzero(self._y == c))
            self._split[idx[: int(round(test_fraction * idx.size))]] = True
        self.hold_out_validation(val_fraction, seed)

    def symbol_code(self) -> Tensor:
        """(vocab_size, 1): a pixel token's intensity scaled to [0, 1], zero for labels and QUERY.
        Intensities are ordered, so an item's address is its pixel vector and the cosine between
        two addresses is the cosine between the images (a one-hot code would call intensities 7
        and 8 as different as 0 and 16)."""
        code = torch.zeros(self.vocab_size, 1)
        code[: self.n_symbols, 0] = torch.arange(self.n_symbols, dtype=torch.float32) / (self.n_symbols - 1)
        return code

    def perturb(self, x: np.ndarray, strength: int, rng: np.random.Generator) -> np.ndarray:
        """A noisy copy of images ``x`` (n, P): every pixel intensity moved by an integer drawn
        uniformly from ``-strength..strength``, clipped to 0..16 (intensities are ordered, so
        a nearby intensity is a small change, unlike a random symbol)."""
        return np.clip(x + rng.integers(-strength, strength + 1, x.shape), 0, self.n_symbols - 1)
