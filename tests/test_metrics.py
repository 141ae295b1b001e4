"""Memory metrics against hand-computed traces, and accuracy by distance."""
import math

import pytest
import torch

from memnet.metrics import accuracy_by_distance, read_sparsity, slot_reuse
from memnet.trace import MemoryTrace


def trace_with(events, read_weight=None):
    """A MemoryTrace with the given (B, S, N) events; other fields filled to fit."""
    ev = torch.tensor(events, dtype=torch.bool)
    B, S, N = ev.shape
    L, H, K = 2, 1, 2
    rw = torch.full((B, S, L, H, K), 0.5) if read_weight is None else read_weight
    z = torch.zeros(B, S, N)
    zw = torch.zeros(B, S, 1)
    return MemoryTrace(read_index=torch.zeros(B, S, L, H, K, dtype=torch.long).add_(torch.arange(K)), read_weight=rw,
                       valid=torch.ones(B, S, L, dtype=torch.bool), write_pos=zw.long(), write_gate=zw,
                       write_update=zw, write_erase=zw, write_alloc=zw.long(), write_strength=ev.float(),
                       write_events=ev, retention=z + 1, age=z, usage=z)


def test_slot_reuse_hand_computed():
    # one sequence, 3 segments, 4 slots: slot 0 written at t0 and t2 (one overwrite), slot 1 at t1
    tr = trace_with([[[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]])
    m = slot_reuse(tr)
    assert m["events_per_segment"] == pytest.approx(1.0)
    assert m["distinct_slots"] == pytest.approx(2.0)
    assert m["reuse_rate"] == pytest.approx(1 / 3)
    assert m["overwrites_per_segment"] == pytest.approx(1 / 3)


def test_slot_reuse_without_events_is_zero():
    m = slot_reuse(trace_with([[[0, 0], [0, 0]]]))
    assert m["events_per_segment"] == 0 and m["reuse_rate"] == 0 and m["distinct_slots"] == 0


def test_read_sparsity_uniform_and_one_hot():
    events = [[[0, 0], [0, 0]]]
    uni = read_sparsity(trace_with(events))
    assert uni["entropy"] == pytest.approx(math.log(2), abs=1e-6)
    assert uni["effective_slots"] == pytest.approx(2.0, abs=1e-5)
    one = torch.zeros(1, 2, 2, 1, 2)
    one[..., 0] = 1.0
    hot = read_sparsity(trace_with(events, one))
    assert hot["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert hot["top1_mass"] == pytest.approx(1.0)


def test_accuracy_by_distance_counts_only_queries():
    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 2] = 1  # predicts 2 at position 1 (correct)
    logits[0, 3, 0] = 1  # predicts 0 at position 3 (target 1: wrong)
    targets = torch.tensor([[-100, 2, -100, 1]])
    distance = torch.tensor([[0, 5, 0, 9]])
    assert accuracy_by_distance(logits, targets, distance) == {5: (1, 1), 9: (0, 1)}
