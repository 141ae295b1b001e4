"""Baselines: output shape for any T, matched parameter budget, and what each one can see."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import examples, V, rand_tokens, tiny_cfg
from memnet import MemNet, MemNetConfig
from memnet.baselines import (BaselineOutput, FullTransformer, LSTMBaseline, WindowedTransformer,
                              count_params, memnet_budget)

BASELINES = [WindowedTransformer, LSTMBaseline, FullTransformer]

CONFIGS = [
    tiny_cfg(),
    MemNetConfig(vocab_size=30, d_model=32, num_slots=32, top_k=4, mem_heads=4, segment_len=8, n_layers=2, n_heads=4),
    MemNetConfig(vocab_size=20, d_model=24, num_slots=8, top_k=1, mem_heads=1, segment_len=8, n_heads=3,
                 n_layers=3, slot_dim=12, bottleneck_dim=5, writes_per_segment=2),
]


@pytest.mark.parametrize("cls", BASELINES)
@settings(max_examples=examples(10))
@given(T=st.integers(1, 21), B=st.integers(1, 3))
def test_logits_shape_for_any_length(cls, T, B):
    torch.manual_seed(0)
    model = cls(tiny_cfg(segment_len=4)).eval()
    out = model(rand_tokens(B, T, seed=T))
    assert isinstance(out, BaselineOutput)
    assert out.logits.shape == (B, T, V)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["tiny", "d32", "d24-slot12"])
def test_parameter_budget_within_10_percent(cfg):
    budget = count_params(MemNet(cfg))
    assert memnet_budget(cfg) == budget
    for cls in BASELINES:
        n = count_params(cls(cfg))
        assert abs(n - budget) <= 0.10 * budget, f"{cls.__name__}: {n} vs MemNet {budget}"


def test_count_params_counts_trainable_only():
    m = torch.nn.Linear(3, 2)
    assert count_params(m) == 8
    m.bias.requires_grad_(False)
    assert count_params(m) == 6


def _changed_positions(model, x, pos):
    x2 = x.clone()
    x2[:, pos] = (x2[:, pos] + 1) % V
    with torch.no_grad():
        return (model(x).logits - model(x2).logits).abs().amax(-1)  # (B, T)


def test_windowed_transformer_never_sees_past_its_window():
    L = 4
    torch.manual_seed(0)
    model = WindowedTransformer(tiny_cfg(segment_len=L)).eval()
    x = rand_tokens(2, 3 * L)
    for pos in range(L):  # any token of window 0
        d = _changed_positions(model, x, pos)
        assert (d[:, L:] == 0).all(), f"window 1+ saw token {pos} of window 0"
        assert (d[:, :pos] == 0).all()  # causal inside the window
        assert (d[:, pos] > 0).all()


def test_full_transformer_sees_the_whole_past():
    L = 4
    torch.manual_seed(0)
    model = FullTransformer(tiny_cfg(segment_len=L)).eval()
    x = rand_tokens(2, 3 * L)
    d = _changed_positions(model, x, 1)
    assert (d[:, L:] > 0).all(), "FullTransformer should see window 0 from window 1"
    assert (d[:, :1] == 0).all()  # but not the future


def test_lstm_sees_the_past_not_the_future():
    torch.manual_seed(0)
    model = LSTMBaseline(tiny_cfg(segment_len=4)).eval()
    d = _changed_positions(model, rand_tokens(2, 12), 5)
    assert (d[:, :5] == 0).all() and (d[:, 5:] > 0).all()


def test_memnet_sees_past_windows_only_through_memory():
    """MemNet, unlike WindowedTransformer, does see window 0 from window 1 (via memory)."""
    L = 4
    model = MemNet(tiny_cfg(segment_len=L)).eval()
    d = _changed_positions(model, rand_tokens(2, 3 * L), 1)
    assert (d[:, :1] == 0).all()
    assert (d[:, L:] > 0).any()


@pytest.mark.parametrize("cls", BASELINES)
def test_baselines_reject_bad_tokens(cls):
    model = cls(tiny_cfg())
    with pytest.raises(ValueError, match="tokens"):
        model(torch.full((1, 3), V))
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(1, 3))


@pytest.mark.parametrize("cls", BASELINES)
def test_baselines_train(cls):
    torch.manual_seed(0)
    model = cls(tiny_cfg())
    x = rand_tokens(2, 9)
    loss = torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, V), x.reshape(-1))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
