"""The compiled top-k kernels (memnet.native) against the torch paths: same rows, same tie rule,
scores equal up to float rounding (the scan) or exactly (the selection); and the cases where they
decline to answer."""
import multiprocessing as mp

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import examples
from memnet import native
from memnet import MemNet, MemNetConfig
from memnet.memory import cosine_scores_topk, stable_topk

needs_kernel = pytest.mark.skipif(native.library() is None, reason=f"kernel {native.status()}")


def reference(q, keys, k, scale=None):
    """stable_topk of the full score matrix, in float64 so that its order is the exact one."""
    s = q.double() @ keys.double().T
    if scale is not None:
        s = s * scale.double()
    top, idx = stable_topk(s, k)
    return top.float(), idx


def well_separated(q, keys, k, scale=None, gap=1e-5):
    """True when no two scores around each row's k-th are within `gap` (float rounding cannot reorder them)."""
    s = q.double() @ keys.double().T
    if scale is not None:
        s = s * scale.double()
    top = s.topk(min(k + 1, s.shape[1]), dim=-1).values
    return bool(((top[:, :-1] - top[:, 1:]) > gap).all())


def test_status_names_the_path():
    assert native.status() == "native" or native.status().startswith(("unavailable", "disabled"))


@needs_kernel
@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 3000), st.sampled_from([1, 3, 7, 8, 16, 24, 64]), st.integers(1, 13), st.integers(1, 8),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_kernel_matches_float64_reference(N, D, Q, k, scaled, seed):
    """Every D (the AVX2 path needs D % 8 == 0, the others take the plain loop) and Q (groups of
    four plus a remainder): the rows of the exact top-k, and their scores to float rounding."""
    k = min(k, N)
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    q = F.normalize(torch.randn(Q, D, generator=g), dim=-1)
    scale = torch.rand(N, generator=g) if scaled else None
    got = native.topk_rows(q, keys, k, scale)
    assert got is not None
    top, idx = got
    assert top.shape == idx.shape == (Q, k) and top.dtype == torch.float32 and idx.dtype == torch.int64
    ref_top, ref_idx = reference(q, keys, k, scale)
    assert torch.allclose(top, ref_top, atol=1e-5)
    if well_separated(q, keys, k, scale):
        assert torch.equal(idx, ref_idx)


@needs_kernel
@pytest.mark.parametrize("D", [8, 5])
def test_exact_ties_go_to_the_lowest_row_across_threads(D):
    """Duplicated and empty rows score exactly alike; the kernel keeps the lowest rows first, as
    the stable sort does, also when the rows are split between threads."""
    g = torch.Generator().manual_seed(0)
    N = 3 * 4096
    keys = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    keys[::7] = keys[5]  # a key repeated all over the bank, in every thread's range
    keys[1::11] = 0.0  # empty slots tie at 0
    q = torch.cat([keys[5:6], -keys[5:6], F.normalize(torch.randn(3, D, generator=g), dim=-1)])
    for threads in (1, 2, 3):
        top, idx = native.topk_rows(q, keys, 6, threads=threads)
        ref_top, ref_idx = stable_topk(q @ keys.T, 6)
        assert torch.equal(idx[0], ref_idx[0]) and idx[0].tolist() == [0, 5, 7, 14, 21, 28]
        assert torch.allclose(top, ref_top, atol=1e-6)
    one = native.topk_rows(q, keys, 6, threads=1)
    two = native.topk_rows(q, keys, 6, threads=2)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])  # the same sums, merged in row order


@needs_kernel
def test_cosine_scores_topk_takes_the_kernel_only_without_gradients():
    g = torch.Generator().manual_seed(1)
    m = F.normalize(torch.randn(2, 5000, 16, generator=g), dim=-1)
    q = F.normalize(torch.randn(2, 6, 16, generator=g), dim=-1)
    top_n, idx_n = cosine_scores_topk(q, m, 4, chunk=1000)
    top_t, idx_t = cosine_scores_topk(q, m, 4, chunk=1000, native=False)
    assert torch.equal(idx_n, idx_t) and torch.allclose(top_n, top_t, atol=1e-6)
    qg = q.clone().requires_grad_()
    top_g, _ = cosine_scores_topk(qg, m, 4, chunk=1000)
    assert top_g.requires_grad  # the differentiable torch path
    top_g.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


@needs_kernel
def test_kernel_declines_what_it_cannot_answer(monkeypatch):
    keys = F.normalize(torch.randn(100, 8), dim=-1)
    q = F.normalize(torch.randn(3, 8), dim=-1)
    bad = q.clone()
    bad[1, 2] = float("nan")
    assert native.topk_rows(bad, keys, 4) is None  # NaN scores: the sort's own order is the caller's
    assert native.topk_rows(q, keys[:3], 4) is None  # fewer rows than k
    assert native.topk_rows(q.double(), keys.double(), 4) is None
    assert native.topk_rows(q, keys[:, :7], 4) is None  # mismatched widths
    assert native.topk_rows(q, keys, 4, scale=torch.ones(99)) is None
    monkeypatch.setenv("MEMNET_NATIVE", "0")
    assert native.topk_rows(q, keys, 4) is None and native.status().startswith("disabled")
    # and the caller's answer is then the torch path's
    top, idx = cosine_scores_topk(bad[None], keys[None], 4)
    ref_top, ref_idx = cosine_scores_topk(bad[None], keys[None], 4, native=False)
    assert torch.equal(idx, ref_idx)


def _child_topk(conn):
    keys = F.normalize(torch.randn(3 * 4096, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    got = native.topk_rows(keys[:2], keys, 3, threads=2)
    conn.send(None if got is None else got[1].tolist())


@needs_kernel
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork on this platform")
def test_threads_work_in_a_forked_child():
    """A child forked after the parent used the thread pool (as DataLoader workers are) gets a pool
    of its own instead of waiting on threads that did not survive the fork."""
    keys = F.normalize(torch.randn(3 * 4096, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    want = native.topk_rows(keys[:2], keys, 3, threads=2)[1].tolist()  # the parent's pool now exists
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_topk, args=(child,))
    proc.start()
    assert parent.poll(60), "the forked child did not answer"
    assert parent.recv() == want
    proc.join(10)


@needs_kernel
def test_model_is_bitwise_the_same_without_the_compiled_selection(monkeypatch):
    """Every top-k of a training step (reads, content writes, allocation) goes through
    native.select_rows on CPU; with the kernel turned off the torch path gives the same logits,
    final memory and gradients, bit for bit (both pick the stable sort's indices of the same scores)."""
    torch.manual_seed(0)
    cfg = MemNetConfig(vocab_size=30, d_model=16, num_slots=24, top_k=3, mem_heads=2, segment_len=8,
                       writes_per_segment=3, n_heads=2)
    model = MemNet(cfg)
    model.memory.fused = False  # the torch step (memnet.fused does its selections inside its own kernel)
    x = torch.randint(0, 30, (3, 45))

    def step():
        model.zero_grad()
        out = model(x)
        (out.logits.square().mean() + sum(out.aux_losses.values())).backward()
        return out.logits.detach(), out.memory.keys.detach(), [p.grad.clone() for p in model.parameters()]

    calls = []
    real = native.select_rows
    monkeypatch.setattr(native, "select_rows", lambda s, k, threads=None: calls.append(k) or real(s, k, threads))
    fast = step()
    assert calls and all(c is not None for c in calls)  # the kernel answered
    monkeypatch.setenv("MEMNET_NATIVE", "0")
    slow = step()
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert all(torch.equal(a, b) for a, b in zip(fast[2], slow[2]))


@needs_kernel
def test_compiled_selection_answers_and_gives_way():
    """select_rows answers for CPU float32 rows of any layout (a transposed view, several threads)
    with the sort's indices, and gives way (None) to the torch path on NaN, float64 or k > N; the
    values stable_topk gathers carry gradients exactly as topk's do."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (300, 257), generator=g).float()  # many ties
    ref = x.sort(dim=-1, descending=True, stable=True).indices[..., :7]
    assert torch.equal(native.select_rows(x, 7, threads=2), ref)
    assert torch.equal(native.select_rows(x.T.contiguous().T, 7), ref)
    assert native.select_rows(x.double(), 7) is None and native.select_rows(x, 258) is None
    y = x.clone()
    y[5, 100] = float("nan")
    assert native.select_rows(y, 7) is None
    assert torch.equal(stable_topk(y, 7)[1], y.sort(dim=-1, descending=True, stable=True).indices[..., :7])
    s = torch.randn(4, 9, 33, generator=g, requires_grad=True)
    w = torch.randn(4, 9, 3, generator=g)
    (stable_topk(s, 3)[0] * w).sum().backward()
    got = s.grad.clone()
    s.grad = None
    (s.topk(3, dim=-1)[0] * w).sum().backward()
    assert torch.equal(got, s.grad)


def test_lazy_library_warns_once_and_gives_way(monkeypatch):
    """A library whose build fails is None with one RuntimeWarning that says why (status keeps the
    reason); its switch set to "0" disables it without building."""
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")

    lib = native.LazyLibrary("test: a kernel", broken, ("MEMNET_TEST_SWITCH",), "the torch path answers")
    with pytest.warns(RuntimeWarning, match="test: a kernel is unavailable .*no C compiler.*the torch path answers"):
        assert lib.get() is None
    assert lib.get() is None and calls == [1]  # built (and warned) once
    assert lib.status() == "unavailable (RuntimeError: no C compiler (cc, gcc or clang) on PATH)"
    monkeypatch.setenv("MEMNET_TEST_SWITCH", "0")
    fresh = native.LazyLibrary("test: another", broken, ("MEMNET_TEST_SWITCH",), "x")
    assert fresh.get() is None and fresh.status() == "disabled (MEMNET_TEST_SWITCH=0)" and calls == [1]
