"""Addressing: which slots a query finds. Top-k selection with ties to the lowest index, cosine
scoring of a bank against queries (whole, in chunks, or by the compiled scan of :mod:`memnet.native`),
and the index arithmetic that turns addresses into rows of a bank.

Shapes: B batch, N slots, D slot_dim, Q queries, H memory heads, L tokens in a segment, W writes,
K top_k.

Every selection here returns the first k entries of a stable descending sort of its scores: the
same values and indices on every path (sort, ``topk``, block maxima, the compiled selection, the
compiled scan up to the float rounding of its dot products), so that a sequence in one call or
split in two, eager or compiled, addresses the same slots. Nothing here knows about memory states.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native as kernel

SORT_MAX_N = 16  # up to this many candidates (or when k is over a quarter of them) a stable sort is used as is
TOPK_BLOCK = 64  # blocked_topk: entries per block
BLOCKED_MIN_N = 8192  # rows at least this long (and >= 8 k blocks) go through blocked_topk
TOPK_CHUNK = 65536  # slots scored per chunk when a bank is larger: bounds the (..., Q, chunk) similarity block
# StreamingMemory takes the compiled scan (memnet.native) from this many slots on by default: a
# segment's ~160 queries against a bank that fits in cache are about as fast as one matrix product
# (4096 slots, one core: within the machine's noise either way), against one that does not the
# scan is about twice as fast (65536 slots)
NATIVE_MIN_SLOTS = 16384


# ---------------------------------------------------------------------------- top-k selection
def sorted_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k entries of ``scores.sort(descending=True, stable=True)`` along the last dim: the
    reference the faster selections below agree with (ties and NaN in the sort's own order)."""
    top, index = scores.sort(dim=-1, descending=True, stable=True)
    return top[..., :k], index[..., :k]


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k entries of a stable descending sort of `scores` (..., N): values and indices (..., k).

    Ties go to the lowest index, as with ``scores.sort(descending=True, stable=True)[..., :k]``, but
    in O(N) rather than O(N log N). On CPU in float32 the compiled :func:`memnet.native.select_rows`
    picks the indices (the values are gathered from `scores`, so gradients flow as through
    ``topk``); elsewhere ``topk`` of k+1 decides it when its k+1 values are distinct (then
    the kept set and its order are unambiguous). Otherwise (a tie inside the top k or at its edge)
    the k-th largest value v, which is unambiguous even where indices tie, splits the row: every
    entry above v is kept, and entries equal to v are taken in index order (a running count) until
    k are kept; the k kept entries are then stably sorted. Inside ``torch.compile`` (see
    :meth:`memnet.MemNet.compile_memory`) it is the stable sort itself, which traces as one operation.
    """
    if torch.compiler.is_compiling():  # inside torch.compile (MemNet.compile_memory): the sort traces as one op
        return sorted_topk(scores, k)
    index = kernel.select_rows(scores, k)  # CPU float32: one pass per row in C (None elsewhere)
    if index is not None:
        return scores.gather(-1, index), index
    return torch_stable_topk(scores, k)


def torch_stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`stable_topk` in torch operations only (the path off CPU, or without the compiled kernel)."""
    N = scores.shape[-1]
    if N >= BLOCKED_MIN_N and k * TOPK_BLOCK * 8 <= N and scores.stride(-1) == 1:  # long contiguous rows
        return blocked_topk(scores, k)
    if N <= SORT_MAX_N or 4 * (k + 1) > N:  # small rows, or most of a row kept: the sort is as fast
        return sorted_topk(scores, k)
    top, index = scores.topk(k + 1, dim=-1, sorted=True)  # (..., k+1)
    if bool(top[..., 0].isnan().any()):  # topk ranks NaN first: a row holds NaN, take the sort's own order
        return sorted_topk(scores, k)
    if not bool((top[..., 1:] == top[..., :-1]).any()):  # no tie: topk's answer is the sort's
        return top[..., :k], index[..., :k]
    kth = top[..., k - 1:k]  # (..., 1)
    above = scores > kth
    at = scores == kth
    room = k - above.sum(-1, keepdim=True, dtype=torch.int32)  # (..., 1) ties still to take, lowest index first
    keep = above | (at & (at.cumsum(-1, dtype=torch.int32) <= room))  # exactly k per row (no NaN here)
    index = keep.nonzero()[:, -1].view(*scores.shape[:-1], k)  # ascending index within each row
    top, order = scores.gather(-1, index).sort(dim=-1, descending=True, stable=True)
    return top, index.gather(-1, order)


def blocked_topk(scores: Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[Tensor, Tensor]:
    """``stable_topk`` of long rows through their block maxima: the same values and indices.

    The row (..., N) is cut into blocks of `block` entries (the last one padded with -inf) and
    only the k blocks with the largest maxima (ties to the lowest block) are searched. That is
    exact: an entry e of a block not among them is beaten by the maximum of each of the k chosen
    blocks (larger, or equal and at a lower index, since blocks are contiguous and ties go to
    the lower block), so e is not in the top k. One pass of ``amax`` over the row replaces
    ``topk`` over it, which on CPU is several times slower. NaN scores take the sort's path.
    """
    N = scores.shape[-1]
    nb = -(-N // block)
    padded = scores if nb * block == N else F.pad(scores, (0, nb * block - N), value=float("-inf"))
    blocks = padded.unflatten(-1, (nb, block))  # (..., nb, block)
    peak = blocks.amax(-1)  # (..., nb)
    if bool(peak.isnan().any()):  # NaN scores: the sort's own order
        return sorted_topk(scores, k)
    chosen = stable_topk(peak, k)[1].sort(dim=-1).values  # (..., k) blocks in index order
    cand_idx = (chosen.unsqueeze(-1) * block + torch.arange(block, device=scores.device)).flatten(-2)  # (..., k*block)
    top, pos = stable_topk(padded.gather(-1, cand_idx), k)  # candidates in index order keep the tie rule
    return top, cand_idx.gather(-1, pos)


def merge_candidates(tops: list[Tensor], idxs: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The top k of per-part candidates (..., k_i) with their global indices, parts given in index
    order (lowest first): concatenated in that order, a stable top-k keeps ties at the lowest index."""
    if len(tops) == 1:
        return tops[0], idxs[0]
    top, pos = stable_topk(torch.cat(tops, -1), k)
    return top, torch.cat(idxs, -1).gather(-1, pos)


# ---------------------------------------------------------------------------- cosine scoring
def unit_keys(key: Tensor, eps: float) -> Tensor:
    """``F.normalize(key.float(), dim=-1, eps=eps)``, with a zero gradient on all-zero rows.

    The keys of a window's first tokens are exactly zero (``write_key_shift``); there the gradient
    of F.normalize is the upstream one times 1/eps, which overflows float16 under autocast and turns
    the write-key weights' gradient to NaN (inf times the zero input). The values are the same, and
    so is every other gradient: an all-zero row has no parameter behind it."""
    key = key.float()  # (..., D)
    unit = F.normalize(key, dim=-1, eps=eps)
    return torch.where((key != 0).any(-1, keepdim=True), unit, torch.zeros_like(unit))


def cosine_topk(queries: Tensor, slots: Tensor, k: int, sharpness: Tensor, eps: float,
                chunk: int = TOPK_CHUNK, native: bool = True, full_norm: float | None = None) -> tuple[Tensor, Tensor]:
    """Top-k cosine addressing, weighted by the strength of each slot's key.

    queries: (B, Q, H, D); slots: (B, N, D); sharpness: (H,).
    Returns index (B, Q, H, K) and softmax weights (B, Q, H, K) over the kept slots.

    A slot scores ``cos(q, key) * min(|key| / full_norm, 1)``: a key at least `full_norm` long
    addresses at its full cosine, a shorter one (written weakly, or faded by decay) in proportion
    to its length, and an empty slot scores 0. That is ``q_hat . key / max(|key|, full_norm)``, the
    cosine of ``F.normalize(key, eps=full_norm)``; `full_norm` None means `eps` (plain cosine).

    Slots with identical keys (empty slots, or slots filled by the same content write) tie exactly;
    ties go to the lowest index on every path (``stable_topk``), so the same sequence in one call
    or split in two addresses (and counts usage for) the same slots. Banks of more than `chunk`
    slots are scored chunk by chunk (``cosine_scores_topk``, through the compiled kernel where it
    applies and `native` allows): the same indices, with the (B, Q, H, N) similarity matrix never
    held at once.
    """
    top, index = cosine_top_scores(queries, slots, k, eps, chunk, native, full_norm)
    weight = torch.softmax(top * sharpness.view(1, 1, -1, 1), dim=-1)
    return index, weight


def cosine_top_scores(queries: Tensor, slots: Tensor, k: int, eps: float, chunk: int = TOPK_CHUNK,
                      native: bool = True, full_norm: float | None = None) -> tuple[Tensor, Tensor]:
    """The scores (B, Q, H, K) and indices (B, Q, H, K) that :func:`cosine_topk` keeps, before the softmax."""
    q = F.normalize(queries, dim=-1, eps=eps)
    m = F.normalize(slots, dim=-1, eps=eps if full_norm is None else full_norm)
    B, Q, H, D = q.shape
    if slots.shape[1] <= chunk:
        sim = torch.einsum("bqhd,bnd->bqhn", q, m)  # (B, Q, H, N)
        return stable_topk(sim, k)  # (B, Q, H, K), ties to the lowest index
    top, index = cosine_scores_topk(q.reshape(B, Q * H, D), m, k, chunk, native=native)
    return top.view(B, Q, H, k), index.view(B, Q, H, k)


def cosine_scores_topk(q: Tensor, m: Tensor, k: int, chunk: int = TOPK_CHUNK,
                       scale: Tensor | None = None, native: bool = True) -> tuple[Tensor, Tensor]:
    """Exact top-k of cosine scores, scoring the bank in chunks of `chunk` slots.

    q: (B, Q, D) unit queries; m: (B, N, D) unit keys (already normalised); scale: optional (B, N)
    factor applied to each slot's scores. Returns scores and indices (B, Q, K), ties to the lowest
    index. The bank is read once; at most (B, Q, chunk) scores exist at a time. Per chunk the stable
    top-k is kept; the union of these candidates holds the global top-k, and because candidates
    are concatenated in chunk order (lowest indices first) a stable top-k over them keeps the rule.

    With `native` (the default), on CPU in float32 and when no gradient is needed, the compiled
    kernel of :mod:`memnet.native` answers instead when it is available: one pass over the rows,
    the same rule, scores equal up to float rounding; its answer is not differentiable.
    """
    B, N, _ = m.shape
    if native and not (torch.is_grad_enabled() and (q.requires_grad or m.requires_grad)):
        answers = [kernel.topk_rows(q[b], m[b], k, None if scale is None else scale[b]) for b in range(B)]
        if all(a is not None for a in answers):
            return torch.stack([a[0] for a in answers]), torch.stack([a[1] for a in answers])
    tops, idxs = [], []
    for start in range(0, N, chunk):
        mc = m[:, start:start + chunk]  # (B, C, D)
        # (B, C, Q) then a transposed view (B, Q, C): one pass over the chunk's keys with the few
        # queries as the GEMM's narrow side, about 1.4x faster on CPU than the einsum's (B, Q, C) product
        sim = torch.bmm(mc, q.transpose(1, 2)).transpose(1, 2)
        if scale is not None:
            sim = sim * scale[:, None, start:start + chunk]
        t, i = stable_topk(sim, min(k, mc.shape[1]))
        tops.append(t)
        idxs.append(i + start)
    return merge_candidates(tops, idxs, k)


def pending_top_scores(queries: Tensor, key: Tensor, gate: Tensor, pos: Tensor, k: int, eps: float,
                       full_norm: float) -> tuple[Tensor, Tensor]:
    """Top-k scores (B, L, H, k') and write indices of a window's own writes for the window's reads.

    queries (B, L, H, D) at offsets 0..L-1; W writes of keys `key` (B, W, D) and gates `gate` (B, W)
    at offsets `pos` (B, W). A write is a key of unit direction and length ``gate`` (as a fresh slot
    holds it), scored as the bank's slots are, and seen only by the reads of later offsets (causal:
    -inf before); k' = min(k, W).
    """
    B, L = queries.shape[:2]
    q = F.normalize(queries, dim=-1, eps=eps)
    m = unit_keys(key, eps) * gate.float().unsqueeze(-1)  # (B, W, D)
    m = m / m.norm(dim=-1, keepdim=True).clamp(min=full_norm)
    sim = torch.einsum("blhd,bwd->blhw", q, m)  # (B, L, H, W)
    seen = pos.unsqueeze(1) < torch.arange(L, device=q.device).view(1, L, 1)  # (B, L, W)
    sim = sim.masked_fill(~seen.unsqueeze(2), float("-inf"))
    return stable_topk(sim, min(k, sim.shape[-1]))


# ---------------------------------------------------------------------------- the scan of a large bank
def scan_unit_keys(q: Tensor, unit: Tensor, split: int, k_first: int, k_rest: int, f_first: Tensor, f_rest: Tensor,
                   chunk: int = TOPK_CHUNK,
                   use_native: bool = True) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Top-k of two groups of queries against one bank of unit keys, reading the bank once.

    q: (Q, D) unit queries, rows ``:split`` the first group and ``split:`` the rest; unit: (N, D) unit
    (or zero) keys; f_first, f_rest: (N,) per-slot factors of each group's scores (a key shorter
    than full length scores in proportion to it; a group whose factors are all 0 or 1 is scored
    without them). Returns (scores, indices) of shapes (split, k_first) and (Q - split, k_rest),
    ties to the lowest index. With `use_native` the compiled scan of :mod:`memnet.native` answers
    when it can (one pass for both groups when they share k and need no factors, else one each);
    otherwise the bank is scored ``chunk`` slots at a time in torch and the per-chunk candidates
    merged (:func:`merge_candidates`).
    """
    shrunk = lambda f: f if bool(((f > 0) & (f < 1)).any()) else None
    if use_native:
        answers = _native_scan(q, unit, split, k_first, k_rest, shrunk(f_first), shrunk(f_rest))
        if answers is not None:
            return answers
    N = unit.shape[0]
    tops_a, idx_a, tops_b, idx_b = [], [], [], []
    for start in range(0, N, chunk):
        sim = q @ unit[start:start + chunk].T  # (Q, C), rows contiguous for top-k
        c = sim.shape[1]
        fa, fb = shrunk(f_first[start:start + c]), shrunk(f_rest[start:start + c])
        t, i = stable_topk(sim[:split] if fa is None else sim[:split] * fa, min(k_first, c))
        tops_a.append(t), idx_a.append(i + start)
        t, i = stable_topk(sim[split:] if fb is None else sim[split:] * fb, min(k_rest, c))
        tops_b.append(t), idx_b.append(i + start)
    return merge_candidates(tops_a, idx_a, k_first), merge_candidates(tops_b, idx_b, k_rest)


def _native_scan(q: Tensor, unit: Tensor, split: int, k_first: int, k_rest: int, f_first: Tensor | None,
                 f_rest: Tensor | None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """:func:`scan_unit_keys` by the compiled kernel: one pass over the bank when both groups share
    k and scale, else two; None when the kernel cannot answer."""
    if k_first == k_rest and f_first is None and f_rest is None:
        both = kernel.topk_rows(q, unit, k_first)
        return None if both is None else ((both[0][:split], both[1][:split]), (both[0][split:], both[1][split:]))
    a = kernel.topk_rows(q[:split], unit, k_first, f_first)
    b = None if a is None else kernel.topk_rows(q[split:], unit, k_rest, f_rest)
    return None if b is None else (a, b)


# ---------------------------------------------------------------------------- addresses -> rows
def flat_rows(index: Tensor, num_slots: int) -> Tensor:
    """Slot indices (B, ...) -> row indices (B * ...,) into the (B * num_slots, D) view of a bank."""
    B = index.shape[0]
    return (index.reshape(B, -1) + num_slots * torch.arange(B, device=index.device).unsqueeze(-1)).reshape(-1)


def gather_slots(slots: Tensor, index: Tensor) -> Tensor:
    """slots (B, N, D), index (B, Q, H, K) -> (B, Q, H, K, D)."""
    B, N, D = slots.shape
    return slots.reshape(B * N, D).index_select(0, flat_rows(index, N)).view(*index.shape, D)  # whole rows


def sparse_to_dense(index: Tensor, weight: Tensor, num_slots: int) -> Tensor:
    """Scatter (..., K) sparse addressing weights into (..., N) dense ones."""
    out = weight.new_zeros(*weight.shape[:-1], num_slots)
    return out.scatter_add(-1, index, weight)
