"""The compiled memory step (memnet.fused) against the torch step it replaces on the CPU
(MultiHeadMemoryBank.reference_step): the same selections, values and gradients up to float
rounding, on random states with exact ties (empty slots, all-zero write keys, gates at 0),
padding, every decay and allocation mode, window reads on and off, fixed write schedules and
truncated backprop. A near tie (within rounding, not exact) may break either way on the two
paths; helpers.near_tie_watch sets such examples aside."""
import dataclasses

import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import by_slot, examples, near_tie_watch, rand_tokens, small_configs
from memnet import MemNet, MemNetConfig, MemoryState, fused
from memnet.memory import WriteRequest

needs_kernel = pytest.mark.skipif(fused.library() is None, reason=f"compiled step: {fused.status()}")
pytestmark = needs_kernel
ATOL, RTOL = 2e-5, 2e-4
GRAD_ATOL = 1e-4  # of the gradient's scale: the sharpness gradients sum thousands of terms, times a sharpness up to 50


def perturbed(cfg, seed: int) -> MemNet:
    """A model whose retention is uneven and content dependent, as after training."""
    torch.manual_seed(seed)
    model = MemNet(cfg)
    with torch.no_grad():
        model.memory.decay_logit.uniform_(-1.0, 4.0)
        model.interface.decay.weight.normal_()
        if cfg.decay_mode == "evidence":  # read evidence keeps, age lets go
            model.memory.evidence_weight.fill_(0.4)
            model.memory.age_weight.fill_(-0.3)
    return model


def close_grads(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Gradients agree relative to their size, floored at 0.2: a parameter's gradient is a sum over
    every read and write, and where the sum cancels to ~0 only its rounding is left to compare."""
    scale = max(float(want.abs().max()), 0.2)
    torch.testing.assert_close(got / scale, want / scale, atol=GRAD_ATOL, rtol=RTOL, msg=name)


def run(model: MemNet, x: torch.Tensor, use_fused: bool) -> dict:
    """Forward (with the trace) and backward of a loss that reaches every differentiable output of
    the step: the logits, the final memory and the auxiliary losses."""
    model.memory.fused = use_fused
    model.zero_grad()
    out = model(x, return_trace=True)
    g = torch.Generator().manual_seed(1)
    loss = (out.logits * torch.randn(out.logits.shape, generator=g)).mean() + sum(out.aux_losses.values())
    loss = loss + (out.memory.keys * torch.randn(out.memory.keys.shape, generator=g)).sum()
    loss = loss + (out.memory.values * torch.randn(out.memory.values.shape, generator=g)).sum()
    loss.backward()
    return dict(logits=out.logits.detach(), memory=out.memory.detach(), trace=out.trace.as_dict(),
                aux={k: v.detach() for k, v in out.aux_losses.items()},
                grads={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


@settings(max_examples=examples(40), deadline=None, derandomize=True)
@given(small_configs(), st.integers(1, 3), st.integers(1, 5), st.sampled_from([None, 1, 2]),
       st.sampled_from(["learned", "fixed", "none", "evidence"]), st.integers(0, 10_000))
def test_model_takes_the_same_step_either_way(cfg, B, segments, tbptt, decay_mode, seed):
    """A whole forward and backward through MemNet: logits, final state, every field of the trace,
    auxiliary losses and the gradient of every parameter agree; the same parameters get a gradient
    (none for the decay direction when the gate is fixed or absent). Padding at the end."""
    cfg = dataclasses.replace(cfg, tbptt_segments=tbptt, decay_mode=decay_mode)
    model = perturbed(cfg, seed)
    x = rand_tokens(B, segments * cfg.segment_len - seed % cfg.segment_len, seed=seed)
    with near_tie_watch() as near_ties:  # a near (not exact) tie may resolve differently
        ref = run(model, x, False)
    if any(near_ties):
        return
    got = run(model, x, True)
    for f in ("age", "segments"):  # counts: the same write events
        assert torch.equal(getattr(got["memory"], f), getattr(ref["memory"], f)), f
    for f in ("keys", "values", "usage", "retained", "evidence"):
        torch.testing.assert_close(getattr(got["memory"], f), getattr(ref["memory"], f), atol=ATOL, rtol=RTOL)
    for t in (ref["trace"], got["trace"]):
        t["read_index"], t["read_weight"] = by_slot(t["read_index"], t["read_weight"])
    for name, want in ref["trace"].items():
        have = got["trace"][name]
        if want.dtype in (torch.bool, torch.int64):
            assert torch.equal(have, want), name
        else:
            torch.testing.assert_close(have, want, atol=ATOL, rtol=RTOL, msg=name)
    torch.testing.assert_close(got["logits"], ref["logits"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got["aux"], ref["aux"], atol=ATOL, rtol=RTOL)
    assert got["grads"].keys() == ref["grads"].keys()
    for name, want in ref["grads"].items():
        close_grads(got["grads"][name], want, name)


def random_state(model, B: int, g: torch.Generator) -> MemoryState:
    """A state with exact ties (empty slots: zero keys score exactly 0 against every query), keys
    short and long, and uneven counts, made for this model's config. (Repeated or parallel keys
    tie only up to rounding on the torch path, whose matrix product may round two equal rows
    differently: not a tie both paths must break alike.)"""
    cfg = model.cfg
    N, D = cfg.num_slots, cfg.slot_dim
    keys = torch.randn(B, N, D, generator=g)
    values = torch.randn(B, N, D, generator=g)
    pick = torch.randint(0, 3, (B, N), generator=g)
    keys = keys * torch.rand(B, N, 1, generator=g)  # lengths from 0 to a few
    keys[pick == 0] = 0.0  # empty slots
    age = torch.randint(0, 6, (B, N), generator=g).float()
    usage = torch.rand(B, N, generator=g).round(decimals=1)
    retained = torch.rand(B, N, generator=g).round(decimals=1)
    evidence = torch.rand(B, N, generator=g).round(decimals=1)
    return MemoryState(keys, values, age, usage, retained, torch.zeros(B), evidence, signature=cfg.memory_signature())


def random_request(cfg, B: int, g: torch.Generator) -> WriteRequest:
    """W writes with some all-zero keys (a window's first tokens), gates at 0 exactly and near 1.
    (Not at 1 exactly: a window's write of gate 1 is a key of length 1, and at full_key_norm = 1
    its norm sits on the clamp of the normalisation, where the gradient jumps and each path's
    rounding of the norm picks a side.)"""
    W, D, L = cfg.writes, cfg.slot_dim, cfg.segment_len
    key = torch.randn(B, W, D, generator=g)
    key[:, :1] = 0.0
    gate = torch.rand(B, W, generator=g)
    gate[:, -1] = 0.97
    gate[:, W // 2] = 0.0
    pos = torch.sort(torch.randperm(L, generator=g)[:W]).values.expand(B, W).clone()
    return WriteRequest(key, torch.randn(B, W, D, generator=g), gate, torch.rand(B, W, D, generator=g),
                        torch.rand(B, W, generator=g), torch.randn(B, D, generator=g), pos)


@settings(max_examples=examples(40), deadline=None, derandomize=True)
@given(small_configs(), st.integers(1, 4), st.sampled_from(["learned", "fixed", "none", "evidence"]), st.booleans(),
       st.integers(0, 10_000))
def test_bank_step_values_and_gradients_on_random_states(cfg, B, decay_mode, padded, seed):
    """One step of the bank on a random state and request: every output agrees (indices exactly),
    and so do the gradients of a random function of all differentiable outputs with respect to the
    state's keys and values, the queries, every field of the request and the bank's parameters."""
    cfg = dataclasses.replace(cfg, decay_mode=decay_mode)
    model = perturbed(cfg, seed)
    bank = model.memory
    g = torch.Generator().manual_seed(seed)
    state = random_state(model, B, g)
    req = random_request(cfg, B, g)
    L, H, D = cfg.segment_len, cfg.mem_heads, cfg.slot_dim
    queries = torch.randn(B, L, H, D, generator=g)
    valid = torch.ones(B, L, dtype=torch.bool)
    if padded:
        valid[:, L // 2 + 1:] = False
    leaves = [state.keys, state.values, queries, req.key, req.value, req.gate, req.erase, req.update, req.decay]
    leaves = [t.clone().requires_grad_() for t in leaves]
    params = [p for p in bank.parameters()]
    weights = None
    results = {}
    for use_fused in (False, True):
        bank.fused = use_fused
        st_ = MemoryState(leaves[0], leaves[1], state.age, state.usage, state.retained, state.segments,
                          state.evidence, signature=state.signature)
        rq = WriteRequest(*leaves[3:], req.pos)
        if use_fused:  # outside the watch, which runs the torch step
            out = bank.step(st_, leaves[2], rq, valid)
        else:
            with near_tie_watch() as near_ties:
                out = bank.step(st_, leaves[2], rq, valid)
            if any(near_ties):
                return
        weight = by_slot(out.read.index, out.read.weight)[1]  # (ordered as the test compares it)
        outs = [out.state.keys, out.state.values, out.read.vectors, weight, out.read_mass, out.write.retention]
        if weights is None:
            weights = [torch.randn(o.shape, generator=g) for o in outs]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
        results[use_fused] = (out, [o.detach() for o in outs], grads)
    (ref, ref_outs, ref_grads), (got, got_outs, got_grads) = results[False], results[True]
    (got_index, got_weight), (ref_index, ref_weight) = by_slot(got.read.index, got.read.weight), by_slot(
        ref.read.index, ref.read.weight)
    assert torch.equal(got_index, ref_index)
    torch.testing.assert_close(got_weight, ref_weight, atol=ATOL, rtol=RTOL)
    assert torch.equal(got.write.alloc, ref.write.alloc) and torch.equal(got.write.events, ref.write.events)
    for f in ("age", "segments"):
        assert torch.equal(getattr(got.state, f), getattr(ref.state, f)), f
    for f in ("usage", "retained", "evidence"):
        torch.testing.assert_close(getattr(got.state, f), getattr(ref.state, f), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.write.strength, ref.write.strength, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_outs, ref_outs):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)
    names = ["keys", "values", "queries", "key", "value", "gate", "erase", "update", "decay",
             *[n for n, _ in bank.named_parameters()]]
    for name, a, b in zip(names, got_grads, ref_grads):
        if b is None:  # no path from this input in the torch step (the decay direction of a fixed gate)
            assert a is None or not bool(a.any()), name
            continue
        close_grads(a, b, name)


def test_threads_split_the_batch_without_changing_a_bit():
    """A batch large enough to be split over threads: the step's outputs and gradients are the
    bits of one thread (rows never share an output)."""
    cfg = MemNetConfig(vocab_size=30, d_model=16, num_slots=24, top_k=3, mem_heads=2, segment_len=8)
    bank = perturbed(cfg, 0).memory
    g = torch.Generator().manual_seed(0)
    B = 4 * fused.ROWS_PER_THREAD
    state, req = random_state(bank, B, g), random_request(cfg, B, g)
    queries = torch.randn(B, cfg.segment_len, cfg.mem_heads, cfg.slot_dim, generator=g, requires_grad=True)
    valid = torch.ones(B, cfg.segment_len, dtype=torch.bool)
    before, answers = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = bank.step(state, queries, req, valid)
            loss = out.read.vectors.square().sum() + out.state.keys.sum() + out.read_mass.square().sum()
            answers.append([out.read.vectors, out.state.keys, out.state.usage, *torch.autograd.grad(
                loss, [queries, bank.log_read_sharpness, bank.decay_logit])])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*answers))


def counted_steps(monkeypatch, decay_mode: str = "learned") -> tuple[MemNet, dict]:
    """A small model, and lists that get one entry per call of the compiled step ("step") and of
    the compiled scan over a call's segments ("scan")."""
    cfg = MemNetConfig(vocab_size=30, d_model=16, num_slots=8, top_k=2, mem_heads=2, segment_len=4,
                       decay_mode=decay_mode)
    calls: dict = {"step": [], "scan": []}
    for name in calls:
        real = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, real=real, name=name: calls[name].append(1) or real(*a))
    return perturbed(cfg, 0), calls


def test_the_near_tie_watch_runs_the_torch_step(monkeypatch):
    """helpers.near_tie_watch watches the torch step's decisions, so inside it the bank runs the
    torch step; outside it the compiled scan, one call for all windows (what the comparisons above
    rely on)."""
    model, calls = counted_steps(monkeypatch)
    x = rand_tokens(1, 8, vocab=30, seed=1)
    with near_tie_watch():
        model(x)
    assert calls == {"step": [], "scan": []}
    model(x)
    assert calls == {"step": [], "scan": [1]}


def test_the_torch_step_runs_where_the_kernel_does_not(monkeypatch):
    """MEMNET_FUSED=0 (or MEMNET_NATIVE=0) turns the kernel off, and inside torch.compile or with a
    tensor off the CPU it does not apply; the bank then runs reference_step."""
    model, calls = counted_steps(monkeypatch)
    x = rand_tokens(2, 9, vocab=30, seed=1)
    model(x)
    assert len(calls["scan"]) == 1  # three windows, one call
    monkeypatch.setenv("MEMNET_FUSED", "0")
    assert fused.status() == "disabled (MEMNET_FUSED=0)" and not fused.applies([x])
    model(x)
    assert len(calls["scan"]) == 1 and calls["step"] == []
    monkeypatch.delenv("MEMNET_FUSED")
    model.memory.fused = False
    model(x)
    assert len(calls["scan"]) == 1 and calls["step"] == []


def test_evidence_decay_takes_the_scan_and_compiled_models_the_step(monkeypatch):
    """decay_mode "evidence" carries the evidence through the scan too (one call for all windows);
    a compiled step (compile_memory) is a step per window, so the scan steps aside for it."""
    model, calls = counted_steps(monkeypatch, "evidence")
    model(rand_tokens(2, 9, vocab=30, seed=1))
    assert calls == {"step": [], "scan": [1]}
    model._compiled_step = model.memory.step  # what compile_memory() installs, uncompiled: the loop of steps
    model(rand_tokens(2, 9, vocab=30, seed=1))
    assert calls == {"step": [1, 1, 1], "scan": [1]}


@settings(max_examples=examples(30), deadline=None, derandomize=True)
@given(small_configs(), st.integers(1, 3), st.integers(1, 5), st.sampled_from([None, 1, 2]),
       st.sampled_from(["learned", "fixed", "none", "evidence"]), st.integers(0, 10_000))
def test_the_scan_takes_every_window_as_the_loop_of_steps_does(cfg, B, segments, tbptt, decay_mode, seed):
    """One compiled call over all windows (fused.scan) against the Python loop of compiled steps:
    logits, final state and every field of the trace bit for bit (the same C step on the same
    inputs), and the gradient of every parameter up to the order in which they are summed; truncated
    backprop and padding included."""
    cfg = dataclasses.replace(cfg, tbptt_segments=tbptt, decay_mode=decay_mode)
    model = perturbed(cfg, seed)
    x = rand_tokens(B, segments * cfg.segment_len - seed % cfg.segment_len, seed=seed)
    got = run(model, x, True)
    real = fused.scan
    try:
        fused.scan = lambda *a: None  # what a scan that cannot answer returns: the bank runs the loop of steps
        want = run(model, x, True)
    finally:
        fused.scan = real
    assert torch.equal(got["logits"], want["logits"])
    for f in ("keys", "values", "age", "usage", "retained", "segments", "evidence"):
        assert torch.equal(getattr(got["memory"], f), getattr(want["memory"], f)), f
    for name, t in want["trace"].items():
        assert torch.equal(got["trace"][name], t), name
    torch.testing.assert_close(got["aux"], want["aux"], atol=1e-6, rtol=1e-6)
    assert got["grads"].keys() == want["grads"].keys()
    for name, t in want["grads"].items():
        close_grads(got["grads"][name], t, name)


def test_a_copied_or_pickled_model_takes_the_same_step():
    """The step's constants live in memnet.fused, not in the bank: a deep copy or a pickled and
    loaded model runs the compiled step with no address of the original."""
    import copy
    import io

    cfg = MemNetConfig(vocab_size=30, d_model=16, num_slots=8, top_k=2, mem_heads=2, segment_len=4)
    model = perturbed(cfg, 0)
    x = rand_tokens(2, 9, vocab=30, seed=1)
    want = model(x).logits
    buf = io.BytesIO()
    torch.save(model, buf)
    twin = copy.deepcopy(model)
    del model
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(twin(x).logits, want) and torch.equal(loaded(x).logits, want)


def test_the_buffer_pool_hands_out_only_what_nothing_holds():
    """fused.BufferPool gives a buffer back out only when no tensor (nor a view of one) holds it,
    and lets go of free buffers beyond the bytes it keeps."""
    pool = fused.BufferPool(keep_bytes=2 * 12 * 4)
    a, b = pool.take((3, 4)), pool.take((3, 4))
    assert a.data_ptr() != b.data_ptr() and a.shape == (3, 4) and a.dtype == torch.float32
    at = a.data_ptr()
    del a
    c = pool.take((3, 4))
    assert c.data_ptr() == at  # a's buffer, free again
    view = c[1:]
    del c
    d = pool.take((3, 4))
    assert d.data_ptr() not in (at, b.data_ptr())  # the view still holds c's
    del view, b, d
    for shape in ((5,), (6,), (7,)):  # more free buffers than 96 bytes: the oldest free ones go
        pool.take(shape)
    assert pool.held_bytes() <= 2 * 12 * 4 + 7 * 4


def test_two_forwards_before_a_backward_keep_their_own_buffers():
    """The scan's state chains come from the pool: a second forward of the same shapes, taken
    while autograd still holds the first one's chains, gets buffers of its own, so each backward
    gives what it gives alone (and what the torch loop gives)."""
    cfg = MemNetConfig(vocab_size=30, d_model=16, num_slots=12, top_k=2, mem_heads=2, segment_len=4)
    model = perturbed(cfg, 0)
    x1, x2 = rand_tokens(2, 13, vocab=30, seed=1), rand_tokens(2, 13, vocab=30, seed=2)

    def grads(loss):
        return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)

    def loss_of(x):
        out = model(x)
        return out.logits.square().mean() + out.memory.keys.sum() + out.memory.values.square().sum()

    alone = [grads(loss_of(x)) for x in (x1, x2)]
    first, second = loss_of(x1), loss_of(x2)  # both graphs alive at once
    together = [grads(second), grads(first)][::-1]
    model.memory.fused = False
    reference = [grads(loss_of(x)) for x in (x1, x2)]
    for got, want, ref in zip(together, alone, reference):
        for a, b, r in zip(got, want, ref):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b)
                close_grads(a, r, "a parameter")
