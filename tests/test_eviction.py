"""Eviction policies replayed on ReuseStream schedules (memnet.eviction)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from memnet.eviction import POLICIES, held_at_queries, held_fraction, replay_lifetimes
from memnet.tasks import ReuseStream

L = 4  # segment_len of the hand-made schedule


def hand_batch():
    """Six windows of 4 tokens, one item per window in windows 0-2 (value tokens at 1, 5, 9).
    Item 0 is cued in window 1 and recalled in window 4; item 1 is never asked for; item 2 is
    recalled in window 5."""
    T = 6 * L
    kind = torch.zeros(1, T, dtype=torch.long)
    kind[0, 6], kind[0, 17], kind[0, 21] = 1, 2, 2
    i = lambda *v: torch.tensor([v])
    return SimpleNamespace(tokens=torch.zeros(1, T, dtype=torch.long), kind=kind, item_type=i(0, 1, 0),
                           item_pos=i(1, 5, 9), cue_pos=i(6, -1, -1), recall_pos=i(17, -1, 21))


@pytest.mark.parametrize("policy, recall_of_item0", [("lru", False), ("evidence", True), ("distractors_first", True),
                                                      ("belady", True)])
def test_hand_schedule(policy, recall_of_item0):
    # two slots: window 2's write must let item 0 or item 1 go; only the age rule lets item 0 go
    b = hand_batch()
    held = held_at_queries(b, L, 2, policy, grace=1)
    assert held[0, 6]  # the cue of item 0 (nothing was evicted yet)
    assert bool(held[0, 17]) == recall_of_item0
    assert held[0, 21]  # item 2 was written last
    assert held.sum() == 2 + recall_of_item0  # nothing but queries is marked
    assert held_fraction(b, held) == {"cue": 1.0, "recall": (1 + recall_of_item0) / 2}


def test_evidence_waits_for_its_grace():
    # with a grace of 2 windows item 1 (written in window 1) is still in its grace at window 2's write,
    # so the oldest (item 0, asked for) goes
    assert not held_at_queries(hand_batch(), L, 2, "evidence", grace=2)[0, 17]


TASK = ReuseStream(n_keys=64, n_values=16, n_filler=16, segment_len=8, items_per_window=2, n_windows=10,
                   p_useful=0.4, cue_gap=(1, 2), min_gap=2)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), slots=st.integers(2, 14))
def test_lru_is_the_last_writes(seed, slots):
    """Agreement: age-based eviction holds at a query of window w exactly the `slots` items written
    last before w (a closed form, no replay)."""
    b = TASK.sample(3, seed)
    held = held_at_queries(b, TASK.segment_len, slots, "lru")
    written = (b.item_pos // TASK.segment_len).numpy()
    for r in range(3):
        for m in range(b.item_pos.shape[1]):
            for p in (int(b.cue_pos[r, m]), int(b.recall_pos[r, m])):
                if p >= 0:
                    before = np.flatnonzero(written[r] < p // TASK.segment_len)  # write order = item order
                    assert bool(held[r, p]) == (m in before[-slots:])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), policy=st.sampled_from(POLICIES))
def test_room_for_everything_holds_everything(seed, policy):
    b = TASK.sample(4, seed)
    held = held_at_queries(b, TASK.segment_len, TASK.n_items, policy)
    assert torch.equal(held, b.kind > 0)


def test_pressure_orders_the_rules():
    """On a pressured stream the rules order as their knowledge does: age alone holds least, the
    evidence of one read more, and the oracles that see the schedule the most."""
    task = ReuseStream(n_keys=64, n_values=32, n_filler=32, segment_len=16, items_per_window=3, n_windows=16,
                       p_useful=0.3, cue_gap=(1, 2), min_gap=3)
    b = task.sample(64, seed=7)
    recall = {p: held_fraction(b, held_at_queries(b, 16, 12, p))["recall"] for p in POLICIES}
    assert recall["lru"] + 0.2 < recall["evidence"] < recall["distractors_first"]
    assert recall["evidence"] < recall["belady"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), slots=st.integers(2, 8), policy=st.sampled_from(POLICIES))
def test_replay_lifetimes_agree_with_what_the_queries_find(seed, slots, policy):
    """Two readings of one replay: an item is held at a query exactly when the query's age is within its lifetime."""
    batch = TASK.sample(4, seed=seed)
    held = held_at_queries(batch, 8, slots, policy).numpy()
    duration, observed = replay_lifetimes(batch, 8, slots, policy)
    written = batch.item_pos.numpy() // 8
    assert duration.shape == written.shape and (duration >= 1).all()
    assert ((written + duration <= TASK.n_windows) & ((written + duration < TASK.n_windows) | ~observed)).all()
    assert observed.sum() == max(0, TASK.n_items - slots) * 4  # a full memory lets one item go per write
    for field in (batch.cue_pos, batch.recall_pos):
        rows, items = np.nonzero(field.numpy() >= 0)
        pos = field.numpy()[rows, items]
        age = pos // 8 - written[rows, items]
        assert np.array_equal(held[rows, pos], age <= duration[rows, items])


def test_bad_input():
    b = hand_batch()
    with pytest.raises(ValueError, match="policy must be one of"):
        held_at_queries(b, L, 2, "random")
    with pytest.raises(ValueError, match="num_slots must be an int >= 1"):
        held_at_queries(b, L, 0, "lru")
    with pytest.raises(ValueError, match="segment_len \\(5\\) must divide"):
        held_at_queries(b, 5, 2, "lru")
    with pytest.raises(ValueError, match="grace must be an int >= 0"):
        held_at_queries(b, L, 2, "evidence", grace=-1)
    with pytest.raises(TypeError, match="without item_type, item_pos"):
        held_at_queries(SimpleNamespace(tokens=b.tokens, kind=b.kind), L, 2, "lru")
    task_b = TASK.sample(1, 0)
    with pytest.raises(ValueError, match="num_slots \\(1\\) must be >= the items written per window \\(2\\)"):
        held_at_queries(task_b, TASK.segment_len, 1, "lru")
    with pytest.raises(ValueError, match="held must be a bool tensor"):
        held_fraction(b, torch.zeros(1, 3, dtype=torch.bool))
