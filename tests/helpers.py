"""Tiny configs and hypothesis strategies shared by the tests (kept small: 2 shared CPU cores)."""
from __future__ import annotations

import contextlib
import os
import struct

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import memnet.fused as fused
import memnet.memory as memory_module
from memnet import MemNet, MemNetConfig, MemoryState, MultiHeadMemoryBank

V = 20
# HYPOTHESIS_PROFILE=thorough multiplies every test's example budget (explicit settings override profiles)
SCALE = 8 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1


def examples(n: int) -> int:
    return n * SCALE


def tiny_cfg(**kw) -> MemNetConfig:
    base = dict(vocab_size=V, d_model=16, num_slots=16, top_k=2, mem_heads=2, segment_len=4,
                n_layers=1, n_heads=2, mlp_ratio=2)
    base.update(kw)
    return MemNetConfig(**base)


def tiny_model(seed: int = 0, **kw) -> MemNet:
    torch.manual_seed(seed)
    return MemNet(tiny_cfg(**kw)).eval()


def rand_tokens(B: int, T: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def states_equal(a: MemoryState, b: MemoryState, atol: float = 0.0) -> bool:
    return all(torch.allclose(getattr(a, f), getattr(b, f), atol=atol, rtol=0, equal_nan=True)
               for f in ("keys", "values", "age", "usage", "retained", "segments"))


@st.composite
def small_configs(draw, max_slots: int = 24) -> MemNetConfig:
    """Valid tiny configs over the memory-relevant knobs."""
    n_heads = draw(st.sampled_from([1, 2]))
    d_model = n_heads * draw(st.sampled_from([8, 12, 16]))
    L = draw(st.integers(2, 8))
    wps = draw(st.one_of(st.none(), st.integers(1, L)))
    writes = L if wps is None else wps
    N = draw(st.integers(max(writes, 2), max_slots))
    lo = draw(st.integers(0, V - 1))
    write_tokens = draw(st.one_of(st.none(), st.integers(lo + 1, V).map(lambda hi: (lo, hi))))
    return MemNetConfig(
        vocab_size=V, d_model=d_model, n_heads=n_heads, n_layers=1, mlp_ratio=2,
        num_slots=N, top_k=draw(st.integers(1, min(N, 6))), mem_heads=draw(st.integers(1, 3)),
        segment_len=L, writes_per_segment=wps,
        slot_dim=draw(st.sampled_from([None, 4, 8])),
        write_threshold=draw(st.sampled_from([0.05, 0.3, 0.5, 0.9])),
        usage_decay=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        decay_init=draw(st.sampled_from([-2.0, 0.0, 5.0])),
        sharpness_init=draw(st.sampled_from([1.0, 10.0, 50.0])),
        allocation=draw(st.sampled_from(["lru", "faded", "weakest"])),
        write_tokens=write_tokens,
        write_key_shift=draw(st.sampled_from([0, 1, 2])),
        window_reads=draw(st.booleans()),
        segment_codes=draw(st.sampled_from([0, 1, 3])),
        full_key_norm=draw(st.sampled_from([1e-6, 0.3, 1.0])),
    )


# ------------------------------------------------------------------ near ties between computation paths
def by_slot(index: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A read's kept entries (..., K) in slot order: two paths may order kept scores that tie up to
    rounding differently, and what a read returns does not depend on the order."""
    order = index.argsort(dim=-1, stable=True)
    return index.gather(-1, order), weight.gather(-1, order)


@contextlib.contextmanager
def near_tie_watch(tol: float = 1e-5):
    """Record whether any discrete memory decision (the top-k slots of a read or content write, the
    order of allocation) came within `tol` of a tie without being an exact tie.

    Two computation paths (one call vs two, a batch vs a row) round differently at the 1e-8 level;
    at such a near tie they may legitimately pick different slots, and top-k turns that into an O(1)
    difference. Exact ties are fine: they resolve to the lowest index on every path.

    Inside the watch every memory step is the torch step (``MultiHeadMemoryBank.reference_step``),
    whose decisions are what it watches: the compiled step of memnet.fused makes the same decisions
    in C, where no patch sees them (tests/test_fused.py checks the two agree)."""
    flags = []
    orig_topk, orig_alloc = memory_module.cosine_topk, MultiHeadMemoryBank.allocate
    orig_scores, orig_merge = memory_module.cosine_top_scores, memory_module.merge_candidates

    def near_boundary(sim, k):
        if sim.shape[-1] > k:  # which candidates are kept: any near (not at) the k+1-th value could swap
            boundary = sim.sort(-1, descending=True).values[..., k : k + 1]
            d = (sim - boundary).abs()
            flags.append(bool(((d > 0) & (d < tol)).any()))

    def cosine(queries, slots, eps, full_norm):
        q = F.normalize(queries.float(), dim=-1, eps=eps)
        m = F.normalize(slots, dim=-1, eps=eps if full_norm is None else full_norm)
        return torch.einsum("bqhd,bnd->bqhn", q, m)

    def topk(queries, slots, k, sharpness, eps, full_norm=None):
        near_boundary(cosine(queries, slots, eps, full_norm), k)
        return orig_topk(queries, slots, k, sharpness, eps, full_norm=full_norm)

    def top_scores(queries, slots, k, eps, *args, full_norm=None, **kw):  # a window's read of the slots
        near_boundary(cosine(queries, slots, eps, full_norm), k)
        return orig_scores(queries, slots, k, eps, *args, full_norm=full_norm, **kw)

    def merge(tops, idxs, k):  # slots and a window's writes: the kept set of their candidates
        if len(tops) > 1:
            cand = torch.cat(tops, -1)
            near_boundary(cand.masked_fill(cand.isinf(), -1e30), k)
        return orig_merge(tops, idxs, k)

    def allocate(self, state, n):
        # the n stalest and their order (write i gets slot i): distinct values near each other could swap
        s = state.staleness().sort(-1, descending=True).values
        cut = s[:, min(n, s.shape[1] - 1) : min(n, s.shape[1] - 1) + 1] - tol * (1 + s[:, :1].abs())
        for row, c in zip(s, cut):
            v = row[row >= c]
            gap = v[:-1] - v[1:]
            flags.append(bool(((gap > 0) & (gap < tol * (1 + v[:-1].abs()))).any()))
        return orig_alloc(self, state, n)

    orig_applies = fused.applies
    memory_module.cosine_topk, MultiHeadMemoryBank.allocate = topk, allocate
    memory_module.cosine_top_scores, memory_module.merge_candidates = top_scores, merge
    fused.applies = lambda tensors: False  # the torch step, whose decisions the patches above see
    try:
        yield flags
    finally:
        memory_module.cosine_topk, MultiHeadMemoryBank.allocate = orig_topk, orig_alloc
        memory_module.cosine_top_scores, memory_module.merge_candidates = orig_scores, orig_merge
        fused.applies = orig_applies


# ------------------------------------------------------------------ "nothing changed" after a rejected call
def snapshot(model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
             state: MemoryState | None = None, files: list | tuple = ()) -> dict:
    """A deep copy of everything a rejected call must leave alone: the model's parameters and
    buffers, their ``.grad``, the optimizer's state, every RNG (torch, numpy, random), a memory
    state's tensors and the bytes of `files` (None for a file that does not exist)."""
    import copy
    import random
    from pathlib import Path

    import numpy as np

    snap: dict = {"rng": (torch.get_rng_state(), copy.deepcopy(np.random.get_state()), random.getstate())}
    if model is not None:
        snap["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        snap["grad"] = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    if optimizer is not None:
        snap["optimizer"] = copy.deepcopy(optimizer.state_dict())
    if state is not None:
        snap["state"] = {f: getattr(state, f).clone() for f in ("keys", "values", "age", "usage", "retained",
                                                                "segments")}
    snap["files"] = {str(f): (Path(f).read_bytes() if Path(f).exists() else None) for f in files}
    return snap


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5))
                and torch.equal(a.isnan(), b.isnan()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        import numpy as np

        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return bool(np.array_equal(a, b))
    except ImportError:  # pragma: no cover
        pass
    return a == b


def assert_unchanged(before: dict, after: dict) -> None:
    """Fail naming the first part of a :func:`snapshot` that differs."""
    assert before.keys() == after.keys(), f"snapshots of different things: {before.keys()} vs {after.keys()}"
    for part in before:
        if part in ("model", "grad", "state", "files") and isinstance(before[part], dict):
            for k in before[part]:
                assert k in after[part] and _same(before[part][k], after[part][k]), f"{part}[{k!r}] changed"
        else:
            assert _same(before[part], after[part]), f"{part} changed"


def png_size_and_dpi(png: bytes) -> tuple[int, int, float]:
    """Width and height of a PNG in pixels, and the pixels per inch of its pHYs chunk (0 without one)."""
    w, h = struct.unpack(">II", png[16:24])
    i = png.find(b"pHYs")
    return w, h, (struct.unpack(">I", png[i + 4:i + 8])[0] * 0.0254 if i > 0 else 0.0)
