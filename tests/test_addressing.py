"""Addressing (memnet.addressing): every top-k path is the first k of a stable descending sort,
ties to the lowest index. The torch selection against the compiled one (ties, -inf padding, NaN),
the blocked search against the plain one, chunked and merged candidates against one block, and the
compiled scan of a large bank against the torch chunk loop."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from helpers import examples
from memnet import native
from memnet.addressing import (BLOCKED_MIN_N, blocked_topk, cosine_scores_topk, cosine_topk, merge_candidates,
                               pending_top_scores, scan_unit_keys, sorted_topk, stable_topk, torch_stable_topk)

needs_kernel = pytest.mark.skipif(native.library() is None, reason=f"kernel {native.status()}")


def rows(kind: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Scores of one kind: distinct, few distinct values (many exact ties), or a few values padded
    with -inf at the end of each row (the masked entries of a window's later writes)."""
    if kind == "normal":
        return torch.randn(*shape, generator=g)
    x = torch.randint(-2, 3, shape, generator=g).float()
    if kind == "padded":
        n = shape[-1]
        real = torch.randint(0, n + 1, shape[:-1], generator=g).unsqueeze(-1)  # real entries per row
        x = x.masked_fill(torch.arange(n) >= real, float("-inf"))
    return x


# ---------------------------------------------------------------- selection: every path is the stable sort
@settings(max_examples=examples(60))
@given(st.integers(1, 1200), st.integers(1, 12), st.sampled_from(["normal", "few_values", "zeros", "inf", "nan"]),
       st.sampled_from([stable_topk, torch_stable_topk]), st.integers(0, 2**31 - 1))
def test_stable_topk_is_the_stable_sort(N, k, kind, path, seed):
    """Same values and indices as a full stable descending sort, ties (also +0.0 vs -0.0, and -inf)
    to the lowest index, NaN rows in the sort's order; on CPU ``stable_topk`` is the compiled selection, ``torch_stable_topk``
    the torch path that runs elsewhere."""
    k = min(k, N)
    g = torch.Generator().manual_seed(seed)
    x = {"normal": lambda: torch.randn(3, N, generator=g),
         "few_values": lambda: torch.randint(-2, 3, (3, N), generator=g).float(),
         "zeros": lambda: torch.where(torch.rand(3, N, generator=g) < 0.5, 0.0, -0.0),
         "inf": lambda: torch.where(torch.rand(3, N, generator=g) < 0.7, float("-inf"), torch.randn(3, N, generator=g)),
         "nan": lambda: torch.where(torch.rand(3, N, generator=g) < 0.1, float("nan"),
                                    torch.randint(-2, 3, (3, N), generator=g).float())}[kind]()
    ref = x.sort(dim=-1, descending=True, stable=True)
    top, index = path(x, k)
    assert torch.equal(index, ref.indices[..., :k])
    assert torch.equal(top, ref.values[..., :k]) if kind != "nan" else torch.equal(top.isnan(), ref.values[..., :k].isnan())


@settings(max_examples=examples(60))
@given(st.integers(1, 900), st.integers(1, 12), st.integers(1, 70), st.sampled_from(["normal", "few_values", "zeros", "nan"]),
       st.integers(0, 2**31 - 1))
def test_blocked_topk_is_the_stable_sort(N, k, block, kind, seed):
    """The block-maxima search gives the stable sort's answer: ties inside and across blocks, a
    padded last block, more blocks kept than there are, NaN rows (the sort's own order)."""
    k = min(k, N)
    g = torch.Generator().manual_seed(seed)
    x = {"normal": lambda: torch.randn(3, N, generator=g),
         "few_values": lambda: torch.randint(-2, 3, (3, N), generator=g).float(),
         "zeros": lambda: torch.where(torch.rand(3, N, generator=g) < 0.5, 0.0, -0.0),
         "nan": lambda: torch.where(torch.rand(3, N, generator=g) < 0.1, float("nan"), torch.randn(3, N, generator=g))}[kind]()
    ref = x.sort(dim=-1, descending=True, stable=True)
    top, index = blocked_topk(x, k, block)
    assert torch.equal(index, ref.indices[..., :k])
    assert torch.equal(top, ref.values[..., :k]) if kind != "nan" else torch.equal(top.isnan(), ref.values[..., :k].isnan())


def test_stable_topk_takes_the_blocked_path_on_long_contiguous_rows():
    """Rows long enough for blocked_topk (and a transposed view, which is not) give the sort's answer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (4, BLOCKED_MIN_N + 37), generator=g).float()  # many exact ties
    ref = x.sort(dim=-1, descending=True, stable=True)
    for scores in (x, x.T.contiguous().T):
        top, index = stable_topk(scores, 5)
        assert torch.equal(index, ref.indices[..., :5]) and torch.equal(top, ref.values[..., :5])


@settings(max_examples=examples(25))
@given(st.integers(2, 700), st.integers(1, 6), st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_chunked_cosine_topk_matches_one_block(N, k, chunk, seed):
    """Scoring the bank chunk by chunk keeps the same slots (tied empty and duplicated keys included)."""
    k = min(k, N)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 2, 8, generator=g)
    slots = torch.randn(2, N, 8, generator=g)
    slots[:, ::3] = 0  # empty slots tie exactly
    slots[:, 1::5] = slots[:, 1:2]  # duplicated keys tie exactly
    sharp = torch.tensor([3.0, 10.0])
    i1, w1 = cosine_topk(q, slots, k, sharp, 1e-6)
    i2, w2 = cosine_topk(q, slots, k, sharp, 1e-6, chunk=chunk, native=False)  # the torch chunk loop
    assert torch.equal(i1, i2)
    assert torch.allclose(w1, w2, atol=1e-6)


@needs_kernel
@settings(max_examples=examples(40))
@given(st.integers(1, 400), st.integers(1, 12), st.sampled_from(["normal", "few_values", "padded"]),
       st.integers(0, 2**31 - 1))
def test_compiled_and_torch_selection_agree_bit_for_bit(N, k, kind, seed):
    """On CPU float32 stable_topk is the compiled selection; the torch path gives the same values and
    indices, exact ties and rows of -inf padding included (ties to the lowest index on both)."""
    k = min(k, N)
    x = rows(kind, (5, N), torch.Generator().manual_seed(seed))
    assert native.select_rows(x, k) is not None  # the compiled path answered
    top_n, idx_n = stable_topk(x, k)
    top_t, idx_t = torch_stable_topk(x, k)
    assert torch.equal(idx_n, idx_t) and torch.equal(top_n, top_t)
    assert torch.equal(idx_n, sorted_topk(x, k)[1])


@settings(max_examples=examples(30))
@given(st.integers(1, 600), st.integers(1, 8), st.lists(st.integers(1, 200), min_size=1, max_size=4),
       st.sampled_from(["normal", "few_values", "padded"]), st.integers(0, 2**31 - 1))
def test_merged_candidates_of_parts_are_the_top_k_of_the_row(N, k, cuts, kind, seed):
    """A row cut into parts (in index order), each part's stable top-k, merged: the row's own top-k."""
    k = min(k, N)
    x = rows(kind, (3, N), torch.Generator().manual_seed(seed))
    bounds = sorted({0, N, *(c % N for c in cuts)})
    tops, idxs = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        t, i = stable_topk(x[:, lo:hi], min(k, hi - lo))
        tops.append(t), idxs.append(i + lo)
    top, idx = merge_candidates(tops, idxs, k)
    ref_top, ref_idx = sorted_topk(x, k)
    assert torch.equal(idx, ref_idx) and torch.equal(top, ref_top)


@settings(max_examples=examples(30))
@given(st.integers(1, 5), st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_pending_scores_see_only_earlier_writes(L, W, k, seed):
    """A window's write is seen by the reads of later offsets only: the others score -inf, and the
    scores that are seen are those of the write's key, of length gate, against the query."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, L, 3, 8, generator=g)
    key = torch.randn(2, W, 8, generator=g)
    gate = torch.rand(2, W, generator=g)
    pos = torch.randint(0, L, (2, W), generator=g)
    top, idx = pending_top_scores(q, key, gate, pos, k, 1e-6, 1.0)
    assert top.shape == idx.shape == (2, L, 3, min(k, W))
    seen = pos.gather(1, idx.flatten(1)).view(idx.shape) < torch.arange(L).view(1, L, 1, 1)
    assert torch.equal(torch.isfinite(top), seen)
    want = (F.normalize(q, dim=-1).unsqueeze(3) * (F.normalize(key, dim=-1) * gate.unsqueeze(-1)
            ).gather(1, idx.flatten(1).unsqueeze(-1).expand(-1, -1, 8)).view(*idx.shape, 8)).sum(-1)
    torch.testing.assert_close(top[seen], want[seen], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the scan of a large bank: native = torch
def integer_bank(N: int, D: int, Q: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (Q, D) and keys (N, D) of small integers, some keys repeated and some zero: every dot
    product is exact in float32 whatever the order of its sum, so the compiled scan and the matrix
    product score alike and only the tie rule decides between equal scores."""
    keys = torch.randint(-2, 3, (N, D), generator=g).float()
    keys[:: max(N // 7, 1)] = keys[0]  # one key all over the bank
    keys[1:: max(N // 5, 1)] = 0.0  # empty slots tie at 0
    return torch.randint(-2, 3, (Q, D), generator=g).float(), keys


@needs_kernel
@settings(max_examples=examples(30), deadline=None)
@given(st.integers(1, 9000), st.sampled_from([4, 8, 13]), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from(["none", "some", "all"]), st.integers(1, 5000), st.integers(0, 2**31 - 1))
def test_scan_of_unit_keys_native_and_torch_agree(N, D, n_first, k_first, k_rest, scaled, chunk, seed):
    """scan_unit_keys through the compiled kernel (one pass, or one per group) and through the torch
    chunk loop: the same scores and indices, bit for bit, ties included, with per-slot factors of
    1/2 or 1 (exact products) on none, some or all slots, and 0 on the empty ones."""
    g = torch.Generator().manual_seed(seed)
    k_first, k_rest = min(k_first, N), min(k_rest, N)
    q, keys = integer_bank(N, D, n_first + 3, g)
    empty = (keys == 0).all(-1)  # a factor is 0 only where the key is (an empty slot), as the streaming bank's
    ones = torch.where(empty, 0.0, 1.0)
    pick = lambda: torch.where(empty, 0.0, torch.tensor([0.5, 1.0])[torch.randint(0, 2, (N,), generator=g)])
    f_first = ones if scaled == "none" else pick()
    f_rest = ones if scaled != "all" else pick()
    a = scan_unit_keys(q, keys, n_first, k_first, k_rest, f_first, f_rest, chunk=chunk, use_native=True)
    b = scan_unit_keys(q, keys, n_first, k_first, k_rest, f_first, f_rest, chunk=chunk, use_native=False)
    for (ta, ia), (tb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta, tb)
    full = q @ keys.T
    assert torch.equal(a[0][1], sorted_topk(full[:n_first] * f_first, k_first)[1])
    assert torch.equal(a[1][1], sorted_topk(full[n_first:] * f_rest, k_rest)[1])


@needs_kernel
@settings(max_examples=examples(20), deadline=None)
@given(st.integers(1, 9000), st.sampled_from([4, 8]), st.integers(1, 6), st.integers(1, 3000), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_cosine_scores_topk_native_and_chunked_agree(N, D, k, chunk, scaled, seed):
    """cosine_scores_topk by the compiled kernel and by the torch chunk loop (several threads' ranges
    merged on one side, chunks merged on the other): the same answer bit for bit on exact scores."""
    g = torch.Generator().manual_seed(seed)
    k = min(k, N)
    q, keys = integer_bank(N, D, 5, g)
    scale = torch.tensor([0.0, 0.5, 1.0])[torch.randint(0, 3, (2, N), generator=g)] if scaled else None
    q, keys = torch.stack([q, -q]), torch.stack([keys, keys.flip(0)])  # (2, Q, D), (2, N, D)
    with torch.no_grad():
        top_n, idx_n = cosine_scores_topk(q, keys, k, chunk, scale=scale, native=True)
    top_t, idx_t = cosine_scores_topk(q, keys, k, chunk, scale=scale, native=False)
    assert torch.equal(idx_n, idx_t) and torch.equal(top_n, top_t)


def test_addressing_imports_no_memory_state():
    """addressing imports native and nothing else of memnet, native nothing of memnet (also not
    inside a function): no import circle. Each imports alone in a fresh interpreter."""
    import ast
    from pathlib import Path

    import memnet

    def memnet_imports(module: str) -> set[str]:
        tree = ast.parse((Path(memnet.__file__).parent / f"{module}.py").read_text())
        found = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.level > 0:  # from .x import y / from . import x
                found |= {n.module} if n.module else {a.name for a in n.names}
            elif isinstance(n, (ast.Import, ast.ImportFrom)):  # import memnet.x / from memnet.x import y
                names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                found |= {m.split(".")[1] for m in names if m.startswith("memnet.")}
        return found

    assert memnet_imports("addressing") == {"native"}
    assert memnet_imports("native") == set()
    for module in ("memnet.native", "memnet.addressing"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def test_addressing_names_are_still_importable_from_memory():
    """Chapters, tests and user code import the addressing functions from memnet.memory: the same objects."""
    import memnet.addressing as addressing
    import memnet.memory as memory

    for name in ("SORT_MAX_N", "TOPK_BLOCK", "BLOCKED_MIN_N", "TOPK_CHUNK", "NATIVE_MIN_SLOTS", "sorted_topk",
                 "stable_topk", "torch_stable_topk", "blocked_topk", "merge_candidates", "unit_keys", "cosine_topk",
                 "cosine_top_scores", "cosine_scores_topk", "pending_top_scores", "flat_rows", "gather_slots",
                 "sparse_to_dense"):
        assert getattr(memory, name) is getattr(addressing, name), name
