"""ReuseStream: items whose future value is revealed only after their write (a cue, then a recall)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memnet.metrics import IGNORE_INDEX
from memnet.tasks import ReuseStream
from memnet.tasks.reuse import DISTRACTOR, ONCE, USEFUL


@st.composite
def streams(draw):
    L = draw(st.integers(5, 12))
    ipw = draw(st.integers(1, (L - 1) // 2))
    lo = draw(st.integers(1, 2))
    hi = lo + draw(st.integers(0, 2))
    gap = draw(st.integers(1, 3))
    S = hi + gap + draw(st.integers(1, 4))
    pu = draw(st.floats(0, 1))
    po = draw(st.floats(0, 1 - pu))
    n_items = ipw * (S - hi - gap)
    return ReuseStream(n_keys=n_items + draw(st.integers(0, 3)), n_values=draw(st.integers(1, 6)),
                       n_filler=draw(st.integers(1, 4)), segment_len=L, items_per_window=ipw, n_windows=S,
                       p_useful=pu, p_once=po, cue_gap=(lo, hi), min_gap=gap)


def check_batch(t: ReuseStream, b) -> None:
    B, T = b.tokens.shape
    L, I, M = t.segment_len, t.items_per_window, t.n_items
    assert T == t.seq_len and b.item_type.shape == (B, M) and b.cue_pos.shape == b.recall_pos.shape == (B, M)
    assert int(b.tokens.min()) >= 0 and int(b.tokens.max()) < t.vocab_size
    lo_v, hi_v = t.value_tokens
    for r in range(B):
        tok, tgt, kind, at = (x[r].tolist() for x in (b.tokens, b.targets, b.kind, b.item_at))
        keys = []
        for i in range(M):
            w = i // I
            vp = int(b.item_pos[r, i])
            assert vp == w * L + 2 * (i % I) + 1 and at[vp] == at[vp - 1] == i
            key, value = tok[vp - 1], tok[vp]
            keys.append(key)
            assert 0 <= key < t.n_keys and lo_v <= value < hi_v  # one key vocabulary for every type
            c, q, typ = int(b.cue_pos[r, i]), int(b.recall_pos[r, i]), int(b.item_type[r, i])
            assert typ == (USEFUL if q >= 0 else ONCE if c >= 0 else DISTRACTOR)
            assert q < 0 or c >= 0  # no recall without a cue
            if c >= 0:
                assert tok[c] == key and tgt[c] == value and kind[c] == 1 and at[c] == -1
                assert t.cue_gap[0] <= c // L - w <= t.cue_gap[1] and at[c] == -1
            if q >= 0:
                assert tok[q] == key and tgt[q] == value and kind[q] == 2 and at[q] == -1
                assert q // L >= c // L + t.min_gap
        assert len(set(keys)) == len(keys)  # distinct keys: a query is unambiguous
        # queries never overwrite an item block: they sit after it, or in a window without items
        assert all(p % L >= 2 * I or p // L >= t.item_windows for p in range(T) if kind[p])
        # every target is a cue or a recall of one item, and nothing else is scored
        scored = [p for p in range(T) if tgt[p] != IGNORE_INDEX]
        assert sorted(scored) == sorted(int(p) for p in torch.cat([b.cue_pos[r], b.recall_pos[r]]) if p >= 0)
        assert all((kind[p] > 0) == (tgt[p] != IGNORE_INDEX) for p in range(T))
        # windows after the last item window hold no items
        assert all(a == -1 for a in at[t.item_windows * L:])


@settings(max_examples=60, deadline=None)
@given(streams(), st.integers(1, 3), st.integers(0, 2 ** 40))
def test_stream_structure(task, B, seed):
    check_batch(task, task.sample(B, seed))


def test_items_written_do_not_depend_on_their_types():
    # the same seed at any rates: identical item blocks, keys and values; only the queries differ
    a = ReuseStream(p_useful=0.0).sample(4, seed=7)
    b = ReuseStream(p_useful=0.9, p_once=0.1).sample(4, seed=7)
    blocks = a.item_at >= 0
    assert torch.equal(a.item_at, b.item_at) and torch.equal(a.tokens[blocks], b.tokens[blocks])
    assert (a.item_type == DISTRACTOR).all() and (b.item_type != DISTRACTOR).float().mean() > 0.9
    assert not torch.equal(a.tokens, b.tokens)


def test_rates_determinism_and_pressure():
    t = ReuseStream(p_useful=0.4, p_once=0.2)
    b1, b2, b3 = t.sample(64, seed=1), t.sample(64, seed=1), t.sample(64, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(vars(b1).values(), vars(b2).values()))
    assert not torch.equal(b1.tokens, b3.tokens)
    big = t.sample(512, seed=0)
    share = [(big.item_type == c).float().mean().item() for c in (USEFUL, ONCE, DISTRACTOR)]
    assert share == pytest.approx([0.4, 0.2, 0.4], abs=0.02)
    # at the densest schedule every item still finds room for its cue and its recall
    assert (ReuseStream(p_useful=1.0).sample(64, seed=3).item_type == USEFUL).all()
    assert t.n_items == 3 * (24 - 2 - 4) and t.pressure(16) == pytest.approx(54 / 16)
    # a key's id says nothing of its type: mean key id per type agrees within noise
    keys = big.tokens.gather(1, big.item_pos - 1)
    means = [keys[big.item_type == c].float().mean().item() for c in (USEFUL, ONCE, DISTRACTOR)]
    assert max(means) - min(means) < 0.1 * t.n_keys


@pytest.mark.bad_input
@pytest.mark.parametrize("kw, match", [
    ({"n_keys": 0}, "n_keys"), ({"segment_len": 6, "items_per_window": 3}, "items_per_window"),
    ({"p_useful": 1.5}, "p_useful"), ({"p_useful": 0.7, "p_once": 0.5}, "p_useful \\+ p_once"),
    ({"cue_gap": (2, 1)}, "cue_gap"), ({"cue_gap": 1}, "cue_gap"), ({"cue_gap": (0, 1)}, "cue_gap"),
    ({"n_windows": 6}, "n_windows"), ({"n_keys": 10}, "n_keys"), ({"min_gap": True}, "min_gap"),
])
def test_stream_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ReuseStream(**kw)


@pytest.mark.bad_input
def test_bad_sample_arguments():
    t = ReuseStream()
    with pytest.raises(ValueError, match="batch"):
        t.sample(0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        t.sample(2, seed=1.5)


def test_batch_moves_between_devices():
    b = ReuseStream().sample(2, seed=0).to("cpu")
    assert b.tokens.device.type == "cpu" and b.recall_pos.dtype == torch.long
    assert np.isin(b.kind.numpy(), (0, 1, 2)).all()
