"""Survival analysis of memory contents: Kaplan-Meier (lifelines) against the estimate worked by hand, content
lifetimes on hand-built and real traces."""
from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memnet import MemNet, MemNetConfig, MemoryTrace
from memnet.survival import (Lifetimes, age_histogram, content_lifetimes, content_sources, counts_to_km, event_label_matrix,
                             kaplan_meier, km_by_group, km_curve_dict, median_survival, read_entropy_per_segment,
                             retained_at_read, rmst, write_frequency)


# ---------------------------------------------------------------------------- Kaplan-Meier
# Agreement: lifelines' fit (memnet.survival.kaplan_meier) against the textbook example worked by hand.
# Textbook example: 7 subjects, durations 1 2 2 3 4 4 5, the second 2 and the second 4 censored.
#   t   n_i  d_i  1 - d/n   S(t)                      Greenwood term d / (n (n - d))
#   0    7    0     1       1                         0
#   1    7    1    6/7      6/7                       1/42
#   2    6    1    5/6      6/7 * 5/6 = 5/7           1/30   (the censored 2 is still at risk at 2)
#   3    4    1    3/4      5/7 * 3/4 = 15/28         1/12
#   4    3    1    2/3      15/28 * 2/3 = 5/14        1/6
#   5    1    1     0       0                         1/0 = inf (variance reported as 0)
# median: S(3) = 0.536 > 0.5, S(4) = 0.357 <= 0.5 -> 4
DUR = [1, 2, 2, 3, 4, 4, 5]
OBS = [1, 1, 0, 1, 1, 0, 1]


def test_km_textbook_example():
    km = kaplan_meier(DUR, OBS)
    np.testing.assert_array_equal(km.times, [0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(km.survival, [1, 6 / 7, 5 / 7, 15 / 28, 5 / 14, 0], atol=1e-12)
    np.testing.assert_array_equal(km.at_risk, [7, 7, 6, 4, 3, 1])
    np.testing.assert_array_equal(km.events, [0, 1, 1, 1, 1, 1])
    assert median_survival(km) == 4
    # the step function between and beyond the event times
    np.testing.assert_allclose(km([0.5, 1, 2.5, 4.9, 7]), [1, 6 / 7, 5 / 7, 5 / 14, 0])


def test_km_greenwood_by_hand():
    km = kaplan_meier(DUR, OBS)
    # Var(1) = (6/7)^2 * 1/42 = 6/343;  Var(2) = (5/7)^2 * (1/42 + 1/30) = 25/49 * 2/35 = 10/343
    # Var(3) = (15/28)^2 * (1/42 + 1/30 + 1/12) = 225/784 * 59/420
    assert km.variance[0] == 0
    np.testing.assert_allclose(km.variance[1:4], [6 / 343, 10 / 343, 225 / 784 * 59 / 420], rtol=1e-12)
    assert km.variance[-1] == 0 and np.isfinite(km.variance).all()


def test_km_loglog_band_by_hand():
    # at t = 1: S = 6/7, G = 1/42; band exp(-exp(log(-log S) +- z sqrt(G) / log S))
    km = kaplan_meier(DUR, OBS, alpha=0.05)
    z = NormalDist().inv_cdf(0.975)
    ls = math.log(6 / 7)
    lo = math.exp(-math.exp(math.log(-ls) - z * math.sqrt(1 / 42) / ls))
    hi = math.exp(-math.exp(math.log(-ls) + z * math.sqrt(1 / 42) / ls))
    assert lo == pytest.approx(0.3341, abs=1e-3) and hi == pytest.approx(0.9786, abs=1e-3)
    assert km.lower[1] == pytest.approx(lo, rel=1e-12) and km.upper[1] == pytest.approx(hi, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.3])
def test_km_band_contains_survival_and_lies_in_unit_interval(alpha):
    rng = np.random.default_rng(0)
    d = rng.integers(0, 20, size=60)
    o = rng.random(60) < 0.7
    for km in (kaplan_meier(DUR, OBS, alpha), kaplan_meier(d, o, alpha), kaplan_meier([3, 3], [1, 1], alpha)):
        for arr in (km.survival, km.lower, km.upper, km.variance):
            assert np.isfinite(arr).all()
        assert ((km.lower >= 0) & (km.upper <= 1)).all()
        assert (km.lower <= km.survival + 1e-12).all() and (km.survival <= km.upper + 1e-12).all()
        assert (np.diff(km.survival) <= 0).all()
    # S = 1 and S = 0 edges give degenerate bands, not NaN
    km = kaplan_meier(DUR, OBS, alpha)
    assert km.lower[0] == km.upper[0] == 1 and km.lower[-1] == km.upper[-1] == 0
    # a narrower alpha gives a wider band
    wide, narrow = kaplan_meier(d, o, 0.01), kaplan_meier(d, o, 0.3)
    assert (wide.lower <= narrow.lower + 1e-12).all() and (wide.upper >= narrow.upper - 1e-12).all()


def test_km_without_censoring_is_the_empirical_survival_function():
    rng = np.random.default_rng(1)
    d = rng.integers(1, 10, size=50)
    km = kaplan_meier(d, np.ones(50, dtype=bool))
    for t, s in zip(km.times, km.survival):
        assert s == pytest.approx((d > t).mean(), abs=1e-12)
    assert median_survival(km) == np.min([t for t in km.times if (d > t).mean() <= 0.5])


def test_km_all_censored():
    km = kaplan_meier([1, 2, 3, 3], [False] * 4)
    np.testing.assert_array_equal(km.times, [0])
    np.testing.assert_array_equal(km.survival, [1])
    assert median_survival(km) == math.inf
    assert km([0, 5])[1] == 1


def test_km_leaves_numpy_error_state_alone():
    before = np.geterr()
    kaplan_meier(DUR, OBS)
    assert np.geterr() == before


def test_km_ties_at_time_zero():
    # two deaths at 0 of four subjects: S(0) = 1/2, and time 0 is not listed twice
    km = kaplan_meier([0, 0, 1, 2], [1, 1, 1, 0])
    np.testing.assert_array_equal(km.times, [0, 1])
    np.testing.assert_allclose(km.survival, [0.5, 0.25])
    np.testing.assert_array_equal(km.at_risk, [4, 2])
    np.testing.assert_array_equal(km.events, [2, 1])


def test_km_accepts_tensors_and_int_flags():
    a = kaplan_meier(torch.tensor(DUR), torch.tensor(OBS))
    b = kaplan_meier(np.array(DUR, dtype=float), np.array(OBS, dtype=bool))
    np.testing.assert_allclose(a.survival, b.survival)


@pytest.mark.parametrize("dur, obs, alpha, name", [
    ([1, 2], [1], 0.05, "same length"),
    ([1, -2], [1, 1], 0.05, "duration"),
    ([1, float("nan")], [1, 1], 0.05, "duration"),
    ([1, 2], [1, 2], 0.05, "observed"),
    ([1, 2], ["a", "b"], 0.05, "observed"),
    ([[1, 2]], [[1, 1]], 0.05, "duration"),
    ([1, 2], [1, 1], 1.5, "alpha"),
])
def test_km_validates_inputs(dur, obs, alpha, name):
    with pytest.raises(ValueError, match=name):
        kaplan_meier(dur, obs, alpha)


@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=30))
def test_counts_to_km_agrees_with_kaplan_meier(pairs):
    dur = np.array([d for d, _ in pairs])
    obs = np.array([o for _, o in pairs])
    counts = {"deaths": np.bincount(dur[obs], minlength=7).tolist(),
              "censored": np.bincount(dur[~obs], minlength=7).tolist()}
    a, b = counts_to_km(counts), kaplan_meier(dur, obs)
    np.testing.assert_allclose(a.survival, b.survival)
    np.testing.assert_array_equal(a.times, b.times)
    assert median_survival(a) == median_survival(b)
    # restricted mean: the area under the step function
    tau = 7.0
    grid = np.linspace(0, tau, 7001)[:-1] + tau / 14000
    assert rmst(a, tau) == pytest.approx(float(b(grid).mean() * tau), abs=2e-3)


def test_counts_to_km_of_nothing_and_bad_counts():
    assert counts_to_km({"deaths": [0, 0], "censored": [0]}) is None
    assert math.isnan(rmst(None, 5.0))
    with pytest.raises(ValueError, match="deaths"):
        counts_to_km({"deaths": [1, -1], "censored": [0]})


# ---------------------------------------------------------------------------- content lifetimes
def make_trace(events: list[list[int]], retention: list[list[float]], L: int = 1, H: int = 1, K: int = 1,
               W: int = 1) -> MemoryTrace:
    """A B=1 trace from (S, N) events and retention; the other fields are filler of the right shapes."""
    ev = torch.tensor(events, dtype=torch.bool)[None]  # (1, S, N)
    ret = torch.tensor(retention, dtype=torch.float32)[None]
    B, S, N = ev.shape
    age = torch.zeros(B, S, N)
    for s in range(S):
        prev = age[:, s - 1] if s else torch.zeros(B, N)
        age[:, s] = torch.where(ev[:, s], torch.zeros_like(prev), prev + 1)
    return MemoryTrace(
        read_index=torch.zeros(B, S, L, H, K, dtype=torch.long), read_weight=torch.ones(B, S, L, H, K),
        valid=torch.ones(B, S, L, dtype=torch.bool), write_pos=torch.zeros(B, S, W, dtype=torch.long),
        write_gate=torch.ones(B, S, W), write_update=torch.zeros(B, S, W), write_erase=torch.zeros(B, S, W),
        write_alloc=torch.zeros(B, S, W, dtype=torch.long), write_strength=ev.float(), write_events=ev,
        retention=ret, age=age, usage=torch.zeros(B, S, N))


def as_rows(lt: Lifetimes) -> list[tuple]:
    return [(int(n), int(b), int(d), bool(o), str(c))
            for n, b, d, o, c in zip(lt.slot, lt.birth, lt.duration, lt.observed, lt.cause)]


#          slot 0 slot 1
EVENTS = [[1, 0],   # s=0: content A born on slot 0
          [0, 1],   # s=1: content C born on slot 1
          [1, 0],   # s=2: A overwritten (duration 2), B born on slot 0
          [0, 0],
          [0, 0]]
RETENTION = [[1.0, 1.0],
             [1.0, 0.5],   # slot 1 at s=1 acts before C's birth: does not count for C
             [1.0, 0.5],   # C: P(2) = 0.5
             [1.0, 0.3],   # C: P(3) = 0.15
             [1.0, 1.0]]   # C: P(4) = 0.15


def test_lifetimes_overwrite_decay_censoring():
    lt = content_lifetimes(make_trace(EVENTS, RETENTION), decay_threshold=0.2)
    # slot, birth, duration, observed, cause; ordered by (batch, birth, slot)
    assert as_rows(lt) == [(0, 0, 2, True, "overwrite"),   # A: 0 -> overwritten at 2
                           (1, 1, 2, True, "decay"),       # C: P(3) = 0.15 < 0.2 -> dies at 3
                           (0, 2, 3, False, "censored")]   # B: S - 2 = 3
    assert lt.num_segments == 5 and len(lt) == 3
    np.testing.assert_array_equal(lt.batch, [0, 0, 0])
    np.testing.assert_array_equal(lt.death, [2, 3, 5])
    assert lt.counts() == {"overwrite": 1, "decay": 1, "censored": 1}


def test_lifetimes_threshold_controls_decay():
    tr = make_trace(EVENTS, RETENTION)
    # 0.1: C never falls below (min P = 0.15) -> censored with duration S - 1 = 4
    assert as_rows(content_lifetimes(tr, decay_threshold=0.1))[1] == (1, 1, 4, False, "censored")
    # 0.6: P(2) = 0.5 < 0.6 -> decay at 2 (the 0.5 at s=1, before the birth, is not counted)
    assert as_rows(content_lifetimes(tr, decay_threshold=0.6))[1] == (1, 1, 1, True, "decay")
    # exactly at the threshold is not below it: P(2) = 0.5
    assert as_rows(content_lifetimes(tr, decay_threshold=0.5))[1][4] == "decay"  # P(3) = 0.15 < 0.5
    assert as_rows(content_lifetimes(tr, decay_threshold=0.5))[1][2] == 2
    # 0 disables decay
    assert content_lifetimes(tr, decay_threshold=0.0).counts()["decay"] == 0


def test_lifetimes_decay_and_overwrite_in_the_same_segment():
    # slot 0: born at 0, retention 0.05 at s=2 (acts before s=2's write event): decay wins the tie,
    # and the write at 2 starts a new content
    ev = [[1], [0], [1], [0]]
    ret = [[1.0], [1.0], [0.05], [1.0]]
    lt = content_lifetimes(make_trace(ev, ret), decay_threshold=0.1)
    assert as_rows(lt) == [(0, 0, 2, True, "decay"), (0, 2, 2, False, "censored")]


def test_lifetimes_no_events_and_validation():
    tr = make_trace([[0, 0]] * 3, [[1.0, 1.0]] * 3)
    lt = content_lifetimes(tr)
    assert len(lt) == 0 and lt.cause.shape == (0,) and lt.observed.dtype == bool
    with pytest.raises(ValueError, match="decay_threshold"):
        content_lifetimes(tr, decay_threshold=1.5)
    with pytest.raises(ValueError, match="batch"):
        content_lifetimes(tr, batch=3)


# ---------------------------------------------------------------------------- a real traced forward pass
def reference_lifetimes(events: np.ndarray, retention: np.ndarray, threshold: float) -> list[tuple]:
    """Straight from the definition, one content at a time: (batch, slot, birth, duration, cause)."""
    B, S, N = events.shape
    out = []
    for b in range(B):
        for n in range(N):
            for s in np.nonzero(events[b, :, n])[0]:
                p, death, cause = 1.0, S, "censored"
                for t in range(s + 1, S):
                    p *= float(retention[b, t, n])
                    if p < threshold:
                        death, cause = t, "decay"
                        break
                    if events[b, t, n]:
                        death, cause = t, "overwrite"
                        break
                out.append((b, n, int(s), death - int(s), cause))
    return sorted(out, key=lambda r: (r[0], r[2], r[1]))


@pytest.fixture(scope="module")
def real_trace() -> MemoryTrace:
    torch.manual_seed(0)
    cfg = MemNetConfig(vocab_size=12, d_model=16, num_slots=8, top_k=2, mem_heads=2, segment_len=4, n_heads=2)
    model = MemNet(cfg).eval()
    tokens = torch.randint(0, 12, (3, 42), generator=torch.Generator().manual_seed(0))  # S = 11, last one padded
    with torch.no_grad():
        return model(tokens, return_trace=True).trace


@pytest.mark.parametrize("threshold", [0.1, 0.97, 0.999])
def test_lifetimes_on_a_real_trace(real_trace, threshold):
    tr = real_trace
    B, S, N = tr.write_events.shape
    n_events = int(tr.write_events.sum())
    assert n_events > 0
    lt = content_lifetimes(tr, decay_threshold=threshold)
    assert len(lt) == n_events  # one content per write event
    assert (lt.duration >= 1).all() and (lt.death <= S).all()
    # observed / censored partition
    assert lt.observed.sum() + (~lt.observed).sum() == len(lt)
    np.testing.assert_array_equal(lt.observed, lt.cause != "censored")
    assert set(lt.cause.tolist()) <= {"overwrite", "decay", "censored"}
    cens = ~lt.observed
    np.testing.assert_array_equal(lt.death[cens], S)
    # at most one live content per (row, slot) at the end, at least one per slot that was ever written
    pairs = list(zip(lt.batch[cens].tolist(), lt.slot[cens].tolist()))
    assert len(pairs) == len(set(pairs))
    # overwrites: every non-first event on a slot ends the previous content unless it had decayed first
    ev = tr.write_events.numpy()
    later_events = int(ev.sum() - (ev.sum(1) > 0).sum())
    assert lt.counts()["overwrite"] <= later_events
    if threshold == 0.1:  # retention ~ sigmoid(5) per segment: nothing decays in 11 segments
        assert lt.counts()["decay"] == 0
        assert lt.counts()["overwrite"] == later_events
    # the same as the definition applied one content at a time
    ref = reference_lifetimes(ev, tr.retention.numpy(), threshold)
    got = [(int(b), int(n), int(s), int(d), str(c))
           for b, n, s, d, c in zip(lt.batch, lt.slot, lt.birth, lt.duration, lt.cause)]
    assert got == ref
    # one row at a time gives the same contents
    rows = [content_lifetimes(tr, batch=b, decay_threshold=threshold) for b in range(B)]
    assert sum(len(r) for r in rows) == len(lt)
    np.testing.assert_array_equal(np.concatenate([r.duration for r in rows]), lt.duration)
    np.testing.assert_array_equal(rows[1].batch, 1)
    # and Kaplan-Meier on them is well formed
    km = kaplan_meier(lt.duration, lt.observed)
    assert km.survival[0] == 1 and (np.diff(km.survival) <= 0).all()


def test_slot_statistics_on_a_real_trace(real_trace):
    tr = real_trace
    B, S, N = tr.write_events.shape
    freq = write_frequency(tr)
    assert freq.shape == (N,) and ((freq >= 0) & (freq <= 1)).all()
    assert freq.sum() * B * S == pytest.approx(float(tr.write_events.sum()))
    counts, edges = age_histogram(tr)
    assert counts.sum() == B * S * N and edges[0] == -0.5
    counts5, edges5 = age_histogram(tr, bins=5)
    assert len(counts5) == 5 and counts5.sum() == B * S * N
    ent = read_entropy_per_segment(tr)
    K = tr.read_weight.shape[-1]
    assert ent.shape == (S,) and ((ent >= -1e-9) & (ent <= math.log(K) + 1e-9)).all()
    # agrees with the direct mean over real tokens and heads
    w = tr.read_weight.double()
    h = -(w * w.log()).sum(-1).mean(-1)  # (B, S, L)
    v = tr.valid.double()
    np.testing.assert_allclose(ent, ((h * v).sum((0, 2)) / v.sum((0, 2))).numpy(), rtol=1e-9)


def test_retained_at_read_by_hand():
    """Slot 0 written at segments 0 and 2, slot 1 at segment 1, slot 2 never. The read of segment s
    sees the retention gates of segments birth+1 .. s-1 (the gate of the birth segment acts before
    the write; the gate of segment s acts after its read)."""
    tr = make_trace(events=[[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]],
                    retention=[[0.5, 0.9, 0.8], [0.5, 0.9, 0.8], [0.25, 0.5, 0.8], [1.0, 1.0, 1.0]])
    expected = [[1.0, 1.0, 1.0],
                [1.0, 0.9, 0.8],  # slot 0 born at 0: nothing applied since; slot 2: the gate of segment 0
                [0.5, 1.0, 0.64],  # slot 0: the gate of segment 1; slot 1 born at 1
                [1.0, 0.5, 0.512]]  # slot 0 rewritten at 2; slot 1: the gate of segment 2
    np.testing.assert_allclose(retained_at_read(tr)[0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="write_events and trace.retention"):
        retained_at_read(dataclasses.replace(tr, retention=tr.retention[:, :2]))


def test_retained_at_read_agrees_with_the_model_state():
    """The trace's recursion against the model's own bookkeeping: the memory handed back after a
    call of s segments carries ``retained``, which must equal what segment s of one long call reads."""
    torch.manual_seed(0)
    cfg = MemNetConfig(vocab_size=12, d_model=16, num_slots=8, top_k=2, mem_heads=2, segment_len=4, n_heads=2,
                       decay_init=0.0, writes_per_segment=2)  # retention ~ 0.5: the product moves
    model = MemNet(cfg).eval()
    tokens = torch.randint(0, 12, (2, 24), generator=torch.Generator().manual_seed(1))  # 6 segments
    with torch.no_grad():
        R = retained_at_read(model(tokens, return_trace=True).trace)
        memory = None
        for s in range(1, 6):
            memory = model(tokens[:, (s - 1) * 4:s * 4], memory=memory).memory
            np.testing.assert_allclose(R[:, s], memory.retained.double().numpy(), rtol=1e-5, atol=1e-7)
    assert R.min() < 0.5  # the check covers decayed contents, not only fresh ones


def test_read_entropy_by_hand():
    tr = make_trace([[0]] * 2, [[1.0]] * 2, L=2, H=1, K=2)
    w = torch.tensor([[[[[0.5, 0.5]], [[1.0, 0.0]]], [[[0.25, 0.75]], [[0.9, 0.1]]]]])  # (1, 2, 2, 1, 2)
    valid = torch.tensor([[[True, True], [True, False]]])
    tr = MemoryTrace(**{**tr.as_dict(), "read_weight": w, "valid": valid})
    # segment 0: (log 2 + 0) / 2; segment 1: only the first token, -(0.25 log 0.25 + 0.75 log 0.75)
    expected = [math.log(2) / 2, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    np.testing.assert_allclose(read_entropy_per_segment(tr), expected, rtol=1e-12)


# ---------------------------------------------------------------------------- who wrote a content
def source_trace() -> MemoryTrace:
    """B=1, S=3 segments of L=4 tokens, N=3 slots, W=2 writes per segment, built by hand."""
    tr = make_trace([[1, 1, 0], [0, 0, 1], [1, 0, 0]], [[1.0] * 3] * 3, L=4, W=2)
    return MemoryTrace(**{**tr.as_dict(),
                          "write_pos": torch.tensor([[[3, 1], [0, 2], [2, 3]]]),  # token offsets in the window
                          "write_alloc": torch.tensor([[[0, 1], [2, 0], [1, 0]]]),  # slot allocated to each write
                          "write_gate": torch.tensor([[[1.0, 0.9], [0.8, 0.1], [0.2, 0.3]]]),
                          "write_update": torch.zeros(1, 3, 2),
                          "write_strength": torch.tensor([[[1.0, 0.9, 0.0], [0.1, 0.0, 0.8], [1.0, 0.2, 0.0]]])})


def test_content_sources_by_hand():
    tr = source_trace()
    lt = content_lifetimes(tr)
    # contents ordered by (birth, slot): (s0, n0), (s0, n1), (s1, n2), (s2, n0)
    assert [(int(b), int(n)) for b, n in zip(lt.birth, lt.slot)] == [(0, 0), (0, 1), (1, 2), (2, 0)]
    # (s0, n0): write 0 allocated to slot 0, position 0*4 + 3; (s0, n1): write 1, 0*4 + 1;
    # (s1, n2): write 0, 1*4 + 0; (s2, n0): write 1 is allocated to slot 0 with weight 0.3 < 1.0 / 2 -> -1
    np.testing.assert_array_equal(content_sources(tr, lt), [3, 1, 4, -1])
    # without the majority rule the allocated write is the source whatever its share
    np.testing.assert_array_equal(content_sources(tr, lt, majority=False), [3, 1, 4, 2 * 4 + 3])


def test_content_sources_update_share_and_validation():
    tr = source_trace()
    d = tr.as_dict()
    d["write_update"] = torch.tensor([[[0.6, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # write 0 of s0: 1.0 * 0.4 < 1.0 / 2
    tr2 = MemoryTrace(**d)
    np.testing.assert_array_equal(content_sources(tr2, content_lifetimes(tr2)), [-1, 1, 4, -1])
    with pytest.raises(TypeError, match="life"):
        content_sources(tr, [1, 2])
    big = content_lifetimes(make_trace([[1, 0]] * 5, [[1.0, 1.0]] * 5))
    with pytest.raises(ValueError, match="life"):
        content_sources(tr, big)


def test_km_by_group_and_event_labels():
    tr = source_trace()
    lt = content_lifetimes(tr)
    group = np.array([0, 1, 0, -1])
    kms = km_by_group(lt, group, ["a", "b", "c"])
    assert set(kms) == {"a", "b"}  # "c" has no content, -1 is left out
    ref = kaplan_meier(lt.duration[[0, 2]], lt.observed[[0, 2]])
    np.testing.assert_array_equal(kms["a"].survival, ref.survival)
    lab = event_label_matrix(lt, group, num_slots=3)
    np.testing.assert_array_equal(lab, [[0, 1, -2], [-2, -2, 0], [-1, -2, -2]])
    with pytest.raises(ValueError, match="group"):
        km_by_group(lt, group[:2], ["a"])
    with pytest.raises(ValueError, match="group"):
        event_label_matrix(lt, group[:2], 3)
    curve = km_curve_dict(kms["a"])
    assert set(curve) == {"times", "survival", "lower", "upper", "at_risk"}
    assert curve["survival"] == kms["a"].survival.tolist()
