"""KeyValueRecall: a pure function of its seed, with targets exactly where the queries are."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import examples
from memnet.tasks import KeyValueRecall, RecallBatch
from memnet.tasks.recall import IGNORE


@st.composite
def tasks(draw):
    n_pairs = draw(st.integers(1, 4))
    return KeyValueRecall(n_keys=draw(st.integers(n_pairs, 12)), n_values=draw(st.integers(1, 8)),
                          n_distractors=draw(st.integers(1, 8)), n_pairs=n_pairs,
                          segment_len=draw(st.integers(2 * n_pairs, 12)))


def check_batch(task: KeyValueRecall, b: RecallBatch, exact_distance: int | None = None):
    B, T = b.tokens.shape
    assert b.targets.shape == b.distance.shape == (B, T)
    assert b.tokens.dtype == b.targets.dtype == b.distance.dtype == torch.long
    assert ((b.tokens >= 0) & (b.tokens < task.vocab_size)).all()
    n, nk = task.n_pairs, task.n_keys
    for row in range(B):
        tok, tgt, dist = b.tokens[row].tolist(), b.targets[row].tolist(), b.distance[row].tolist()
        queries = [t for t in range(T) if tgt[t] != IGNORE]
        assert len(queries) == n, "every key is queried exactly once"
        # the pair block: n (key, value) pairs back to back inside the first window
        key_pos = [t for t in range(T) if tok[t] < nk and t not in queries]
        assert len(key_pos) == n
        first = key_pos[0]
        assert key_pos == list(range(first, first + 2 * n, 2))
        assert first + 2 * n <= task.segment_len
        pairs = {tok[p]: (tok[p + 1], p + 1) for p in key_pos}
        assert len(pairs) == n, "keys are distinct"
        for k, (v, _) in pairs.items():
            assert nk <= v < nk + task.n_values, "a value follows each key"
        # outside the pair block and the queries: only distractors
        for t in range(T):
            if t not in queries and not (first <= t < first + 2 * n):
                assert tok[t] >= nk + task.n_values
                assert dist[t] == 0
        assert sorted(tok[q] for q in queries) == sorted(pairs), "each query is one of the keys"
        for q in queries:
            value, value_pos = pairs[tok[q]]
            assert q > first + 2 * n - 1, "queries come after the pair block"
            assert tgt[q] == value
            assert dist[q] == q - value_pos
            if exact_distance is not None:
                assert dist[q] == exact_distance
        assert all(tgt[t] == IGNORE for t in range(T) if t not in queries)


@settings(max_examples=examples(30))
@given(tasks(), st.integers(1, 4), st.integers(0, 20), st.integers(0, 2**32 - 1))
def test_sample_structure(task, B, extra_len, seed):
    T = task.segment_len + task.n_pairs + extra_len
    check_batch(task, task.sample(B, T, seed))


@settings(max_examples=examples(30))
@given(tasks(), st.integers(1, 4), st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_sample_at_distance_structure(task, B, extra, seed):
    d = task.min_distance() + extra
    b = task.sample_at_distance(B, d, seed)
    assert b.tokens.shape == (B, task.segment_len + d + 1)
    check_batch(task, b, exact_distance=d)


def test_determinism_given_seed():
    task = KeyValueRecall(n_keys=8, n_values=4, n_distractors=8, n_pairs=2, segment_len=8)
    for sampler, arg in ((task.sample, 40), (task.sample_at_distance, 20)):
        a, b, c = sampler(3, arg, seed=11), sampler(3, arg, seed=11), sampler(3, arg, seed=12)
        for f in ("tokens", "targets", "distance"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert not torch.equal(a.tokens, c.tokens)
        assert not (torch.equal(a.targets, c.targets) and torch.equal(a.distance, c.distance))


def test_sample_is_independent_of_global_rng():
    task = KeyValueRecall()
    torch.manual_seed(0)
    a = task.sample(2, 40, seed=3)
    torch.manual_seed(1)
    import numpy as np
    np.random.seed(1)
    b = task.sample(2, 40, seed=3)
    assert torch.equal(a.tokens, b.tokens)


def test_distances_spread_in_training_batches():
    task = KeyValueRecall(n_keys=16, n_values=8, n_distractors=16, n_pairs=4, segment_len=16)
    b = task.sample(64, 200, seed=0)
    d = b.distance[b.targets != IGNORE]
    assert d.min() >= 1  # a query always comes after its value
    assert (d < task.min_distance()).any()  # training batches include short distances too
    assert d.max() > 150  # queries are spread over the sequence


def test_properties_and_to():
    task = KeyValueRecall(n_keys=10, n_values=5, n_distractors=7, n_pairs=3, segment_len=6)
    assert task.vocab_size == 22
    assert task.chance == pytest.approx(0.2)
    assert task.min_distance() == 5
    b = task.sample_at_distance(2, 5, seed=0).to("cpu")
    assert isinstance(b, RecallBatch) and b.tokens.device.type == "cpu"


@pytest.mark.parametrize("kw, match", [
    (dict(n_keys=0), "n_keys"),
    (dict(n_values=-1), "n_values"),
    (dict(n_distractors=0), "n_distractors"),
    (dict(n_pairs=0), "n_pairs"),
    (dict(segment_len=0), "segment_len"),
    (dict(n_keys=True), "n_keys"),
    (dict(n_values=2.0), "n_values"),
    (dict(n_keys=3, n_pairs=4), r"n_pairs \(4\).*n_keys \(3\)"),
    (dict(n_pairs=5, segment_len=9), r"2 \* n_pairs \(10\).*segment_len \(9\)"),
])
def test_bad_task_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        KeyValueRecall(**kw)


def test_bad_sample_arguments():
    task = KeyValueRecall(n_keys=8, n_values=4, n_distractors=8, n_pairs=2, segment_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        task.sample(2, 8 + 2 - 1, seed=0)
    task.sample(2, 8 + 2, seed=0)  # the shortest allowed
    with pytest.raises(ValueError, match="distance"):
        task.sample_at_distance(2, task.min_distance() - 1, seed=0)
    task.sample_at_distance(2, task.min_distance(), seed=0)


@pytest.mark.parametrize("batch", [0, -1, 1.5, True])
def test_bad_batch_argument(batch):
    task = KeyValueRecall(n_keys=8, n_values=4, n_distractors=8, n_pairs=2, segment_len=8)
    with pytest.raises(ValueError, match="batch"):
        task.sample(batch, 20, seed=0)
    with pytest.raises(ValueError, match="batch"):
        task.sample_at_distance(batch, 5, seed=0)
