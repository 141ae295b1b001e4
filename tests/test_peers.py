"""The published peers (memnet.peers): the baselines' interface, causality, budget, state, learning."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

import memnet.peers as peers
from memnet.baselines import BaselineOutput, count_params, memnet_budget
from memnet.config import MemNetConfig
from memnet.encoder import ShiftedEmbedding
from memnet.peers import PEERS, DNCPeer, TitansPeer, available, memnet_state_bytes

CFG = MemNetConfig(vocab_size=32, d_model=32, num_slots=16, top_k=2, mem_heads=2, segment_len=8)
CFG2 = MemNetConfig(vocab_size=40, d_model=48, num_slots=24, top_k=3, mem_heads=3, segment_len=8, n_layers=1)
NAMES = sorted(PEERS)


@pytest.fixture(scope="module")
def built() -> dict:
    torch.manual_seed(0)
    return {name: PEERS[name](CFG).eval() for name in NAMES}


def test_packages_import():
    assert available() == {name: "" for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 5, 8, 13])  # below, at and past one segment (segment_len = 8)
def test_output_shape(built, name, T):
    out = built[name](torch.randint(0, CFG.vocab_size, (2, T)))
    assert isinstance(out, BaselineOutput)
    assert out.logits.shape == (2, T, CFG.vocab_size)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_causal(built, name):
    model, T = built[name], 21
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, CFG.vocab_size, (2, T), generator=g)
    with torch.no_grad():
        ref = model(tokens).logits
        for t in [0, 6, 7, 8, 12, 15, 16, 19]:  # inside segments and at their edges
            changed = tokens.clone()
            changed[:, t + 1:] = torch.randint(0, CFG.vocab_size, (2, T - t - 1), generator=g)
            out = model(changed).logits
            torch.testing.assert_close(out[:, :t + 1], ref[:, :t + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_memory_reaches_across_segments(built, name):
    """The first token changes the logits three segments later: something is carried."""
    tokens = torch.randint(0, CFG.vocab_size, (1, 30))
    changed = tokens.clone()
    changed[0, 0] = (tokens[0, 0] + 1) % CFG.vocab_size
    with torch.no_grad():
        diff = (built[name](tokens).logits[:, -1] - built[name](changed).logits[:, -1]).abs().max()
    assert diff > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_peer_reads_through_the_shared_shifted_embedding(built, name):
    """Every peer's only token embedding is a ShiftedEmbedding (the package's own is replaced), and it
    is what the logits are computed from."""
    model = built[name]
    shifted = [m for m in model.modules() if isinstance(m, ShiftedEmbedding)]
    assert len(shifted) == 1
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == CFG.vocab_size]
    assert tables == [shifted[0].tok]
    tokens = torch.randint(0, CFG.vocab_size, (1, 12))
    before = model(tokens).logits
    with torch.no_grad():
        shifted[0].shift.weight.add_(1.0)
    try:
        assert not torch.allclose(model(tokens).logits[:, 1:], before[:, 1:])  # the shift reaches the logits
    finally:
        with torch.no_grad():
            shifted[0].shift.weight.sub_(1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cfg", [CFG, CFG2], ids=["cfg", "cfg2"])
def test_parameter_budget(name, cfg):
    target = memnet_budget(cfg)
    assert abs(count_params(PEERS[name](cfg)) - target) <= 0.15 * target


@pytest.mark.parametrize("name", NAMES)
def test_bad_tokens_rejected(built, name):
    with pytest.raises(ValueError, match="tokens"):
        built[name](torch.tensor([[0, CFG.vocab_size]]))
    with pytest.raises(ValueError, match="tokens"):
        built[name](torch.tensor([0, 1]))


@pytest.mark.parametrize("name", NAMES)
def test_training_reduces_loss(name):
    torch.manual_seed(0)
    model = PEERS[name](CFG)
    tokens = torch.randint(0, CFG.vocab_size, (4, 12), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        logits = model(tokens).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, CFG.vocab_size), tokens[:, 1:].reshape(-1))

    first = loss().item()
    for _ in range(8):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.9 * first


def test_memnet_state_bytes_by_hand():
    N, D = CFG.num_slots, CFG.slot_dim
    # keys and values (N, D); age, usage, retained, evidence (N,); segments (1,): float32
    assert memnet_state_bytes(CFG) == 4 * (2 * N * D + 4 * N + 1)


def test_dnc_state_bytes():
    small, big = DNCPeer(CFG), DNCPeer(MemNetConfig(**{**CFG.to_dict(), "num_slots": 32}))
    assert 0 < small.state_bytes() < big.state_bytes()
    N, W, R, n, H = CFG.num_slots, CFG.slot_dim, CFG.mem_heads, CFG.n_layers, small.hidden
    # memory, link matrix, precedence, read weights, write weights, usage, read vectors, LSTM (h, c)
    assert small.state_bytes() == 4 * (N * W + N * N + N + R * N + N + N + R * W + 2 * n * H)


@pytest.mark.parametrize("name", NAMES)
def test_state_bytes_positive(built, name):
    assert built[name].state_bytes() > 0


def test_rmt_state_bytes(built):
    assert built["rmt"].state_bytes() == 4 * built["rmt"].num_memory_tokens * CFG.d_model


def test_titans_state_bytes_is_the_neural_memory_state(built):
    """What state_bytes counts is what the package's own neural-memory states hold after segments."""
    model: TitansPeer = built["titans"]
    with torch.no_grad():
        _, (_, _, mem_states) = model.mac(torch.randint(0, CFG.vocab_size, (1, 2 * CFG.segment_len)), return_cache=True)
    held = sum(t.numel() * t.element_size() for s in mem_states for td in s.states for t in td.values())
    assert model.state_bytes() == held


def test_missing_package_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dnc", None)  # makes `import dnc` fail
    assert "dnc" in available()["dnc"]  # the import error's text
    with pytest.raises(ImportError, match=r"dnc==1\.1\.0.*memnet\[peers\]"):
        DNCPeer(CFG)


def test_module_imports_without_the_packages(monkeypatch):
    for module, _ in peers._PACKAGES.values():
        monkeypatch.setitem(sys.modules, module, None)
    spec = importlib.util.spec_from_file_location("memnet._peers_copy", peers.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)  # must not import any peer package
    assert all(copy.available().values())


BIG = MemNetConfig(vocab_size=512, d_model=64, num_slots=32, top_k=4, mem_heads=4, segment_len=32)


@pytest.mark.parametrize("cfg", [CFG, BIG], ids=["cfg", "big"])
def test_titans_finite_on_long_sequences(cfg):
    """Regression: with the package's default step size (max lr 1.0) the neural memory's test-time
    gradient descent diverged geometrically from segment to segment, NaN from ~10 segments on
    (T >= 384 at BIG). Well past that, the logits stay finite."""
    torch.manual_seed(0)
    model = TitansPeer(cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for T in (512, 1100):
            logits = model(torch.randint(0, cfg.vocab_size, (1, T), generator=g)).logits
            assert logits.shape == (1, T, cfg.vocab_size)
            assert torch.isfinite(logits).all(), f"non-finite logits at T={T}"


def test_titans_training_on_long_sequences_stays_finite():
    torch.manual_seed(0)
    model = TitansPeer(BIG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        tokens = torch.randint(0, BIG.vocab_size, (2, 400), generator=g)
        logits = model(tokens).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, BIG.vocab_size), tokens[:, 1:].reshape(-1))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
