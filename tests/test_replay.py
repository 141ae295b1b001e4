"""ReplayBuffer: capacity, class balance, reservoir sampling's uniform inclusion, input checks."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memnet.replay import ReplayBuffer


def offered(counts: list[int], item_len: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """counts[c] items of class c, in class order; item i of the stream is (i, i, ...)."""
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    x = np.repeat(np.arange(y.size)[:, None], item_len, axis=1)
    return x, y


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 30), counts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       policy=st.sampled_from(["reservoir", "balanced"]), seed=st.integers(0, 10_000))
def test_buffer_holds_offered_items_with_their_classes_within_capacity(capacity, counts, policy, seed):
    x, y = offered(counts)
    buf = ReplayBuffer(capacity, 3, policy, seed)
    buf.add(x, y)
    bx, by = buf.items()
    assert len(buf) == min(capacity, y.size) == by.size and buf.seen == y.size
    assert np.array_equal(y[bx[:, 0]], by)  # every held item is an offered one, with its own class
    assert np.unique(bx[:, 0]).size == by.size  # none held twice
    if policy == "balanced":  # every class seen keeps an equal share, within one item (or all its items)
        held = np.bincount(by, minlength=len(counts))
        share = np.minimum(np.array(counts), held.max())
        assert np.all(held >= np.minimum(np.array(counts), held.max() - 1)) and np.all(held <= share)


def test_balanced_buffer_keeps_every_class_after_a_long_task():
    x, y = offered([200, 5, 5])
    buf = ReplayBuffer(12, 3, "balanced", 0)
    buf.add(x, y)
    assert np.bincount(buf.items()[1]).tolist() == [4, 4, 4]
    res = ReplayBuffer(12, 3, "reservoir", 0)
    res.add(x, y)
    assert np.bincount(res.items()[1], minlength=3)[0] >= 8  # reservoir: shares follow the stream


def test_reservoir_and_within_class_sampling_include_every_item_equally():
    """Algorithm R holds each of n offered items with probability capacity / n; the balanced
    policy, within a class that fills its share, holds each of that class's items equally often."""
    n, cap, reps = 60, 10, 3000
    hits = {"reservoir": np.zeros(n), "balanced": np.zeros(n)}
    x, y = offered([n])
    for policy in hits:
        for s in range(reps):
            buf = ReplayBuffer(cap, 3, policy, s)
            buf.add(x, y)
            hits[policy][buf.items()[0][:, 0]] += 1
    for policy, h in hits.items():
        freq = h / reps
        sd = np.sqrt(cap / n * (1 - cap / n) / reps)
        assert np.all(np.abs(freq - cap / n) < 5 * sd), (policy, freq.min(), freq.max())


def test_same_seed_same_choices_and_bytes():
    x, y = offered([30, 30, 30], item_len=16)
    a, b = ReplayBuffer(20, 16, "balanced", 3), ReplayBuffer(20, 16, "balanced", 3)
    a.add(x, y)
    b.add(x, y)
    assert all(np.array_equal(u, v) for u, v in zip(a.items(), b.items()))
    assert a.nbytes == 20 * 17


def test_bad_buffer_arguments_and_rejected_calls_leave_it_unchanged():
    for kw, match in ((dict(capacity=0), "capacity"), (dict(capacity=2.5), "capacity"), (dict(item_len=0), "item_len"),
                      (dict(policy="fifo"), "policy")):
        with pytest.raises(ValueError, match=match):
            ReplayBuffer(**{"capacity": 4, "item_len": 3, **kw})
    buf = ReplayBuffer(4, 3)
    x, y = offered([3])
    buf.add(x, y)
    before = buf.items()
    for bx, by, match in ((x[:, :2], y, "x must be"), (x, y[:2], "x must be"), (x.astype(float), y, "integer")):
        with pytest.raises(ValueError, match=match):
            buf.add(bx, by)
    assert all(np.array_equal(u, v) for u, v in zip(before, buf.items())) and buf.seen == 3
