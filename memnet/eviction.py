"""Eviction policies replayed on a `ReuseStream` schedule: what a slot memory could hold at all.

A memory of ``num_slots`` slots that writes every item of a :class:`~memnet.tasks.ReuseStream`
must let go of one item for each write once it is full. Which item goes is the whole of what
forgetting decides, so replaying a schedule under a rule, with no network, gives the fraction of
queries whose item is still held when it is asked for: the ceiling of any model whose memory
follows that rule (a model must also find and read the item). The rules:

* ``"lru"``: the item written longest ago goes (what age-based decay with faded-first allocation
  does, whatever its rate);
* ``"evidence"``: re-use predicts re-use. An item that has been asked for once is kept ahead of
  every item not asked for by ``grace`` windows after its write; among the rest the
  oldest goes. It sees only what reads reveal, never an item's type;
* ``"distractors_first"``: an oracle that knows the types and lets the never-asked items go first,
  then the oldest;
* ``"belady"``: Belady's rule (Belady 1966), an oracle that sees the schedule: the item whose next
  query is farthest away (never, first) goes. It is optimal for a cache that fetches again what it
  misses; here an item let go is never written again, so it is a strong oracle, not a proven bound.

Timing follows the memory step: a window's queries read before its items are written, and a
window writes all its items at once, so they never evict each other (``items_per_window <=
num_slots``). Ties go to the item written first.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

POLICIES = ("lru", "evidence", "distractors_first", "belady")
NEVER = np.iinfo(np.int64).max  # the next query of an item never asked again
FIELDS = ("tokens", "kind", "item_type", "item_pos", "cue_pos", "recall_pos")  # what is read of a batch
KINDS = {"cue": 1, "recall": 2}  # ReuseBatch.kind codes (memnet.tasks.reuse.QUERY_KINDS)
DISTRACTOR = 1  # ReuseBatch.item_type code of an item never asked for


def _check(batch, segment_len: int, num_slots: int, policy: str, grace: int) -> None:
    missing = [f for f in FIELDS if not isinstance(getattr(batch, f, None), Tensor)]
    if missing:
        raise TypeError(f"batch must be a ReuseBatch (ReuseStream.sample), got {type(batch).__name__} "
                        f"without {', '.join(missing)}")
    for name, v in (("segment_len", segment_len), ("num_slots", num_slots), ("grace", grace)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "grace" else 1):
            raise ValueError(f"{name} must be an int >= {0 if name == 'grace' else 1}, got {v!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if batch.tokens.shape[1] % segment_len:
        raise ValueError(f"segment_len ({segment_len}) must divide the sequence length ({batch.tokens.shape[1]})")
    per_window = np.bincount(batch.item_pos[0].numpy() // segment_len)
    if per_window.size and per_window.max() > num_slots:
        raise ValueError(f"num_slots ({num_slots}) must be >= the items written per window ({per_window.max()})")


def held_at_queries(batch, segment_len: int, num_slots: int, policy: str, grace: int = 2) -> Tensor:
    """(B, T) bool: True at each cue and recall whose item the memory still holds under `policy`
    (see the module's docstring), False at every other position. `grace` (windows) is used by
    ``"evidence"`` only."""
    return torch.from_numpy(_replay(batch, segment_len, num_slots, policy, grace)[0])


def replay_lifetimes(batch, segment_len: int, num_slots: int, policy: str, grace: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """How long each item is held under `policy`: (duration, observed), both (B, M). duration: windows
    from the item's write to the write that lets it go (it is read for the last time at that window),
    or to the end of the sequence when it is still held there (observed False), as
    :func:`memnet.lifetimes.item_lifetimes` counts a model's items."""
    _, gone = _replay(batch, segment_len, num_slots, policy, grace)
    written = batch.item_pos.numpy() // segment_len
    n_windows = batch.tokens.shape[1] // segment_len
    observed = gone >= 0
    return np.where(observed, gone, n_windows) - written, observed


def _replay(batch, segment_len: int, num_slots: int, policy: str, grace: int) -> tuple[np.ndarray, np.ndarray]:
    """(held (B, T) bool at the queries, gone (B, M) int: the window whose writes let each item go, -1: never)."""
    _check(batch, segment_len, num_slots, policy, grace)
    item_pos, cue_pos, recall_pos = (t.numpy() for t in (batch.item_pos, batch.cue_pos, batch.recall_pos))
    never_asked = batch.item_type.numpy() == DISTRACTOR
    B, M = item_pos.shape
    written = item_pos // segment_len  # (B, M) window of each item's write
    held = np.zeros(batch.tokens.shape, dtype=bool)
    gone = np.full((B, M), -1, dtype=np.int64)
    n_windows = batch.tokens.shape[1] // segment_len
    for b in range(B):
        queries = sorted((int(p), m) for m in range(M) for p in (cue_pos[b, m], recall_pos[b, m]) if p >= 0)
        times = {m: sorted(int(p) // segment_len for p in (cue_pos[b, m], recall_pos[b, m]) if p >= 0) for m in range(M)}
        kept: list[int] = []  # items held, in write order
        asked: set[int] = set()
        q = 0
        for w in range(n_windows):
            while q < len(queries) and queries[q][0] // segment_len == w:  # the window's reads
                p, m = queries[q]
                held[b, p] = m in kept
                if held[b, p]:
                    asked.add(m)
                q += 1
            for m in np.flatnonzero(written[b] == w):  # then its writes
                if len(kept) >= num_slots:
                    old = [k for k in kept if written[b, k] < w]  # a window's writes never take each other's slots
                    victim = _victim(policy, old, w, written[b], asked, never_asked[b], times, grace)
                    kept.remove(victim)
                    gone[b, victim] = w
                kept.append(int(m))
    return held, gone


def _victim(policy: str, kept: list[int], w: int, written: np.ndarray, asked: set[int], never_asked: np.ndarray,
            times: dict[int, list[int]], grace: int) -> int:
    """The item `policy` lets go of at window `w`, among `kept` (write order: the first is oldest)."""
    if policy == "lru":
        return kept[0]
    if policy == "evidence":  # unasked beyond its grace first, then the oldest
        late = [m for m in kept if m not in asked and w - written[m] >= grace]
        return late[0] if late else kept[0]
    if policy == "distractors_first":
        gone = [m for m in kept if never_asked[m]]
        return gone[0] if gone else kept[0]
    nxt = [next((t for t in times[m] if t >= w), NEVER) for m in kept]  # belady
    return kept[int(np.argmax(nxt))]


def held_fraction(batch, held: Tensor) -> dict[str, float]:
    """Fraction of cues and of recalls whose item was held, from :func:`held_at_queries`' `held`
    (NaN for a kind the batch never asks)."""
    if held.shape != batch.kind.shape or held.dtype != torch.bool:
        raise ValueError(f"held must be a bool tensor of shape {tuple(batch.kind.shape)}, got "
                         f"{held.dtype} {tuple(held.shape)}")
    out = {}
    for kind, code in KINDS.items():
        at = batch.kind == code
        out[kind] = float(held[at].float().mean()) if bool(at.any()) else float("nan")
    return out
