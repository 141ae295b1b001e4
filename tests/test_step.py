"""The one memory step (MultiHeadMemoryBank.step: read with the memory as it stands, then write)
gives the same answer whichever loop drives it: MemNet.forward, run_segments by hand, the book's
run_bank, the compiled step, StreamingMemory (the step in place) and truncated_backward. Configs
from small_configs (window reads on and off, a fixed write schedule, W writes per segment), with
a partial last window (padding: valid false at the end)."""
import dataclasses
import pickle

import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils import _pytree as pytree

from helpers import V, by_slot, examples, near_tie_watch, rand_tokens, small_configs, states_equal, tiny_cfg
from memnet import MemNet, MemoryState, MemoryTrace, StreamingMemory, book, truncated_backward
from memnet.memory import StepResult, run_segments


def perturbed(cfg, seed: int) -> MemNet:
    """A model whose retention is uneven and content dependent, as after training."""
    torch.manual_seed(seed)
    model = MemNet(cfg).eval()
    with torch.no_grad():
        model.memory.decay_logit.uniform_(-1.0, 4.0)
        model.interface.decay.weight.normal_()
    return model


def padded_tokens(cfg, B: int, segments: int, seed: int) -> torch.Tensor:
    """(B, T) tokens whose last window is partial unless seed says otherwise."""
    return rand_tokens(B, segments * cfg.segment_len - seed % cfg.segment_len, seed=seed)


def traces_equal(a: MemoryTrace, b: MemoryTrace) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))


@settings(max_examples=examples(20), deadline=None)
@given(small_configs(), st.integers(1, 3), st.integers(1, 4), st.sampled_from([None, 1, 2]), st.integers(0, 1000))
def test_forward_run_segments_and_run_bank_take_the_same_step(cfg, B, segments, tbptt, seed):
    """forward, the loop by hand and book.run_bank on the model's own signals: the same state, the
    same trace, bit for bit (the same step on the same inputs), padding included; with
    tbptt_segments the forward values are those of the untruncated loop."""
    model = perturbed(dataclasses.replace(cfg, tbptt_segments=tbptt), seed)
    x = padded_tokens(cfg, B, segments, seed)
    with torch.no_grad():
        out = model(x, return_trace=True)
        queries, requests, valid = model._segments(model.signals(x))
        state, steps = run_segments(model.memory.step, model.initial_state(B), queries, requests, valid)
        bank_state, bank_trace = book.run_bank(model.memory, torch.stack(queries, 1), requests,
                                               valid=torch.stack(valid, 1))
    assert bool((~out.trace.valid).any()) == (x.shape[1] % cfg.segment_len != 0)
    for s in (state, bank_state):
        assert states_equal(s, out.memory) and s.signature == out.memory.signature == cfg.memory_signature()
    assert traces_equal(MemoryTrace.of_steps(requests, valid, steps), out.trace)
    assert traces_equal(bank_trace, out.trace)


@settings(max_examples=examples(12), deadline=None)
@given(small_configs(max_slots=40), st.integers(1, 4), st.integers(1, 50), st.booleans(), st.integers(0, 1000))
def test_streaming_memory_takes_the_step_in_place(cfg, segments, chunk, native, seed):
    """StreamingMemory.step (retention folded into a scale, rows written in place, the scan by the
    compiled kernel or the torch chunk loop) against the functional step, segment by segment: the
    same slots read and the same counts, values up to float rounding; padding read as forward reads it."""
    model = perturbed(cfg, seed)
    x = padded_tokens(cfg, 1, segments, seed)
    with torch.no_grad():
        queries, requests, valid = model._segments(model.signals(x))
        with near_tie_watch() as near_ties:  # a near (not exact) tie may resolve differently
            _, steps = run_segments(model.memory.step, model.initial_state(1), queries, requests, valid)
        if any(near_ties):
            return
        mem = StreamingMemory(model.memory, chunk=chunk, native=native)
        for q, req, v, st_ in zip(queries, requests, valid, steps):
            r = mem.step(q, req, v)
            # the kept slots in slot order: two kept scores within rounding of each other (where every
            # slot is kept, no near tie decides what is kept) may come in either order
            (got_i, got_w), (want_i, want_w) = by_slot(r.index, r.weight), by_slot(st_.read.index, st_.read.weight)
            assert torch.equal(got_i, want_i)
            torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(r.vectors, st_.read.vectors, atol=1e-4, rtol=1e-4)
            got = mem.to_state()
            assert torch.equal(got.age, st_.state.age) and got.segments.item() == st_.state.segments.item()
            for f in ("keys", "values", "usage") + (("retained",) if cfg.allocation != "lru" else ()):
                torch.testing.assert_close(getattr(got, f), getattr(st_.state, f), atol=1e-5, rtol=1e-4, msg=f)


@settings(max_examples=examples(10), deadline=None)
@given(small_configs(), st.integers(2, 4), st.integers(1, 3), st.integers(0, 1000))
def test_truncated_backward_is_forward_with_tbptt(cfg, segments, chunk, seed):
    """truncated_backward (the step through one forward per chunk) against one forward with
    tbptt_segments = chunk, auxiliary losses off: the same final memory and gradients, up to the
    float rounding of batching the windows differently; padding at the end."""
    off = dict(util_weight=0.0, write_weight=0.0, pressure_weight=0.0, read_entropy_weight=0.0)
    x = padded_tokens(cfg, 2, segments, seed)
    y = rand_tokens(*x.shape, seed=seed + 1)
    a = perturbed(dataclasses.replace(cfg, tbptt_segments=chunk, **off), seed)
    b = perturbed(dataclasses.replace(cfg, **off), seed)
    with near_tie_watch() as near_ties:
        out = a(x)
        F.cross_entropy(out.logits.reshape(-1, V), y.reshape(-1)).backward()
        _, mem = truncated_backward(b, x, y, chunk)
    if any(near_ties):
        return
    assert states_equal(mem, out.memory.detach(), atol=1e-5)
    grad = lambda p: torch.zeros_like(p) if p.grad is None else p.grad  # no gradient: zero (the aux losses, weighted 0)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(grad(q), grad(p), atol=1e-5, rtol=1e-3, msg=name)


def test_compiled_step_takes_and_gives_pytrees():
    """torch.compile(bank.step, fullgraph=True) takes a MemoryState and a WriteRequest and gives a
    StepResult, the state's signature kept; the step's output flattens to tensors and back."""
    torch._dynamo.reset()
    model = MemNet(tiny_cfg(writes_per_segment=2))
    x = rand_tokens(2, 2 * model.cfg.segment_len - 1)
    queries, requests, valid = model._segments(model.signals(x))
    state = model.initial_state(2)
    step = torch.compile(model.memory.step, backend="aot_eager", fullgraph=True)
    got = step(state, queries[0], requests[0], valid[0])
    want = model.memory.step(state, queries[0], requests[0], valid[0])
    assert isinstance(got, StepResult) and got.state.signature == state.signature
    leaves, spec = pytree.tree_flatten(got)
    assert all(isinstance(t, torch.Tensor) for t in leaves) and len(leaves) == 7 + 4 + 4 + 1  # state, read, write, mass
    again = pytree.tree_unflatten(leaves, spec)
    assert isinstance(again.state, MemoryState) and again.state.signature == state.signature
    assert pickle.loads(pickle.dumps(got.state.detach())).signature == state.signature
    for u, v in zip(leaves, pytree.tree_leaves(want)):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
