"""Property tests of the slot memory's invariants.

Two drivers: `MultiHeadMemoryBank` called directly with random states and requests, and
`MemNet` traces (the memory as the model actually drives it).
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from helpers import examples, rand_tokens, small_configs, states_equal, tiny_cfg
from memnet import MemNet, MemNetConfig, MemoryState, MultiHeadMemoryBank
from memnet.memory import FADED_MIN, WriteRequest, sparse_to_dense


# ---------------------------------------------------------------- strategies
@st.composite
def bank_and_state(draw, ties: bool = False):
    """A bank for a random tiny config and a random state for it."""
    cfg = draw(small_configs())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    B = draw(st.integers(1, 3))
    N, D = cfg.num_slots, cfg.slot_dim
    torch.manual_seed(seed)
    bank = MultiHeadMemoryBank(cfg)
    with torch.no_grad():  # a trained bank's sharpness and retention differ per head/slot
        bank.log_read_sharpness.add_(torch.randn(cfg.mem_heads, generator=g))
        bank.decay_logit.add_(torch.randn(N, generator=g))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    keys = torch.randn(B, N, D, generator=g) * scale
    if draw(st.booleans()):  # some empty (all-zero) slots, as after initial_state
        keys[:, : N // 2] = 0
    values = torch.randn(B, N, D, generator=g) * scale
    if ties:  # few distinct staleness values: ties must go to the lowest index
        age = torch.randint(0, 3, (B, N), generator=g).float()
        usage = torch.randint(0, 3, (B, N), generator=g).float() / 2
    else:
        age = torch.randint(0, 50, (B, N), generator=g).float()
        usage = torch.rand(B, N, generator=g)
    return cfg, bank, MemoryState(keys, values, age, usage), g


def random_request(B, W, D, g, scale=1.0):
    return WriteRequest(
        key=torch.randn(B, W, D, generator=g) * scale,
        value=torch.randn(B, W, D, generator=g) * scale,
        gate=torch.rand(B, W, generator=g),
        erase=torch.rand(B, W, D, generator=g),
        update=torch.rand(B, W, generator=g),
        decay=torch.randn(B, D, generator=g) * scale,
    )


def reference_alloc(staleness: torch.Tensor, n: int) -> torch.Tensor:
    """Stalest first, ties to the lowest index: plain Python sort."""
    rows = [sorted(range(staleness.shape[1]), key=lambda i: (-staleness[b, i].item(), i))[:n]
            for b in range(staleness.shape[0])]
    return torch.tensor(rows, dtype=torch.long)


def check_read_addressing(index, weight, num_slots, top_k, distinct: bool = True):
    """index, weight (..., K): top_k slots (distinct unless a read may also keep a write of its own
    window, recorded at the slot it lands in), weights a distribution."""
    assert index.shape[-1] == top_k and weight.shape[-1] == top_k
    assert index.dtype == torch.long
    assert (index >= 0).all() and (index < num_slots).all()
    assert (weight >= 0).all()
    torch.testing.assert_close(weight.sum(-1), torch.ones_like(weight.sum(-1)), atol=1e-5, rtol=0)
    if distinct:
        s, _ = index.sort(-1)
        assert (s[..., 1:] != s[..., :-1]).all(), "a head read the same slot twice"


# ---------------------------------------------------------------- MemoryState
def test_initial_state_and_helpers():
    cfg = tiny_cfg(num_slots=8, slot_dim=4)
    bank = MultiHeadMemoryBank(cfg)
    s = bank.initial_state(3)
    assert s.keys.shape == (3, 8, 4) and s.values.shape == (3, 8, 4)
    assert s.age.shape == (3, 8) and s.usage.shape == (3, 8)
    assert all(t.dtype == torch.float32 and not t.any() for t in (s.keys, s.values, s.age, s.usage))
    assert s.batch_size == 3
    assert torch.equal(s.retained, torch.ones(3, 8))
    assert torch.equal(s.segments, torch.zeros(3))
    assert s.nbytes() == (2 * 3 * 8 * 4 + 4 * 3 * 8 + 3) * 4  # keys, values; age, usage, retained, evidence; segments
    torch.testing.assert_close(s.staleness(), torch.ones(3, 8))
    c = s.clone()
    c.keys.add_(1)
    assert not s.keys.any(), "clone shares storage"
    assert s.to(torch.float64).keys.dtype == torch.float64
    k = torch.randn(1, 8, 4, requires_grad=True)
    d = MemoryState(k * 2, k * 3, s.age[:1], s.usage[:1]).detach()
    assert not d.keys.requires_grad and not d.values.requires_grad


def test_staleness_formula():
    s = MemoryState(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.tensor([[0.0, 4.0, 4.0]]),
                    torch.tensor([[0.0, 0.5, 1.0]]))
    # (age + 1) * (1 - usage / 2): age orders slots, usage can at most halve a slot's staleness
    torch.testing.assert_close(s.staleness(), torch.tensor([[1.0, 3.75, 2.5]]))


# ---------------------------------------------------------------- reads
@given(bank_and_state(), st.integers(1, 5))
def test_read_is_topk_cosine_softmax(data, L):
    cfg, bank, state, g = data
    B, N, D, H, K = state.batch_size, cfg.num_slots, cfg.slot_dim, cfg.mem_heads, cfg.top_k
    q = torch.randn(B, L, H, D, generator=g)
    with torch.no_grad():
        r = bank.read(state, q)
    assert r.vectors.shape == (B, L, H, D) and r.index.shape == (B, L, H, K)
    check_read_addressing(r.index, r.weight, N, K)
    # the kept slots are the k best by cosine times key strength min(|key| / full_key_norm, 1) (dense reference)
    qn = q / q.norm(dim=-1, keepdim=True).clamp(min=cfg.eps)
    kn = state.keys / state.keys.norm(dim=-1, keepdim=True).clamp(min=cfg.full_key_norm)
    sim = torch.einsum("blhd,bnd->blhn", qn, kn)
    kept = sim.gather(-1, r.index)
    dropped = sim.scatter(-1, r.index, float("-inf"))
    assert (kept.min(-1).values >= dropped.max(-1).values - 1e-5).all()
    # softmax over the kept similarities with the head's sharpness
    sharp = bank.read_sharpness.detach().view(1, 1, H, 1)
    torch.testing.assert_close(r.weight, torch.softmax(kept * sharp, -1), atol=1e-5, rtol=1e-4)
    # the read vector is the weighted sum of the kept values (== dense weights @ values)
    dense = sparse_to_dense(r.index, r.weight, N)  # (B, L, H, N)
    torch.testing.assert_close(r.vectors, torch.einsum("blhn,bnd->blhd", dense, state.values),
                               atol=1e-4 * (1 + state.values.abs().max().item()), rtol=1e-4)


def test_read_from_empty_memory_is_a_distribution_over_k_distinct_slots():
    cfg = tiny_cfg(num_slots=8, top_k=3, mem_heads=2)
    bank = MultiHeadMemoryBank(cfg)
    s = bank.initial_state(2)
    r = bank.read(s, torch.randn(2, 4, 2, cfg.slot_dim))
    check_read_addressing(r.index, r.weight, 8, 3)
    assert not r.vectors.any()


# ---------------------------------------------------------------- allocation
@given(bank_and_state(ties=True))
def test_allocation_picks_stalest_distinct_slots_ties_to_lowest_index(data):
    cfg, bank, state, g = data
    W = cfg.writes
    alloc = bank.allocate(state, W)
    assert alloc.shape == (state.batch_size, W)
    st_ = bank.allocation_score(state)  # the staleness, or for "faded"/"weakest" what the by-hand tests check
    if cfg.allocation == "lru":
        assert torch.equal(st_, state.staleness())
    torch.testing.assert_close(alloc, reference_alloc(st_, W), atol=0, rtol=0)
    for row in alloc.tolist():
        assert len(set(row)) == W, "two writes of a segment allocated the same slot"
    # the first write gets a slot with maximal score, and nothing unallocated scores higher
    assert (st_.gather(1, alloc[:, :1]).squeeze(1) == st_.max(1).values).all()


def test_allocation_ties_on_fresh_memory():
    bank = MultiHeadMemoryBank(tiny_cfg(num_slots=8))
    assert bank.allocate(bank.initial_state(2), 3).tolist() == [[0, 1, 2], [0, 1, 2]]


# ---------------------------------------------------------------- one write
@given(bank_and_state(ties=True), st.sampled_from([0.0, 1.0, 1e3]))
def test_write_bookkeeping(data, scale):
    cfg, bank, state, g = data
    B, N, D, W = state.batch_size, cfg.num_slots, cfg.slot_dim, cfg.writes
    req = random_request(B, W, D, g, scale=scale)
    read_mass = torch.rand(B, N, generator=g) / N
    before = state.clone()
    with torch.no_grad():
        new, wr = bank.write(state, req, read_mass)
    assert states_equal(state, before), "write modified the state passed in"
    assert new.keys.shape == state.keys.shape and new.age.shape == state.age.shape
    # allocation on the state as it was before the write
    torch.testing.assert_close(wr.alloc, reference_alloc(bank.allocation_score(state), W), atol=0, rtol=0)
    # events are exactly the slots whose write strength reached the threshold
    assert wr.events.dtype == torch.bool
    assert torch.equal(wr.events, wr.strength >= cfg.write_threshold)
    # every write spends exactly its gate over slots
    torch.testing.assert_close(wr.strength.sum(-1), req.gate.sum(-1), atol=1e-5, rtol=1e-5)
    assert (wr.strength >= 0).all()
    # ages: +1 everywhere, 0 exactly at write events
    torch.testing.assert_close(new.age, torch.where(wr.events, torch.zeros_like(state.age), state.age + 1),
                               atol=0, rtol=0)
    # usage: clamped decaying trace of write strength and read mass
    expect = (cfg.usage_decay * state.usage + wr.strength + read_mass).clamp(0, 1)
    torch.testing.assert_close(new.usage, expect, atol=1e-6, rtol=0)
    assert ((new.usage >= 0) & (new.usage <= 1)).all()
    # retention strictly inside (0, 1)
    assert ((wr.retention > 0) & (wr.retention < 1)).all()
    for t in (new.keys, new.values, new.age, new.usage):
        assert torch.isfinite(t).all()


def test_zero_gate_write_only_decays():
    cfg = tiny_cfg(num_slots=8, slot_dim=4, segment_len=4)
    bank = MultiHeadMemoryBank(cfg)
    g = torch.Generator().manual_seed(1)
    state = MemoryState(torch.randn(2, 8, 4, generator=g), torch.randn(2, 8, 4, generator=g),
                        torch.full((2, 8), 3.0), torch.full((2, 8), 0.5))
    req = random_request(2, 4, 4, g)
    req = WriteRequest(req.key, req.value, torch.zeros(2, 4), req.erase, req.update, req.decay)
    new, wr = bank.write(state, req)
    r = wr.retention.unsqueeze(-1)
    torch.testing.assert_close(new.keys, state.keys * r)
    torch.testing.assert_close(new.values, state.values * r)
    assert not wr.events.any() and not wr.strength.any()
    assert (new.age == 4).all()
    torch.testing.assert_close(new.usage, torch.full((2, 8), 0.5 * cfg.usage_decay))


def test_full_strength_allocation_write_stores_value_in_allocated_slot():
    """gate 1, update 0, erase 1: the allocated slot holds exactly the written value, and the written
    key's direction at unit length (a key's length is its write strength)."""
    cfg = tiny_cfg(num_slots=8, slot_dim=4, segment_len=2)
    bank = MultiHeadMemoryBank(cfg)
    g = torch.Generator().manual_seed(2)
    state = MemoryState(torch.randn(1, 8, 4, generator=g), torch.randn(1, 8, 4, generator=g),
                        torch.arange(8.0).view(1, 8), torch.zeros(1, 8))
    key, value = torch.randn(1, 2, 4, generator=g), torch.randn(1, 2, 4, generator=g)
    req = WriteRequest(key, value, torch.ones(1, 2), torch.ones(1, 2, 4), torch.zeros(1, 2), torch.zeros(1, 4))
    new, wr = bank.write(state, req)
    assert wr.alloc.tolist() == [[7, 6]]  # oldest first
    torch.testing.assert_close(new.keys[0, [7, 6]], key[0] / key[0].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(new.values[0, [7, 6]], value[0])
    assert new.age[0, 7] == 0 and new.age[0, 6] == 0 and new.age[0, 0] == 1
    assert wr.events[0].tolist() == [False] * 6 + [True, True]


# ---------------------------------------------------------------- many segments
@settings(max_examples=examples(10))
@given(bank_and_state(), st.sampled_from([1.0, 1e3, 1e6]))
def test_long_random_write_sequence_stays_finite_and_bounded(data, scale):
    cfg, bank, state, g = data
    B, N, D, W = state.batch_size, cfg.num_slots, cfg.slot_dim, cfg.writes
    age0 = state.age.clone()
    with torch.no_grad():
        for step in range(200):
            req = random_request(B, W, D, g, scale=scale)
            read = bank.read(state, torch.randn(B, 2, cfg.mem_heads, D, generator=g) * scale)
            check_read_addressing(read.index, read.weight, N, cfg.top_k)
            assert torch.isfinite(read.vectors).all()
            state, wr = bank.write(state, req, torch.rand(B, N, generator=g) / N)
            assert ((wr.retention > 0) & (wr.retention < 1)).all(), f"retention saturated at step {step}"
            assert ((state.usage >= 0) & (state.usage <= 1)).all()
            assert torch.isfinite(state.keys).all() and torch.isfinite(state.values).all()
    # ages stay integers, bounded by the number of segments since the start
    assert torch.equal(state.age, state.age.round())
    assert (state.age >= 0).all() and (state.age <= age0 + 200).all()


# ---------------------------------------------------------------- through MemNet traces
def check_trace_invariants(cfg: MemNetConfig, out, memory0: MemoryState | None = None):
    tr = out.trace
    B, S = tr.write_alloc.shape[:2]
    N, W, K, H, L = cfg.num_slots, cfg.writes, cfg.top_k, cfg.mem_heads, cfg.segment_len
    check_read_addressing(tr.read_index, tr.read_weight, N, K, distinct=not cfg.window_reads)
    assert tr.read_index.shape == (B, S, L, H, K)
    assert ((tr.retention > 0) & (tr.retention < 1)).all()
    assert ((tr.usage >= 0) & (tr.usage <= 1)).all()
    assert torch.equal(tr.write_events, tr.write_strength >= cfg.write_threshold)
    torch.testing.assert_close(tr.write_strength.sum(-1), tr.write_gate.sum(-1), atol=1e-5, rtol=1e-5)
    # write positions: distinct offsets in the window, only real tokens carry a gate
    for b in range(B):
        for s in range(S):
            assert len(set(tr.write_pos[b, s].tolist())) == W
    gate_valid = tr.valid.gather(2, tr.write_pos)
    assert (tr.write_gate[~gate_valid] == 0).all(), "a padding token wrote"
    prev_age = memory0.age if memory0 is not None else torch.zeros(B, N)
    prev_usage = memory0.usage if memory0 is not None else torch.zeros(B, N)
    held = cfg.allocation == "weakest"  # retained is then what a slot holds: 0 when empty, the event's strength on one
    prev_retained = memory0.retained if memory0 is not None else (torch.zeros if held else torch.ones)(B, N)
    mass = tr.read_mass().sum(2) / H  # (B, S, N), what the model feeds to usage
    for s in range(S):
        stale = MemoryState(torch.zeros(B, N, 1), torch.zeros(B, N, 1), prev_age, prev_usage).staleness()
        if cfg.allocation == "faded":  # the retained fraction, rebuilt from the traced retention and events
            stale = stale / prev_retained.clamp(min=FADED_MIN)
        if held:  # the most weakly held first, whatever the age
            stale = 1.0 - prev_retained
        alloc = tr.write_alloc[:, s]
        torch.testing.assert_close(alloc, reference_alloc(stale, W), atol=0, rtol=0)
        for row in alloc.tolist():
            assert len(set(row)) == W
        ev = tr.write_events[:, s]
        torch.testing.assert_close(tr.age[:, s], torch.where(ev, torch.zeros_like(prev_age), prev_age + 1),
                                   atol=0, rtol=0)
        expect_usage = (cfg.usage_decay * prev_usage + tr.write_strength[:, s] + mass[:, s]).clamp(0, 1)
        torch.testing.assert_close(tr.usage[:, s], expect_usage, atol=1e-5, rtol=0)
        prev_age, prev_usage = tr.age[:, s], tr.usage[:, s]
        fresh = tr.write_strength[:, s].clamp(max=1.0) if held else torch.ones_like(prev_retained)
        prev_retained = torch.where(ev, fresh, prev_retained * tr.retention[:, s])
    assert torch.equal(out.memory.age, tr.age[:, -1])
    torch.testing.assert_close(out.memory.retained, prev_retained, atol=0, rtol=0)
    torch.testing.assert_close(out.memory.usage, tr.usage[:, -1], atol=0, rtol=0)


@settings(max_examples=examples(25))
@given(small_configs(), st.integers(1, 3), st.integers(1, 30), st.integers(0, 1000))
def test_memnet_trace_invariants(cfg, B, T, seed):
    torch.manual_seed(seed)
    model = MemNet(cfg).eval()
    x = rand_tokens(B, T, seed=seed)
    with torch.no_grad():
        out = model(x, return_trace=True)
        check_trace_invariants(cfg, out)
        # and continuing from the memory it returned
        out2 = model(rand_tokens(B, T, seed=seed + 1), memory=out.memory, return_trace=True)
        check_trace_invariants(cfg, out2, out.memory)


def test_memnet_200_segments_with_large_inputs_stays_finite():
    cfg = tiny_cfg(num_slots=8, segment_len=4, top_k=2, mem_heads=2)
    torch.manual_seed(3)
    model = MemNet(cfg).eval()
    with torch.no_grad():  # large-magnitude embeddings and memory interface
        model.encoder.tok.weight.mul_(1e3)
        model.interface.decay.weight.normal_(0, 1e3)
        model.interface.write_key.weight.mul_(1e3)
        model.bottleneck.net[-1].weight.mul_(1e3)
        out = model(rand_tokens(2, 200 * 4, seed=4), return_trace=True)
    assert out.trace.num_segments == 200
    assert torch.isfinite(out.logits).all()
    for t in (out.memory.keys, out.memory.values):
        assert torch.isfinite(t).all()
    assert out.memory.values.abs().max() > 1.0  # the large writes did land in memory
    check_trace_invariants(cfg, out)


def test_write_event_threshold_is_inclusive():
    """A write of strength exactly write_threshold is an event; a hair below is not."""
    cfg = tiny_cfg(num_slots=8, slot_dim=4, segment_len=1, write_threshold=1.0)
    bank = MultiHeadMemoryBank(cfg)
    state = MemoryState(torch.randn(1, 8, 4), torch.randn(1, 8, 4), torch.arange(8.0).view(1, 8), torch.zeros(1, 8))
    for gate, event in ((1.0, True), (0.999, False)):
        req = WriteRequest(torch.randn(1, 1, 4), torch.randn(1, 1, 4), torch.full((1, 1), gate), torch.ones(1, 1, 4),
                           torch.zeros(1, 1), torch.zeros(1, 4))
        new, wr = bank.write(state, req)
        assert wr.alloc.item() == 7
        assert wr.strength[0, 7].item() == torch.tensor(gate).item()  # exactly the gate, in float32
        assert wr.events[0, 7].item() is event
        assert new.age[0, 7].item() == (0.0 if event else 8.0)
        assert wr.events.sum().item() == int(event)


# ---------------------------------------------------------------- faded-first allocation
def test_retained_fraction_and_faded_allocation_by_hand():
    """retained multiplies the retention gates since the last write event and resets to 1 on one;
    "faded" allocation divides staleness by it, "lru" ignores it."""
    N, D = 4, 4
    lru = MultiHeadMemoryBank(MemNetConfig(vocab_size=8, d_model=D, num_slots=N, top_k=1, mem_heads=1,
                                           segment_len=1, decay_mode="fixed", decay_init=0.0))
    faded = MultiHeadMemoryBank(dataclasses.replace(lru.cfg, allocation="faded"))
    age = torch.tensor([[3.0, 3.0, 1.0, 0.0]])
    usage = torch.zeros(1, N)
    retained = torch.tensor([[1.0, 0.5, 0.1, 1.0]])
    st_ = MemoryState(torch.randn(1, N, D), torch.randn(1, N, D), age, usage, retained)
    assert lru.allocate(st_, 1).tolist() == [[0]]  # oldest first, the tie at age 3 to the lowest index
    assert faded.allocate(st_, 1).tolist() == [[2]]  # (1+1)/0.1 = 20 beats (3+1)/0.5 = 8 and 4
    assert faded.allocate(st_, 3).tolist() == [[2, 1, 0]]
    gate = torch.tensor([[1.0]])
    req = WriteRequest(torch.randn(1, 1, D), torch.randn(1, 1, D), gate, torch.zeros(1, 1, D), torch.zeros(1, 1),
                       torch.zeros(1, D))
    new, wr = faded.write(st_, req)  # allocation write into slot 2 at full strength: an event there
    assert wr.alloc.tolist() == [[2]] and wr.events[0].tolist() == [False, False, True, False]
    torch.testing.assert_close(new.retained, torch.tensor([[0.5, 0.25, 1.0, 0.5]]))  # fixed retention sigmoid(0) = 0.5
    assert torch.equal(MemoryState(st_.keys, st_.values, age, usage).retained, torch.ones(1, N))  # default: all ones


def test_weakest_allocation_by_hand():
    """"weakest" allocation: empty slots first (in index order), then the slot holding its content
    most weakly, whatever its age; an event sets what the slot holds to the event's strength."""
    N, D = 4, 4
    bank = MultiHeadMemoryBank(MemNetConfig(vocab_size=8, d_model=D, num_slots=N, top_k=1, mem_heads=1,
                                            segment_len=1, decay_mode="fixed", decay_init=0.0, allocation="weakest"))
    assert torch.equal(bank.initial_state(2).retained, torch.zeros(2, N))  # empty: holds nothing
    age = torch.tensor([[50.0, 0.0, 3.0, 1.0]])
    held = torch.tensor([[0.9, 0.6, 0.0, 0.3]])
    st_ = MemoryState(torch.randn(1, N, D), torch.randn(1, N, D), age, torch.zeros(1, N), held)
    assert bank.allocate(st_, 4).tolist() == [[2, 3, 1, 0]]  # the oldest slot, held at 0.9, goes last
    gate = torch.tensor([[0.7]])
    req = WriteRequest(torch.randn(1, 1, D), torch.randn(1, 1, D), gate, torch.zeros(1, 1, D), torch.zeros(1, 1),
                       torch.zeros(1, D))
    new, wr = bank.write(st_, req)  # update 0: the whole gate lands on the allocated (empty) slot 2, an event
    assert wr.alloc.tolist() == [[2]] and wr.events[0].tolist() == [False, False, True, False]
    # an event holds at its strength; the others fade by the fixed retention sigmoid(0) = 0.5
    torch.testing.assert_close(new.retained, torch.tensor([[0.45, 0.3, 0.7, 0.15]]))
    assert bank.allocate(new, 2).tolist() == [[3, 1]]


def test_weakest_allocation_keeps_a_strong_write_through_weaker_events():
    """A slot written at gate 1 and never decayed outlives any number of weaker write events under
    "weakest"; under "lru" the same events take it once it is the stalest."""
    N, D, steps = 4, 8, 40
    base = MemNetConfig(vocab_size=8, d_model=D, num_slots=N, top_k=1, mem_heads=1, segment_len=1,
                        decay_mode="none", write_threshold=0.5)
    g = torch.Generator().manual_seed(0)
    key0 = torch.randn(1, 1, D, generator=g)
    def write(gate):
        return WriteRequest(key0 if gate == 1.0 else torch.randn(1, 1, D, generator=g), torch.randn(1, 1, D, generator=g),
                            torch.tensor([[gate]]), torch.ones(1, 1, D), torch.zeros(1, 1), torch.zeros(1, D))
    kept, taken = {}, {}
    for mode in ("weakest", "lru"):
        bank = MultiHeadMemoryBank(dataclasses.replace(base, allocation=mode))
        state, slots = bank.initial_state(1), []
        for s in range(steps):
            state, wr = bank.write(state, write(1.0 if s == 0 else 0.5 + 0.4 * s / steps))
            slots.append(int(wr.alloc[0, 0]))
        taken[mode] = slots[0] in slots[1:]
        kept[mode] = float(F.cosine_similarity(state.keys[0, slots[0]], key0[0, 0], dim=0))
    assert not taken["weakest"] and kept["weakest"] > 0.999  # never written over
    assert taken["lru"] and kept["lru"] < 0.9  # taken (erase 1) by later events


def test_retained_out_of_range_is_rejected():
    bank = MultiHeadMemoryBank(MemNetConfig(vocab_size=8, d_model=4, num_slots=4, top_k=1, mem_heads=1, segment_len=1))
    s0 = bank.initial_state(1)
    for bad in (torch.full((1, 4), 1.5), torch.full((1, 4), -0.1)):
        with pytest.raises(ValueError, match="retained must be in"):
            bank.check_state(dataclasses.replace(s0, retained=bad), 1)
    with pytest.raises(ValueError, match="retained must have shape"):
        bank.check_state(dataclasses.replace(s0, retained=torch.ones(1, 3)), 1)
    with pytest.raises(ValueError, match="allocation"):
        MemNetConfig(vocab_size=8, allocation="oldest")


# ---------------------------------------------------------------- decay modes (the forgetting ablation)
def _decay_request(cfg, B: int = 2, seed: int = 0) -> WriteRequest:
    g = torch.Generator().manual_seed(seed)
    W, D = cfg.writes, cfg.slot_dim
    return WriteRequest(torch.randn(B, W, D, generator=g), torch.randn(B, W, D, generator=g),
                        torch.rand(B, W, generator=g), torch.rand(B, W, D, generator=g),
                        torch.rand(B, W, generator=g), torch.randn(B, D, generator=g) * 3)


def test_decay_modes_retention():
    import math

    B = 2
    for mode, expect in (("none", 1.0), ("fixed", 1 / (1 + math.exp(-2.0)))):
        cfg = tiny_cfg(decay_mode=mode, decay_init=2.0)
        bank = MultiHeadMemoryBank(cfg)
        assert "decay_logit" not in dict(bank.named_parameters())  # nothing to learn
        assert "decay_logit" in bank.state_dict()
        state = MemoryState(torch.randn(B, cfg.num_slots, cfg.slot_dim), torch.randn(B, cfg.num_slots, cfg.slot_dim),
                            torch.zeros(B, cfg.num_slots), torch.zeros(B, cfg.num_slots))
        req = _decay_request(cfg, B)
        ret = bank.retention(state, req.decay)
        assert ret.shape == (B, cfg.num_slots)
        torch.testing.assert_close(ret, torch.full((B, cfg.num_slots), expect))
        _, wr = bank.write(state, req)
        torch.testing.assert_close(wr.retention, ret)


def test_no_decay_model_has_retention_one_and_same_params_otherwise():
    learned, none = tiny_cfg(), tiny_cfg(decay_mode="none")
    torch.manual_seed(0)
    m1 = MemNet(learned)
    torch.manual_seed(0)
    m2 = MemNet(none)
    n1 = {k for k, _ in m1.named_parameters()}
    n2 = {k for k, _ in m2.named_parameters()}
    assert n1 - n2 == {"memory.decay_logit"} and n2 <= n1
    tokens = rand_tokens(2, 3 * learned.segment_len)
    out = m2(tokens, return_trace=True)
    assert torch.equal(out.trace.retention, torch.ones_like(out.trace.retention))
    out.logits.sum().backward()  # trains without a decay parameter


def test_learned_decay_mode_is_the_default_behaviour():
    """decay_mode="learned" is what the bank did before the field existed: the content-modulated gate."""
    cfg = tiny_cfg(decay_mode="learned")
    bank = MultiHeadMemoryBank(cfg)
    B = 2
    state = MemoryState(torch.randn(B, cfg.num_slots, cfg.slot_dim), torch.randn(B, cfg.num_slots, cfg.slot_dim),
                        torch.zeros(B, cfg.num_slots), torch.zeros(B, cfg.num_slots))
    decay = torch.randn(B, cfg.slot_dim)
    k = torch.nn.functional.normalize(state.keys, dim=-1, eps=cfg.eps)
    expect = torch.sigmoid((bank.decay_logit + torch.einsum("bnd,bd->bn", k, decay)).clamp(-15, 15))
    torch.testing.assert_close(bank.retention(state, decay), expect)


@pytest.mark.parametrize("mode", ["learned", "fixed", "none"])
def test_retention_of_directions_agrees_with_retention(mode):
    """The streaming bank's retention from unit keys and their length factor equals the functional
    retention of the keys themselves: ordinary keys, keys shorter than eps (normalize shrinks
    them) and empty slots."""
    cfg = tiny_cfg(decay_mode=mode, decay_init=0.5)
    bank = MultiHeadMemoryBank(cfg)
    with torch.no_grad():
        bank.decay_logit.uniform_(-2.0, 3.0)
    g = torch.Generator().manual_seed(4)
    N, D = cfg.num_slots, cfg.slot_dim
    keys = torch.randn(N, D, generator=g) * 3
    keys[1] *= 0.3 * cfg.eps / keys[1].norm()  # shorter than eps
    keys[2] = 0.0  # empty
    norm = keys.norm(dim=-1)
    unit = keys / norm.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
    factor = (norm / cfg.eps).clamp(max=1.0)
    decay = torch.randn(D, generator=g) * 2
    state = MemoryState(keys[None], keys[None], torch.zeros(1, N), torch.zeros(1, N))
    want = bank.retention(state, decay[None])[0]
    got = bank.retention_of_directions(unit, factor, decay, torch.zeros(N), torch.zeros(N))
    assert got.shape == (N,)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    if mode == "learned":
        assert not torch.allclose(got[0], got[3])  # content-dependent: the test would see a broken alignment


def test_state_cat_and_rows_round_trip():
    a = MemoryState(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.rand(2, 3), torch.rand(2, 3))
    b = MemoryState(torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.rand(1, 3), torch.rand(1, 3), torch.rand(1, 3))
    both = MemoryState.cat([a, b])
    assert both.batch_size == 3
    for got, want in ((both.rows(0, 2), a), (both.rows(2, 3), b)):
        for f in dataclasses.fields(MemoryState):
            assert torch.equal(getattr(got, f.name), getattr(want, f.name))


# ---------------------------------------------------------------- strength-weighted addressing
def test_a_weak_write_is_found_less_than_a_strong_one_with_the_same_key():
    """Two slots with the same key direction, written at gates 1 and 0.1: the read scores the strong
    one at its full cosine and the weak one at a tenth of it, so the strong slot takes the read;
    with plain cosine (full_key_norm = eps) the two tie and the lower index wins."""
    d = torch.tensor([1.0, 0.0, 0.0, 0.0])
    for full, expect in ((1.0, [1, 0]), (1e-6, [0, 1])):
        cfg = tiny_cfg(num_slots=4, slot_dim=4, top_k=2, mem_heads=1, full_key_norm=full)
        bank = MultiHeadMemoryBank(cfg)
        state = bank.initial_state(1)
        req = WriteRequest(d.expand(1, 2, 4) * 3.0, torch.eye(4)[None, :2], torch.tensor([[0.1, 1.0]]),
                           torch.ones(1, 2, 4), torch.zeros(1, 2), torch.zeros(1, 4))
        with torch.no_grad():
            state, wr = bank.write(state, req)
            # gate 0.1 went to slot 0 (stalest, lowest index), gate 1 to slot 1; the keys have unit direction
            torch.testing.assert_close(state.keys[0, :2].norm(dim=-1), torch.tensor([0.1, 1.0]), rtol=0, atol=1e-3)
            r = bank.read(state, d.view(1, 1, 1, 4))
        assert r.index[0, 0, 0].tolist() == expect
        if full == 1.0:
            sharp = float(bank.read_sharpness[0].detach())
            ratio = float(r.weight[0, 0, 0, 0] / r.weight[0, 0, 0, 1])
            assert abs(ratio - torch.exp(torch.tensor(sharp * (1.0 - 0.1 * 0.9999)))) / ratio < 1e-2


def test_the_write_gate_gets_a_gradient_from_what_the_read_finds():
    """Why strength-weighted addressing: a fresh slot's content is read back at the same cosine
    whatever its write gate, and the reads are LayerNorm'd, so with plain cosine the gate of the slot
    that answers a query has no say in the read's direction. Weighted by key length, raising the
    gate of the matching write raises its share of the read: d(share)/d(gate) > 0."""
    g = torch.Generator().manual_seed(0)
    D = 8
    keys = torch.nn.functional.normalize(torch.randn(3, D, generator=g), dim=-1)
    grads = {}
    for full in (1.0, 1e-6):
        cfg = tiny_cfg(num_slots=4, slot_dim=D, top_k=3, mem_heads=1, full_key_norm=full, segment_len=3)
        bank = MultiHeadMemoryBank(cfg)
        gate = torch.tensor([[0.6, 0.6, 0.6]], requires_grad=True)
        req = WriteRequest(keys[None], torch.eye(D)[None, :3], gate, torch.ones(1, 3, D), torch.zeros(1, 3),
                           torch.zeros(1, D))
        state, _ = bank.write(bank.initial_state(1), req)
        r = bank.read(state, (keys[1] + 0.3 * keys[0]).view(1, 1, 1, D))  # the query matches write 1 best
        share = sparse_to_dense(r.index, r.weight, 4)[0, 0, 0]  # (N,) read weight per slot
        slot = int(torch.nonzero((state.keys[0] @ keys[1]) > 0.5)[0])  # where write 1 landed
        (grad,) = torch.autograd.grad(share[slot], gate)
        grads[full] = grad[0]
    assert grads[1.0][1] > 1e-3, "strength-weighted: the matching write's gate raises its share of the read"
    assert grads[1e-6].abs().max() < 1e-6, "plain cosine: the share of the read ignores the gates"


def test_decay_fades_how_strongly_a_slot_is_found():
    """Retention scales a slot's key, so a faded slot is read less than a fresh one of the same direction."""
    cfg = tiny_cfg(num_slots=2, slot_dim=4, top_k=2, mem_heads=1, segment_len=1, decay_mode="fixed", decay_init=-1.0)
    bank = MultiHeadMemoryBank(cfg)
    d = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    state = MemoryState(torch.cat([d, d])[None].clone(), torch.eye(4)[None, :2].clone(), torch.zeros(1, 2), torch.zeros(1, 2))
    nothing = WriteRequest(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1), torch.zeros(1, 1, 4),
                           torch.zeros(1, 1), torch.zeros(1, 4))
    with torch.no_grad():
        before = bank.read(state, d.view(1, 1, 1, 4)).weight[0, 0, 0]
        faded, _ = bank.write(state, nothing)  # no write lands (gate 0): both slots only decay
        faded = MemoryState(torch.cat([faded.keys[:, :1], state.keys[:, 1:]], 1), state.values, state.age, state.usage)
        after = bank.read(faded, d.view(1, 1, 1, 4))
    torch.testing.assert_close(before, torch.tensor([0.5, 0.5]))
    assert after.index[0, 0, 0].tolist() == [1, 0] and after.weight[0, 0, 0, 0] > 0.9


# ================================================================ read evidence (decay_mode "evidence")
def test_read_hits_by_hand():
    from memnet.memory import read_hits

    # one sequence, two tokens, two heads, top-2 of 3 slots
    index = torch.tensor([[[[0, 1], [0, 2]], [[1, 2], [1, 0]]]])  # (1, 2, 2, 2)
    weight = torch.tensor([[[[0.9, 0.1], [0.8, 0.2]], [[0.5, 0.5], [0.6, 0.4]]]])
    score = torch.tensor([[[[0.9, 0.1], [0.7, -0.5]], [[0.2, 0.2], [0.3, 0.1]]]])
    hits = read_hits(index, weight, score, torch.tensor([[True, True]]), 3)
    # token 0: slot 0 gets (0.9*0.9 + 0.8*0.7) / 2, slot 1 0.1*0.1/2, slot 2 nothing (negative score)
    # token 1: slot 1 gets (0.5*0.2 + 0.6*0.3) / 2, slot 2 0.5*0.2/2, slot 0 0.4*0.1/2; then the max over tokens
    want = torch.tensor([[(0.81 + 0.56) / 2, (0.10 + 0.18) / 2, 0.05]])
    torch.testing.assert_close(hits, want)
    only_first = read_hits(index, weight, score, torch.tensor([[True, False]]), 3)  # padding adds nothing
    torch.testing.assert_close(only_first, torch.tensor([[(0.81 + 0.56) / 2, 0.005, 0.0]]))


def test_evidence_is_the_strongest_hit_since_the_last_write_event():
    from memnet.memory import bookkeeping

    age, usage, retention = torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3)
    evidence = torch.tensor([[0.2, 0.7, 0.4]])
    hits = torch.tensor([[0.5, 0.1, 0.9]])
    strength = torch.tensor([[0.0, 0.0, 1.0]])  # slot 2 is written: an event
    *_, ev = bookkeeping(age, usage, None, retention, strength, None, 0.5, 0.9, False, evidence, hits)
    torch.testing.assert_close(ev, torch.tensor([[0.5, 0.7, 0.0]]))
    *_, same = bookkeeping(age, usage, None, retention, strength, None, 0.5, 0.9, False, evidence, None)
    assert same is evidence  # no hits: unchanged


def test_evidence_mode_learns_from_reads_and_age():
    """decay_mode "evidence": two weights, 0 at init (so it starts as "learned"), on the slots' read
    evidence and age; the model's loss reaches both, and the state's evidence fills from reads."""
    cfg = tiny_cfg(decay_mode="evidence", pressure_weight=0.1)
    torch.manual_seed(0)
    model = MemNet(cfg)
    torch.manual_seed(0)
    learned = MemNet(dataclasses.replace(cfg, decay_mode="learned"))
    assert {k for k, _ in model.named_parameters()} - {k for k, _ in learned.named_parameters()} == {
        "memory.evidence_weight", "memory.age_weight"}
    tokens = rand_tokens(2, 4 * cfg.segment_len)
    out, ref = model(tokens), learned(tokens)
    torch.testing.assert_close(out.logits, ref.logits)  # zero weights: the "learned" gate
    assert bool((out.memory.evidence > 0).any()) and not bool(ref.memory.evidence.any())
    assert float(out.memory.evidence.max()) <= 1.0
    (out.logits.square().mean() + sum(out.aux_losses.values())).backward()
    for name in ("evidence_weight", "age_weight"):
        g = getattr(model.memory, name).grad
        assert g is not None and torch.isfinite(g) and float(g) != 0.0, name


def test_evidence_mode_retention_by_hand():
    import math

    from memnet.memory import EVIDENCE_AGE_CAP, EVIDENCE_SCALE

    cfg = tiny_cfg(decay_mode="evidence", decay_init=1.0)
    bank = MultiHeadMemoryBank(cfg)
    with torch.no_grad():
        bank.evidence_weight.fill_(0.3)
        bank.age_weight.fill_(-0.2)
    N, D = cfg.num_slots, cfg.slot_dim
    ev = torch.linspace(0, 1, N)[None]
    age = torch.arange(N, dtype=torch.float32)[None] * 3  # some beyond the cap
    state = MemoryState(torch.randn(1, N, D), torch.randn(1, N, D), age, torch.zeros(1, N), None, None, ev)
    ret = bank.retention(state, torch.zeros(1, D))  # no content direction
    logit = 1.0 + EVIDENCE_SCALE * (0.3 * ev - 0.2 * age.clamp(max=EVIDENCE_AGE_CAP) / EVIDENCE_AGE_CAP)
    torch.testing.assert_close(ret, 1 / (1 + torch.exp(-logit)))
    assert math.isclose(float(ret[0, -1]), 1 / (1 + math.exp(-(1.0 + EVIDENCE_SCALE * (0.3 - 0.2)))), rel_tol=1e-5)


def test_trace_records_evidence_and_reads_traces_without_it():
    from memnet.trace import MemoryTrace

    cfg = tiny_cfg(decay_mode="evidence")
    torch.manual_seed(0)
    model = MemNet(cfg)
    out = model(rand_tokens(2, 3 * cfg.segment_len), return_trace=True)
    assert out.trace.evidence.shape == out.trace.age.shape
    assert torch.equal(out.trace.evidence[:, -1], out.memory.evidence.detach())
    old = {k: v for k, v in out.trace.as_dict().items() if k != "evidence"}  # a trace stored before evidence existed
    tr = MemoryTrace(**old).to(torch.float64).detach()
    assert tr.evidence is None and tr.age.dtype == torch.float64
