"""Split-Digits and Shifting-Prototypes: splits, tokens, episodes and input checks."""
import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from memnet.metrics import IGNORE_INDEX
from memnet.tasks.digits import SplitDigits, load_digits_arrays
from memnet.tasks.shift import ShiftingPrototypes


@pytest.fixture(scope="module")
def digits():
    return SplitDigits(seed=0)


def test_digits_data_and_tasks(digits):
    x, y = load_digits_arrays()
    assert x.shape == (1797, 64) and x.min() == 0 and x.max() == 16 and x.dtype == np.int64
    assert digits.vocab_size == 17 + 10 + 1 and digits.segment_len == 65
    assert [digits.task_classes(t) for t in range(5)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    seen = 0
    for t in range(5):
        xtr, ytr = digits.items(t, "train")
        xte, yte = digits.items(t, "test")
        assert set(ytr) == set(yte) == set(digits.task_classes(t))
        seen += len(ytr) + len(yte)
        for c in digits.task_classes(t):  # stratified: about 30% of every class is held out
            n_te, n = (yte == c).sum(), (y == c).sum()
            assert abs(n_te - 0.3 * n) <= 1
    assert seen == 1797


def test_split_is_fixed_by_seed_and_disjoint():
    a, b, c = SplitDigits(seed=0), SplitDigits(seed=0), SplitDigits(seed=1)
    np.testing.assert_array_equal(a._split, b._split)
    assert (a._split != c._split).any()
    xtr, _ = a.items(None, "train")
    xte, _ = a.items(None, "test")
    assert len(xtr) + len(xte) == 1797


def test_pooled_digits_agree_with_block_means():
    d1, d2 = SplitDigits(pool=1), SplitDigits(pool=2)
    x1, _ = d1.items(0, "train")
    x2, _ = d2.items(0, "train")
    assert x2.shape[1] == 16 and d2.segment_len == 17 and x2.min() >= 0 and x2.max() <= 16
    # pixel (r, c) of the pooled image is the rounded mean of block (2r..2r+1, 2c..2c+1)
    blk = x1[:, [0, 1, 8, 9]].mean(1)
    np.testing.assert_array_equal(x2[:, 0], np.floor(blk + 0.5))


def test_support_and_query_tokens(digits):
    x, y = digits.support_set(2, per_class=3, seed=0)
    assert sorted(y.tolist()) == [4, 4, 4, 5, 5, 5]
    tok = digits.support_tokens(x, y)
    assert tok.shape == (1, 6 * 65)
    seg = tok.view(6, 65)
    assert torch.equal(seg[:, :64], torch.from_numpy(x)) and torch.equal(seg[:, 64], torch.from_numpy(y + 17))
    q, tgt = digits.query_tokens(x, y)
    assert q.shape == tgt.shape == (6, 65)
    assert (q[:, -1] == digits.query_token).all() and torch.equal(tgt[:, -1], torch.from_numpy(y + 17))
    assert (tgt[:, :-1] == IGNORE_INDEX).all()
    # the support set is drawn from the training split only, and fixed by its seed
    xtr, _ = digits.items(2, "train")
    assert all((xtr == row).all(1).any() for row in x)
    x2, y2 = digits.support_set(2, per_class=3, seed=0)
    np.testing.assert_array_equal(x, x2)


def test_episodes_permute_labels_consistently(digits):
    tok, tgt = digits.episodes(1, batch=8, n_support=4, n_query=3, seed=5)
    assert tok.shape == tgt.shape == (8, 7 * 65)
    seg, tg = tok.view(8, 7, 65), tgt.view(8, 7, 65)
    assert (tg[:, :4] == IGNORE_INDEX).all() and (seg[:, 4:, -1] == digits.query_token).all()
    for b in range(8):
        sup_lab = set(seg[b, :4, -1].tolist())
        assert len(sup_lab) == 2 and sup_lab <= set(range(17, 27))  # both classes shown, label tokens only
        assert set(tg[b, 4:, -1].tolist()) <= sup_lab  # every query is answerable from the support
    # labels are permuted: across episodes the task's classes get other label tokens than 19/20
    assert set(seg[:, :4, -1].flatten().tolist()) - {19, 20}
    plain, _ = digits.episodes(1, batch=8, n_support=4, n_query=3, seed=5, permute=False)
    assert set(plain.view(8, 7, 65)[:, :4, -1].flatten().tolist()) == {19, 20}


def test_episodes_over_all_tasks_show_at_most_n_support_classes(digits):
    tok, _ = digits.episodes(None, batch=16, n_support=4, n_query=2, seed=0, permute=False)
    seg = tok.view(16, 6, 65)
    for b in range(16):
        assert len(set(seg[b, :4, -1].tolist())) == 4
    assert len(set(seg[:, :4, -1].flatten().tolist())) > 4


def test_shift_stream_statistics_shift_per_task():
    s = ShiftingPrototypes(seed=0)
    assert s.n_classes == 10 and s.vocab_size == s.n_symbols + 11
    for t in range(5):
        x, y = s.items(t, "train")
        assert x.min() >= 3 * t and x.max() < 3 * t + 6  # task t's window of symbols
        assert set(y) == set(s.task_classes(t))
        assert s.items(t, "test")[0].shape[0] == 60
    x0, _ = s.items(0, "train")
    x4, _ = s.items(4, "train")
    assert not set(x0.ravel()) & set(x4.ravel())  # distant tasks share no symbol
    np.testing.assert_array_equal(ShiftingPrototypes(seed=3)._x, ShiftingPrototypes(seed=3)._x)


@pytest.mark.parametrize("kw, match", [
    (dict(n_tasks=3), "n_tasks"), (dict(n_tasks=0), "n_tasks"), (dict(test_fraction=1.0), "test_fraction"),
    (dict(pool=3), "pool"), (dict(test_fraction="a"), "test_fraction"),
])
def test_bad_digits_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        SplitDigits(**kw)


def test_bad_stream_calls(digits):
    with pytest.raises(ValueError, match="task"):
        digits.items(5, "train")
    with pytest.raises(ValueError, match="split"):
        digits.items(0, "valid")
    with pytest.raises(ValueError, match="per_class"):
        digits.support_set(0, per_class=0, seed=0)
    with pytest.raises(ValueError, match="per_class"):
        digits.support_set(0, per_class=10_000, seed=0)
    with pytest.raises(ValueError, match="n_query"):
        digits.episodes(0, batch=2, n_support=2, n_query=0, seed=0)
    with pytest.raises(ValueError, match="noise"):
        ShiftingPrototypes(noise=1.0)
    with pytest.raises(ValueError, match="window"):
        ShiftingPrototypes(window=1)


def test_episode_labels_come_from_the_label_pool(digits):
    tok, _ = digits.episodes(1, batch=16, n_support=4, n_query=2, seed=1, label_pool=[5, 6, 7])
    labels = set(tok.view(16, 6, 65)[:, :4, -1].flatten().tolist())
    assert labels <= {22, 23, 24} and len(labels) > 2  # label tokens of classes 5..7, permuted
    with pytest.raises(ValueError, match="label_pool"):
        digits.episodes(1, batch=2, n_support=4, n_query=2, seed=1, label_pool=[5])
    with pytest.raises(ValueError, match="label_pool"):
        digits.episodes(1, batch=2, n_support=4, n_query=2, seed=1, label_pool=[5, 10])


def test_instance_episodes_query_noisy_copies_of_their_supports(digits):
    n_s, n_q, P = 5, 7, digits.item_len
    tok, tgt = digits.instance_episodes(1, batch=3, n_support=n_s, n_query=n_q, seed=4, strength=2)
    assert tok.shape == tgt.shape == (3, (n_s + n_q) * (P + 1))
    tok, tgt = tok.view(3, n_s + n_q, P + 1).numpy(), tgt.view(3, n_s + n_q, P + 1).numpy()
    x_train, _ = digits.items(1, "train")
    for b in range(3):
        sup, lab = tok[b, :n_s, :P], tok[b, :n_s, P]
        assert len(set(lab.tolist())) == n_s  # every support item its own label
        assert all((x_train == s).all(1).any() for s in sup)  # supports are the task's own training items
        assert (tgt[b, :n_s] == IGNORE_INDEX).all() and (tok[b, n_s:, P] == digits.query_token).all()
        for q in range(n_s, n_s + n_q):
            y = tgt[b, q, P]
            assert (tgt[b, q, :P] == IGNORE_INDEX).all() and y in lab
            src = sup[list(lab).index(y)]
            d = tok[b, q, :P] - src  # intensity jitter within +-2, clipped to 0..16
            assert np.abs(d).max() <= 2 and tok[b, q, :P].min() >= 0 and tok[b, q, :P].max() <= 16
    a, _ = digits.instance_episodes(1, 2, n_s, n_q, seed=4, strength=0)
    a = a.view(2, n_s + n_q, P + 1).numpy()
    for b in range(2):  # strength 0: each query is an exact copy of a support item
        assert all((a[b, :n_s, :P] == q).all(1).any() for q in a[b, n_s:, :P])
    with pytest.raises(ValueError, match="strength"):
        digits.instance_episodes(1, 2, n_s, n_q, seed=0, strength=-1)
    with pytest.raises(ValueError, match="n_support"):
        digits.instance_episodes(1, 2, 11, n_q, seed=0)
    with pytest.raises(ValueError, match="n_support"):
        digits.instance_episodes(1, 2, 4, n_q, seed=0, label_pool=[0, 1, 2])


def test_token_substitution_perturbs_at_the_stated_rate():
    s = ShiftingPrototypes(n_tasks=5, seed=0)
    x, _ = s.items(0, "train")
    rng = np.random.default_rng(0)
    big = np.repeat(x, 20, axis=0)
    changed = (s.perturb(big, 3, rng) != big).mean()
    # replaced w.p. 0.3, and a replacement equals the old symbol w.p. 1 / n_symbols
    assert changed == pytest.approx(0.3 * (1 - 1 / s.n_symbols), abs=0.01)
    assert (s.perturb(big, 0, rng) == big).all()
    assert s.perturb(big, 3, rng).max() < s.n_symbols


@pytest.mark.parametrize("make", [lambda **kw: SplitDigits(pool=2, **kw), lambda **kw: ShiftingPrototypes(**kw)])
def test_validation_is_carved_from_training_items_only(make):
    plain, carved = make(seed=4), make(seed=4, val_fraction=0.25)
    for task in range(plain.n_tasks):
        test_plain, test_carved = plain.items(task, "test"), carved.items(task, "test")
        for a, b in zip(test_plain, test_carved):  # the test items do not move
            np.testing.assert_array_equal(a, b)
        (xp, yp), (xt, yt), (xv, yv) = plain.items(task, "train"), carved.items(task, "train"), carved.items(task, "val")
        assert len(yt) + len(yv) == len(yp) and len(plain.items(task, "val")[1]) == 0
        # every class gives its share (stratified), and train and val are the plain training items, split
        for c in plain.task_classes(task):
            assert (yv == c).sum() == round(0.25 * (yp == c).sum())
        rows = lambda x, y: sorted(map(tuple, np.concatenate([x, y[:, None]], 1).tolist()))
        assert rows(np.concatenate([xt, xv]), np.concatenate([yt, yv])) == rows(xp, yp)
    other = make(seed=5, val_fraction=0.25)
    assert not np.array_equal(other._val, carved._val)  # each seed its own validation items
    counts = carved.describe()["train_val_test_per_task"]
    assert counts[0] == [len(carved.items(0, s)[1]) for s in ("train", "val", "test")]
    for bad in (1.0, -0.1, "a", True):
        with pytest.raises(ValueError, match="val_fraction"):
            make(seed=0, val_fraction=bad)


def test_episodes_and_batches_draw_from_a_given_source(digits):
    x, y = digits.items(None, "train")
    pick = np.concatenate([np.flatnonzero(y == c)[:8] for c in (3, 7, 8)])
    src = (x[pick], y[pick])
    allowed = {tuple(r) for r in x[pick]}
    P = digits.item_len
    tok, tgt = digits.episodes(0, 6, 4, 3, seed=1, source=src, permute=False)
    segs = tok.view(6, 7, P + 1)
    assert all(tuple(r) in allowed for r in segs[:, :, :P].reshape(-1, P).tolist())
    assert set(segs[:, :4, P].unique().tolist()) <= {int(digits.label_token(c)) for c in (3, 7, 8)}
    tok, _ = digits.instance_episodes(0, 4, 3, 2, seed=2, source=src)
    assert all(tuple(r) in allowed for r in tok.view(4, 5, P + 1)[:, :3, :P].reshape(-1, P).tolist())
    tok, tgt = digits.classifier_batch(0, 16, seed=3, source=src)
    assert all(tuple(r) in allowed for r in tok[:, :P].tolist())
    assert set((tgt[:, P] - digits.n_symbols).tolist()) <= {3, 7, 8}
    with pytest.raises(ValueError, match="source"):
        digits.classifier_batch(0, 4, seed=0, source=(x[:3, :5], y[:3]))
    with pytest.raises(ValueError, match="source"):
        digits.episodes(0, 2, 2, 1, seed=0, source=(x[:3] + 100, y[:3]))
    with pytest.raises(ValueError, match="source"):
        digits.episodes(0, 2, 2, 1, seed=0, source=x[:3])
