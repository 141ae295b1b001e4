"""Item lifetimes in a memory trace and their survival analysis (memnet.lifetimes)."""
from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memnet import MemNet, MemNetConfig
from memnet.eviction import held_at_queries
from memnet.experiments.forgetting import held_at_recalls
from memnet.lifetimes import (ItemLifetimes, bootstrap_rmst_ratio, hazard, item_lifetimes, probe_sequences, rmst_steps,
                              survival_steps)
from memnet.survival import kaplan_meier, rmst
from memnet.tasks import ReuseStream

IGNORE = -100


# ---------------------------------------------------------------------------- Kaplan-Meier on whole windows
@st.composite
def censored_durations(draw):
    n = draw(st.integers(1, 30))
    d = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    o = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return np.array(d, dtype=np.int64), np.array(o, dtype=bool), draw(st.integers(1, 15))


@given(censored_durations())
def test_survival_steps_agree_with_lifelines(case):
    """Two computation paths: the direct product over whole windows, and lifelines' Kaplan-Meier fit
    read at t = 0..horizon (and its restricted mean); the hazard is the step from S(t - 1) to S(t)."""
    d, o, h = case
    km = kaplan_meier(d, o)
    s = survival_steps(d, o, h)
    assert s.shape == (h + 1,)
    np.testing.assert_allclose(s, km(np.arange(h + 1)), rtol=0, atol=1e-12)
    assert rmst_steps(d, o, h) == pytest.approx(rmst(km, h), abs=1e-12)
    haz, n = hazard(d, o, h)
    np.testing.assert_array_equal(n, [(d >= t).sum() for t in range(1, h + 1)])
    prev = s[:-1]
    ok = (n > 0) & (prev > 0)
    np.testing.assert_allclose(s[1:][ok], (prev * (1.0 - haz))[ok], rtol=0, atol=1e-12)
    assert np.isnan(haz[n == 0]).all() and not np.isnan(haz[n > 0]).any()


def test_survival_steps_by_hand():
    # durations 1 2 2 3 5, the second 2 and the 5 censored:
    # t=1: 5 at risk, 1 death -> 4/5; t=2: 4 at risk, 1 death -> 0.6; t=3: 2 at risk, 1 death -> 0.3; t=4: 1 at risk
    d, o = np.array([1, 2, 2, 3, 5]), np.array([True, True, False, True, False])
    np.testing.assert_allclose(survival_steps(d, o, 4), [1.0, 0.8, 0.6, 0.3, 0.3], rtol=0, atol=1e-12)
    assert rmst_steps(d, o, 4) == pytest.approx(1.0 + 0.8 + 0.6 + 0.3, abs=1e-12)
    assert rmst_steps(d, o, 1) == pytest.approx(1.0, abs=1e-12)
    # a duration of 0 (an item never written) dies at t = 0: S(0) = 2/3; t=2: 2 at risk, 1 death -> 1/3
    d0, o0 = torch.tensor([0, 2, 4]), torch.tensor([True, True, False])  # tensors are read as arrays
    np.testing.assert_allclose(survival_steps(d0, o0, 3), [2 / 3, 2 / 3, 1 / 3, 1 / 3], rtol=0, atol=1e-12)
    assert rmst_steps(d0, o0, 3) == pytest.approx(5 / 3, abs=1e-12)
    # everything censored: nothing dies
    np.testing.assert_array_equal(survival_steps([3, 1], [False, False], 2), [1.0, 1.0, 1.0])


def test_empty_input_gives_nan():
    s = survival_steps(np.array([], dtype=np.int64), np.array([], dtype=bool), 3)
    assert s.shape == (4,) and np.isnan(s).all()
    assert np.isnan(rmst_steps([], [], 3))
    haz, n = hazard(np.array([], dtype=np.int64), np.array([], dtype=bool), 2)
    assert np.isnan(haz).all() and n.tolist() == [0, 0]


@pytest.mark.parametrize("fn", [survival_steps, rmst_steps, hazard])
def test_bad_durations_raise(fn):
    ok_d, ok_o = np.array([1, 2]), np.array([True, False])
    with pytest.raises(ValueError, match="duration must hold non-negative integers"):
        fn(np.array([1, -1]), ok_o, 3)
    with pytest.raises(ValueError, match="duration must hold non-negative integers"):
        fn(np.array([1.0, 2.0]), ok_o, 3)
    with pytest.raises(ValueError, match="duration must hold non-negative integers"):
        fn(np.array([True, False]), ok_o, 3)
    with pytest.raises(ValueError, match="duration and observed must be 1-D of equal length"):
        fn(ok_d, np.array([True]), 3)
    with pytest.raises(ValueError, match="duration and observed must be 1-D of equal length"):
        fn(ok_d.reshape(1, 2), ok_o.reshape(1, 2), 3)
    for bad in ([2, 0], [0.5, 1.0], ["a", "b"]):
        with pytest.raises(ValueError, match="observed must be bool-like"):
            fn(ok_d, np.array(bad), 3)
    np.testing.assert_equal(fn(ok_d, np.array([1, 0]), 3), fn(ok_d, ok_o, 3))  # 0/1 is accepted as bool
    for h in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="horizon must be an int >= 1"):
            fn(ok_d, ok_o, h)


def test_hazard_by_hand():
    # durations 1 2 2 3 5 (the second 2 and the 5 censored), ages 1..6:
    # held 5 4 2 1 1 0, let go 1 1 1 0 0 0 (the censored ones are never let go)
    d, o = np.array([1, 2, 2, 3, 5]), np.array([True, True, False, True, False])
    haz, n = hazard(d, o, 6)
    assert n.tolist() == [5, 4, 2, 1, 1, 0]
    np.testing.assert_allclose(haz[:5], [1 / 5, 1 / 4, 1 / 2, 0.0, 0.0], rtol=0, atol=1e-12)
    assert np.isnan(haz[5])
    # an item never written (duration 0) is never held at an age >= 1
    haz, n = hazard(np.array([0, 0, 1]), np.array([True, True, True]), 2)
    assert n.tolist() == [1, 0] and haz[0] == 1.0 and np.isnan(haz[1])


# ---------------------------------------------------------------------------- ItemLifetimes
def make_lifetimes(rows: list[list[tuple[int, int, bool]]]) -> ItemLifetimes:
    """One ItemLifetimes from rows of (type, duration, observed) items (window: the item's index)."""
    flat = [(r, i, t, i, d, o) for r, row in enumerate(rows) for i, (t, d, o) in enumerate(row)]
    cols = [np.array(c, dtype=np.int64) for c in zip(*flat)]
    return ItemLifetimes(*cols[:5], observed=cols[5].astype(bool))


def test_to_dict_from_dict_round_trip():
    life = ItemLifetimes(row=np.array([0, 0, 1]), item=np.array([0, 1, 0]), type=np.array([0, 1, 2]),
                         window=np.array([0, 1, 0]), duration=np.array([3, 0, 5]),
                         observed=np.array([True, True, False]), slot=np.array([2, -1, 0]))
    d = life.to_dict()
    assert d["observed"] == [1, 1, 0] and d["duration"] == [3, 0, 5] and d["slot"] == [2, -1, 0]
    back = ItemLifetimes.from_dict(json.loads(json.dumps(d)))  # through JSON, as a stored run holds it
    for f in ("row", "item", "type", "window", "duration", "observed", "slot"):
        np.testing.assert_array_equal(getattr(back, f), getattr(life, f))
    assert back.observed.dtype == bool and back.duration.dtype == np.int64
    # a record without slots (stored before they were) reads back without them
    no_slot = {k: v for k, v in d.items() if k != "slot"}
    old = ItemLifetimes.from_dict(no_slot)
    assert old.slot is None and old.to_dict() == no_slot
    np.testing.assert_array_equal(old.select(old.duration > 0).duration, [3, 5])
    with pytest.raises(ValueError, match="equal length"):
        ItemLifetimes.from_dict({**d, "window": [0, 1]})


def test_held_at_by_hand():
    # durations 0 (never written), 1, 3, 3 (the last one censored): held at age a iff 0 < a <= duration
    life = make_lifetimes([[(0, 0, True), (0, 1, True), (1, 3, True), (1, 3, False)]])
    assert life.held_at(1).tolist() == [False, True, True, True]
    assert life.held_at(2).tolist() == [False, False, True, True]
    assert life.held_at(3).tolist() == [False, False, True, True]
    assert life.held_at(4).tolist() == [False, False, False, False]
    assert life.held_at(np.array([1, 1, 4, 3])).tolist() == [False, True, False, True]  # one age per item


# ---------------------------------------------------------------------------- bootstrap
def random_lifetimes(seed: int, rows: int = 12, per_row: int = 6) -> ItemLifetimes:
    """Useful items (type 0) live longer than distractors (type 1); some are censored."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, size=(rows, per_row))
    d = np.where(t == 0, rng.integers(2, 9, size=t.shape), rng.integers(0, 4, size=t.shape))
    o = rng.random(t.shape) < 0.7
    return make_lifetimes([[(int(t[r, i]), int(d[r, i]), bool(o[r, i])) for i in range(per_row)] for r in range(rows)])


def test_bootstrap_ratio_is_the_pooled_rmst_ratio():
    lives = [random_lifetimes(1), random_lifetimes(2, rows=9)]
    out = bootstrap_rmst_ratio(lives, 0, 1, horizon=6, n_boot=200, seed=3)
    d = np.concatenate([x.duration for x in lives])
    o = np.concatenate([x.observed for x in lives])
    t = np.concatenate([x.type for x in lives])
    a, b = rmst_steps(d[t == 0], o[t == 0], 6), rmst_steps(d[t == 1], o[t == 1], 6)
    assert out["numerator"] == pytest.approx(a, abs=1e-12) and out["denominator"] == pytest.approx(b, abs=1e-12)
    assert out["ratio"] == pytest.approx(a / b, rel=1e-12) and out["ratio"] > 1.5
    assert out["lo"] < out["ratio"] < out["hi"]
    # a function of its seed; another seed draws other replicates
    assert bootstrap_rmst_ratio(lives, 0, 1, horizon=6, n_boot=200, seed=3) == out
    other = bootstrap_rmst_ratio(lives, 0, 1, horizon=6, n_boot=200, seed=4)
    assert other["ratio"] == out["ratio"] and (other["lo"], other["hi"]) != (out["lo"], out["hi"])
    # a narrower level gives a narrower interval
    narrow = bootstrap_rmst_ratio(lives, 0, 1, horizon=6, n_boot=200, seed=3, level=0.5)
    assert out["lo"] <= narrow["lo"] <= narrow["hi"] <= out["hi"]


def test_bootstrap_same_type_gives_one():
    out = bootstrap_rmst_ratio([random_lifetimes(5)], 0, 0, horizon=6, n_boot=50)
    assert out == {"ratio": 1.0, "lo": 1.0, "hi": 1.0, "numerator": out["denominator"],
                   "denominator": out["denominator"]}
    assert out["numerator"] > 0


def test_bootstrap_resamples_seeds_by_hand():
    """Seed A: every row holds two useful items alive past the horizon and two distractors of durations
    0 and 1; seed B: the same but its useful items also live 0 and 1 windows. Rows of a seed are alike,
    so a replicate's ratio depends only on the seeds drawn: AA 8 / 0.5 = 16, AB 4.25 / 0.5 = 8.5 (the
    pooled ratio), BB 1; each pair of draws AA and BB comes a quarter of the time."""
    a = make_lifetimes([[(0, 9, False), (0, 9, False), (1, 0, True), (1, 1, True)]] * 3)
    b = make_lifetimes([[(0, 0, True), (0, 1, True), (1, 0, True), (1, 1, True)]] * 3)
    out = bootstrap_rmst_ratio([a, b], 0, 1, horizon=8, n_boot=400, seed=0)
    assert out["numerator"] == pytest.approx(0.75 + 7 * 0.5) and out["denominator"] == pytest.approx(0.5)
    assert out["ratio"] == pytest.approx(8.5)
    assert out["lo"] == pytest.approx(1.0) and out["hi"] == pytest.approx(16.0)
    # one seed: only sequences are resampled, and A's are alike
    assert bootstrap_rmst_ratio([a], 0, 1, horizon=8, n_boot=20) == pytest.approx(
        {"ratio": 16.0, "lo": 16.0, "hi": 16.0, "numerator": 8.0, "denominator": 0.5})


def test_bootstrap_bad_input():
    life = random_lifetimes(0)
    with pytest.raises(TypeError, match="lifetimes must be a non-empty sequence"):
        bootstrap_rmst_ratio([], 0, 1, 4)
    with pytest.raises(TypeError, match="lifetimes must be a non-empty sequence"):
        bootstrap_rmst_ratio([life.to_dict()], 0, 1, 4)
    for n_boot in (0, True, 1.5):
        with pytest.raises(ValueError, match="n_boot must be an int >= 1"):
            bootstrap_rmst_ratio([life], 0, 1, 4, n_boot=n_boot)
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="level must be in"):
            bootstrap_rmst_ratio([life], 0, 1, 4, level=level)
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        bootstrap_rmst_ratio([life], 0, 1, 0)


# ---------------------------------------------------------------------------- lifetimes of a real forward pass
L, SLOTS = 8, 4


def tiny_task(n_windows: int, min_gap: int = 2, cue_gap: tuple[int, int] = (1, 2)) -> ReuseStream:
    return ReuseStream(n_keys=16, n_values=8, n_filler=8, segment_len=L, items_per_window=2, n_windows=n_windows,
                       min_gap=min_gap, cue_gap=cue_gap)


def forward(n_windows: int, decay_mode: str, seed: int, min_gap: int = 2, rows: int = 6):
    task = tiny_task(n_windows, min_gap, (1, 1) if min_gap == 1 else (1, 2))
    torch.manual_seed(seed)
    cfg = MemNetConfig(vocab_size=task.vocab_size, d_model=16, num_slots=SLOTS, top_k=2, mem_heads=2, segment_len=L,
                       writes_per_segment=2, write_tokens=task.value_tokens, allocation="faded", decay_mode=decay_mode,
                       decay_init=0.0)
    model = MemNet(cfg)
    model.eval()
    batch = task.sample(rows, seed=100 + seed)
    with torch.no_grad():
        out = model(batch.tokens, return_trace=True)
    return task, batch, out.trace


# (n_windows, decay_mode, seed[, min_gap]); with min_gap 1 (and cues one window after the write) a recall
# can come 2 windows after its item's write, the last window a replaced item is still read in
CASES = [(7, "none", 0), (7, "none", 1), (10, "none", 2), (10, "fixed", 3), (10, "learned", 4), (6, "none", 5, 1)]
AGE_ORDER = [c for c in CASES if c[1] in ("none", "fixed")]  # decay that fades every slot alike


@functools.lru_cache(maxsize=None)
def real(case):
    return forward(*case)


def replay_trace(trace, batch):
    """A direct replay of the trace's slot ownership: each write event hands its slot to the item of
    the token allocated to it; an item lives until the next write event on its slot. Returns
    (duration, observed, slot) per item, (B, M) each."""
    ev = trace.write_events.numpy().astype(bool)
    alloc, pos = trace.write_alloc.numpy(), trace.write_pos.numpy()
    item_at, item_pos = batch.item_at.numpy(), batch.item_pos.numpy()
    B, S, N = ev.shape
    M = item_pos.shape[1]
    duration = np.zeros((B, M), dtype=np.int64)
    observed = np.ones((B, M), dtype=bool)
    slot = np.full((B, M), -1, dtype=np.int64)
    for b in range(B):
        owner = [-1] * N
        for s in range(S):
            for n in np.flatnonzero(ev[b, s]):  # the content held so far dies
                if owner[n] >= 0:
                    duration[b, owner[n]] = s - item_pos[b, owner[n]] // L
                owner[n] = -1
            for j in range(alloc.shape[2]):
                n = int(alloc[b, s, j])
                if ev[b, s, n]:
                    owner[n] = int(item_at[b, s * L + pos[b, s, j]])
                    if owner[n] >= 0:
                        slot[b, owner[n]] = n
        for n in range(N):  # still held at the end: censored
            if owner[n] >= 0:
                duration[b, owner[n]] = S - item_pos[b, owner[n]] // L
                observed[b, owner[n]] = False
    return duration, observed, slot


@pytest.mark.parametrize("case", CASES)
def test_item_lifetimes_layout_and_invariants(case):
    task, batch, trace = real(case)
    life = item_lifetimes(trace, batch)
    B, M, S = len(batch.tokens), task.n_items, task.n_windows
    assert len(life) == B * M
    assert life.row.tolist() == np.repeat(np.arange(B), M).tolist()
    assert life.item.tolist() == np.tile(np.arange(M), B).tolist()
    np.testing.assert_array_equal(life.type, batch.item_type.numpy().ravel())
    np.testing.assert_array_equal(life.window, (batch.item_pos.numpy() // L).ravel())
    # every item's value token writes (write_tokens = the value tokens, one write per item)
    assert (life.duration > 0).all()
    assert (life.window + life.duration <= S).all()
    # censored exactly when held to the end of the trace
    np.testing.assert_array_equal(~life.observed, life.window + life.duration == S)
    # a memory of SLOTS slots holds SLOTS items at the end (it writes more than that in every row)
    assert ((~life.observed).reshape(B, M).sum(1) == SLOTS).all()


@pytest.mark.parametrize("case", CASES)
def test_item_lifetimes_equal_a_replay_of_the_trace(case):
    """Agreement with a direct replay of the trace's write events, allocations and write positions."""
    task, batch, trace = real(case)
    life = item_lifetimes(trace, batch)
    duration, observed, slot = replay_trace(trace, batch)
    np.testing.assert_array_equal(life.duration, duration.ravel())
    np.testing.assert_array_equal(life.observed, observed.ravel())
    np.testing.assert_array_equal(life.slot, slot.ravel())


@pytest.mark.parametrize("case", AGE_ORDER)
def test_age_order_lifetimes_are_the_lru_replay(case):
    """Without decay (or with one fixed rate for every slot), faded-first allocation lets the oldest
    write go: whether an item is still held at each of its recalls and cues is what memnet.eviction's
    age-order replay says."""
    task, batch, trace = real(case)
    life = item_lifetimes(trace, batch)
    lru = held_at_queries(batch, L, SLOTS, "lru").numpy()
    rp, cp = batch.recall_pos.numpy(), batch.cue_pos.numpy()
    B, M = rp.shape
    held = held_at_recalls(life, batch, L)
    rows, items = np.nonzero(rp >= 0)
    assert len(rows) > 0
    np.testing.assert_array_equal(held[rows, items], lru[rows, rp[rows, items]])
    assert not held[rp < 0].any()
    rows, items = np.nonzero(cp >= 0)
    age = cp[rows, items] // L - life.window.reshape(B, M)[rows, items]
    at_cue = np.array([life.held_at(int(a))[r * M + i] for a, r, i in zip(age, rows, items)], dtype=bool)
    np.testing.assert_array_equal(at_cue, lru[rows, cp[rows, items]])
    if task.n_windows >= 10:  # more items than slots can hold through their recall: some are let go
        assert not held[rp >= 0].all()
    if task.min_gap == 1:  # some recalls read an item in the last window it is held
        age = rp // L - life.window.reshape(B, M)
        assert (held & (age == life.duration.reshape(B, M))).any()


def test_item_lifetimes_bad_input():
    task, batch, trace = real(CASES[0])
    with pytest.raises(TypeError, match="without item_type"):
        item_lifetimes(trace, SimpleNamespace(tokens=batch.tokens, kind=batch.kind, item_at=batch.item_at))
    with pytest.raises(TypeError, match="trace must be a MemoryTrace"):
        item_lifetimes(trace.as_dict(), batch)
    short = task.sample(len(batch.tokens) - 1, seed=0)
    with pytest.raises(ValueError, match="batch.tokens must be"):
        item_lifetimes(trace, short)


# ---------------------------------------------------------------------------- behavioural probes
def test_probe_sequences_ask_for_one_item_each():
    task = tiny_task(10)
    batch = task.sample(5, seed=11)
    S, ages = task.n_windows, (1, 2, 3, 5, 8)
    tokens, kind, item_at, item_pos = (x.numpy() for x in (batch.tokens, batch.kind, batch.item_at, batch.item_pos))
    groups = probe_sequences(batch, L, ages, seed=7)
    asked = set()
    for p, pr in groups.items():
        P = len(pr.row)
        assert pr.tokens.shape == pr.targets.shape == (P, (p + 1) * L) and P > 0
        for n in range(P):
            r, i, a, q = int(pr.row[n]), int(pr.item[n]), int(pr.age[n]), int(pr.pos[n])
            w = item_pos[r, i] // L
            assert q // L == p == w + a  # in the window `a` windows after the item's
            assert kind[r, q] == 0 and item_at[r, q] == -1  # a filler position
            expect = tokens[r, : (p + 1) * L].copy()
            expect[q] = tokens[r, item_pos[r, i] - 1]  # the item's key
            assert pr.tokens[n].tolist() == expect.tolist()
            tgt = np.full((p + 1) * L, IGNORE)
            tgt[q] = tokens[r, item_pos[r, i]]  # its value
            assert pr.targets[n].tolist() == tgt.tolist()
            assert (r, i, a) not in asked
            asked.add((r, i, a))
    # every (row, item, age) whose probe window is inside the trace and has a filler position is asked once
    free = (kind == 0) & (item_at < 0)
    expected = {(r, i, a) for r in range(5) for i in range(task.n_items) for a in ages
                if (w := item_pos[r, i] // L + a) < S and free[r, w * L:(w + 1) * L].any()}
    assert asked == expected and any(a == 8 for _, _, a in asked)
    assert not any(item_pos[r, i] // L + a >= S for r, i, a in asked)
    # the probe positions are a function of the seed
    again = probe_sequences(batch, L, ages, seed=7)
    assert all(torch.equal(again[p].tokens, groups[p].tokens) for p in groups)
    other = probe_sequences(batch, L, ages, seed=8)
    assert any(not torch.equal(other[p].pos, groups[p].pos) for p in groups)
    assert (probe_sequences(batch, L, [1], ignore_index=-1)[1].targets >= -1).all()


def test_probe_ages_past_the_trace_give_no_probe():
    task = tiny_task(7)  # items in windows 0..2
    batch = task.sample(3, seed=1)
    assert probe_sequences(batch, L, [task.n_windows]) == {}
    last = probe_sequences(batch, L, [task.n_windows - 1])  # only the items of window 0 reach the last window
    assert list(last) == [task.n_windows - 1]
    assert set((batch.item_pos[last[task.n_windows - 1].row, last[task.n_windows - 1].item] // L).tolist()) == {0}


def test_probe_bad_input():
    batch = tiny_task(7).sample(2, seed=0)
    for ages in ([0], [1, -1], [1.5], [True]):
        with pytest.raises(ValueError, match="ages must be ints >= 1"):
            probe_sequences(batch, L, ages)
    for segment_len in (0, True, 8.0):
        with pytest.raises(ValueError, match="segment_len must be an int >= 1"):
            probe_sequences(batch, segment_len, [1])
    with pytest.raises(ValueError, match=r"segment_len \(3\) must divide"):
        probe_sequences(batch, 3, [1])
    with pytest.raises(TypeError, match="without kind"):
        probe_sequences(SimpleNamespace(tokens=batch.tokens), L, [1])
