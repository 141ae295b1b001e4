"""The bad-input catalog: every rejected call raises ValueError/TypeError naming the argument,
and a memory state passed to a rejected call comes back untouched."""
import math

import pytest
import torch

from helpers import V, rand_tokens, states_equal, tiny_cfg
from memnet import MemNet, MemNetConfig, MemoryState, MultiHeadMemoryBank
from memnet.baselines import FullTransformer, LSTMBaseline, WindowedTransformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MemNet(tiny_cfg(num_slots=16, slot_dim=8, segment_len=4)).eval()


@pytest.fixture
def memory(model):
    """A real (non-empty) state for batch size 2."""
    with torch.no_grad():
        return model(rand_tokens(2, 10, seed=7)).memory


# ------------------------------------------------------------------ tokens
BAD_TOKENS = [
    ("float", lambda: torch.zeros(2, 5), TypeError, r"tokens.*integer.*float32"),
    ("float64 ids", lambda: torch.ones(2, 5, dtype=torch.float64), TypeError, "tokens"),
    ("bool", lambda: torch.ones(2, 5, dtype=torch.bool), TypeError, r"tokens.*torch.bool"),
    ("complex", lambda: torch.zeros(2, 5, dtype=torch.complex64), TypeError, "tokens"),
    ("negative id", lambda: torch.tensor([[0, 1, -1, 2, 3]] * 2), ValueError, r"tokens.*vocab_size=20.*-1"),
    ("id == vocab_size", lambda: torch.tensor([[0, 1, V, 2, 3]] * 2), ValueError, r"tokens.*\[0, vocab_size=20\)"),
    ("id >> vocab_size", lambda: torch.full((2, 5), 10_000), ValueError, "tokens.*vocab_size"),
    ("1-D", lambda: torch.zeros(5, dtype=torch.long), ValueError, r"tokens.*\(B, T\)"),
    ("3-D", lambda: torch.zeros(2, 5, 1, dtype=torch.long), ValueError, r"tokens.*\(B, T\)"),
    ("0-D", lambda: torch.tensor(3), ValueError, "tokens"),
    ("T = 0", lambda: torch.zeros(2, 0, dtype=torch.long), ValueError, "tokens.*T >= 1"),
    ("B = 0", lambda: torch.zeros(0, 5, dtype=torch.long), ValueError, "tokens.*B >= 1"),
    ("list", lambda: [[1, 2, 3], [4, 5, 6]], TypeError, r"tokens.*torch.Tensor.*list"),
    ("numpy-like tuple", lambda: (1, 2, 3), TypeError, "tokens"),
    ("None", lambda: None, TypeError, "tokens"),
]


@pytest.mark.parametrize("make, exc, match", [c[1:] for c in BAD_TOKENS], ids=[c[0] for c in BAD_TOKENS])
def test_bad_tokens_rejected(model, memory, make, exc, match):
    with pytest.raises(exc, match=match):
        model(make())
    before = memory.clone()
    with pytest.raises(exc, match=match):
        model(make(), memory=memory)
    assert states_equal(memory, before)


@pytest.mark.parametrize("cls", [WindowedTransformer, LSTMBaseline, FullTransformer])
@pytest.mark.parametrize("make, exc, match", [c[1:] for c in BAD_TOKENS], ids=[c[0] for c in BAD_TOKENS])
def test_bad_tokens_rejected_by_baselines(cls, make, exc, match):
    with pytest.raises(exc, match=match):
        cls(tiny_cfg())(make())


def test_good_token_dtypes_accepted(model):
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        assert model(torch.full((1, 3), V - 1, dtype=dtype)).logits.shape == (1, 3, V)


# ------------------------------------------------------------------ memory states
def _other_model_state(**kw):
    torch.manual_seed(1)
    return MemNet(tiny_cfg(**kw)).initial_state(2)


def _replace(m: MemoryState, **kw) -> MemoryState:
    d = dict(keys=m.keys, values=m.values, age=m.age, usage=m.usage)
    d.update(kw)
    return MemoryState(**d)


def _with_nan(m, field):
    t = getattr(m, field).clone()
    t.view(-1)[3] = float("nan")
    return _replace(m, **{field: t})


BAD_MEMORY = [
    ("other batch size", lambda m: MemNet(tiny_cfg(num_slots=16, slot_dim=8, segment_len=4)).initial_state(3),
     ValueError, r"memory.*batch size 3.*batch size 2"),
    ("batch 1 for batch 2", lambda m: _replace(m, keys=m.keys[:1], values=m.values[:1], age=m.age[:1], usage=m.usage[:1]),
     ValueError, "memory.*batch size"),
    ("other num_slots", lambda m: _other_model_state(num_slots=12, slot_dim=8, segment_len=4),
     ValueError, r"memory\.keys.*num_slots=16"),
    ("other slot_dim", lambda m: _other_model_state(num_slots=16, slot_dim=4, segment_len=4),
     ValueError, r"memory\.keys.*slot_dim=8"),
    ("NaN in keys", lambda m: _with_nan(m, "keys"), ValueError, r"memory\.keys.*NaN"),
    ("NaN in values", lambda m: _with_nan(m, "values"), ValueError, r"memory\.values.*NaN"),
    ("NaN in usage", lambda m: _with_nan(m, "usage"), ValueError, r"memory\.usage.*NaN"),
    ("inf in age", lambda m: _replace(m, age=m.age + float("inf")), ValueError, r"memory\.age.*inf"),
    ("values of another batch", lambda m: _replace(m, values=m.values[:1]), ValueError, r"memory\.values"),
    ("1-D age", lambda m: _replace(m, age=m.age[:, 0]), ValueError, r"memory\.age.*shape"),
    ("0-D usage", lambda m: _replace(m, usage=m.usage[0, 0]), ValueError, r"memory\.usage.*shape"),
    ("age with wrong slot count", lambda m: _replace(m, age=m.age[:, :5]), ValueError, r"memory\.age"),
    ("integer age", lambda m: _replace(m, age=m.age.long()), TypeError, r"memory\.age.*float32"),
    ("float64 keys", lambda m: m.to(torch.float64), TypeError, r"memory\.keys.*float32"),
    ("negative age", lambda m: _replace(m, age=m.age - 100), ValueError, r"memory\.age.*>= 0"),
    ("usage above 1", lambda m: _replace(m, usage=m.usage + 2), ValueError, r"memory\.usage.*\[0, 1\]"),
    ("keys as a list", lambda m: _replace(m, keys=m.keys.tolist()), TypeError, r"memory\.keys.*Tensor"),
    ("a dict", lambda m: dict(keys=m.keys, values=m.values, age=m.age, usage=m.usage), TypeError,
     "memory must be a MemoryState.*dict"),
    ("a tuple of tensors", lambda m: (m.keys, m.values, m.age, m.usage), TypeError, "memory must be a MemoryState"),
    ("a tensor", lambda m: m.keys, TypeError, "memory must be a MemoryState"),
]


def _tensors(x) -> list:
    """Copies of every tensor inside what was passed as `memory` (a state, dict, tuple, tensor)."""
    if isinstance(x, MemoryState):
        x = [x.keys, x.values, x.age, x.usage]
    elif isinstance(x, dict):
        x = list(x.values())
    elif isinstance(x, torch.Tensor):
        x = [x]
    return [t.clone() if isinstance(t, torch.Tensor) else torch.tensor(t) for t in x]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x.nan_to_num(), y.nan_to_num()) and
                                    torch.equal(x.isnan(), y.isnan()) for x, y in zip(a, b))


@pytest.mark.parametrize("make, exc, match", [c[1:] for c in BAD_MEMORY], ids=[c[0] for c in BAD_MEMORY])
def test_bad_memory_rejected_and_left_untouched(model, memory, make, exc, match):
    bad = make(memory)
    bad_before, memory_before = _tensors(bad), memory.clone()
    with pytest.raises(exc, match=match):
        model(rand_tokens(2, 6), memory=bad)
    assert _same(_tensors(bad), bad_before), "the rejected state was modified"
    assert states_equal(memory, memory_before)
    # the model still works with a good state after the rejected call
    assert torch.isfinite(model(rand_tokens(2, 6), memory=memory).logits).all()


def test_same_helper_detects_changes():
    a = [torch.tensor([1.0, float("nan")])]
    assert _same(a, [a[0].clone()])
    assert not _same(a, [torch.tensor([2.0, float("nan")])])
    assert not _same(a, [torch.tensor([1.0, 0.0])])


def test_rejected_call_after_valid_call_keeps_result_state(model, memory):
    """A call that fails on its tokens must not corrupt a state used before and after."""
    x = rand_tokens(2, 8, seed=3)
    with torch.no_grad():
        ref = model(x, memory=memory).logits
        with pytest.raises(ValueError, match="tokens"):
            model(torch.full((2, 8), -3), memory=memory)
        again = model(x, memory=memory).logits
    assert torch.equal(ref, again)


def test_initial_state_batch_size_validation(model):
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="batch_size"):
            model.initial_state(bad)


def test_memnet_needs_a_config():
    with pytest.raises(TypeError, match="cfg must be a MemNetConfig"):
        MemNet({"vocab_size": 10})


# ------------------------------------------------------------------ config values
INT_FIELDS = ["vocab_size", "d_model", "num_slots", "top_k", "mem_heads", "segment_len", "n_layers", "n_heads",
              "mlp_ratio"]


def _cfg_kwargs(**kw):
    base = dict(vocab_size=V, d_model=16, num_slots=16, top_k=2, mem_heads=2, segment_len=4, n_heads=2)
    base.update(kw)
    return base


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_config_nonpositive_int(field, value):
    with pytest.raises(ValueError, match=rf"MemNetConfig\.{field} must be >= 1"):
        MemNetConfig(**_cfg_kwargs(**{field: value}))


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [True, 4.0, "4", None])
def test_config_non_int(field, value):
    with pytest.raises(TypeError, match=rf"MemNetConfig\.{field} must be an int"):
        MemNetConfig(**_cfg_kwargs(**{field: value}))


@pytest.mark.parametrize("field", ["slot_dim", "bottleneck_dim", "writes_per_segment"])
@pytest.mark.parametrize("value", [0, -2, True, 2.0])
def test_config_optional_int(field, value):
    with pytest.raises((ValueError, TypeError), match=rf"MemNetConfig\.{field}"):
        MemNetConfig(**_cfg_kwargs(**{field: value}))


CONFIG_CASES = [
    ("top_k > num_slots", dict(top_k=17), ValueError, r"top_k \(17\).*num_slots \(16\)"),
    ("d_model % n_heads", dict(d_model=18, n_heads=4), ValueError, r"d_model \(18\).*n_heads \(4\)"),
    ("dropout 1.0", dict(dropout=1.0), ValueError, "dropout"),
    ("dropout < 0", dict(dropout=-0.1), ValueError, "dropout"),
    ("dropout nan", dict(dropout=float("nan")), ValueError, "dropout"),
    ("dropout bool", dict(dropout=False), TypeError, "dropout"),
    ("dropout str", dict(dropout="0.1"), TypeError, "dropout"),
    ("write_threshold > 1", dict(write_threshold=1.5), ValueError, "write_threshold"),
    ("write_threshold nan", dict(write_threshold=float("nan")), ValueError, "write_threshold"),
    ("usage_decay < 0", dict(usage_decay=-0.5), ValueError, "usage_decay"),
    ("usage_decay inf", dict(usage_decay=float("inf")), ValueError, "usage_decay"),
    ("decay_init nan", dict(decay_init=float("nan")), ValueError, "decay_init.*finite"),
    ("decay_init -inf", dict(decay_init=float("-inf")), ValueError, "decay_init.*finite"),
    ("sharpness_init inf", dict(sharpness_init=float("inf")), ValueError, "sharpness_init"),
    ("sharpness_init 0", dict(sharpness_init=0.0), ValueError, "sharpness_init.*> 0"),
    ("util_weight nan", dict(util_weight=float("nan")), ValueError, "util_weight"),
    ("util_weight < 0", dict(util_weight=-1.0), ValueError, "util_weight.*>= 0"),
    ("pressure_weight inf", dict(pressure_weight=math.inf), ValueError, "pressure_weight"),
    ("read_entropy_weight < 0", dict(read_entropy_weight=-0.1), ValueError, "read_entropy_weight"),
    ("eps 0", dict(eps=0.0), ValueError, "eps.*> 0"),
    ("eps nan", dict(eps=float("nan")), ValueError, "eps"),
    ("eps bool", dict(eps=True), TypeError, "eps"),
    ("every token writes, too few slots", dict(num_slots=8, top_k=2, segment_len=12), ValueError,
     r"segment_len.*\(12\).*num_slots \(8\)"),
    ("writes_per_segment > num_slots", dict(num_slots=4, top_k=2, segment_len=8, writes_per_segment=6), ValueError,
     r"writes_per_segment \(6\).*num_slots \(4\)"),
    ("write_tokens empty range", dict(write_tokens=(3, 3)), ValueError, r"write_tokens.*0 <= lo < hi"),
    ("write_tokens past the vocabulary", dict(write_tokens=(0, 10_000)), ValueError, r"write_tokens.*vocab_size"),
    ("write_tokens not a pair", dict(write_tokens=5), ValueError, "write_tokens"),
]


@pytest.mark.parametrize("kw, exc, match", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        MemNetConfig(**_cfg_kwargs(**kw))


BOUNDARY_CONFIGS = [
    ("top_k = num_slots = segment_len, zero decay and weights",
     dict(top_k=16, num_slots=16, segment_len=16, dropout=0.0, write_threshold=1.0, usage_decay=0.0,
          util_weight=0.0)),
    ("writes_per_segment = num_slots", dict(num_slots=4, top_k=2, segment_len=8, writes_per_segment=4)),
    ("one of everything", dict(d_model=2, n_heads=1, num_slots=1, top_k=1, mem_heads=1, segment_len=1, mlp_ratio=1,
                               slot_dim=1, bottleneck_dim=1, write_key_shift=0, segment_codes=0)),
    ("write_tokens the whole vocabulary", dict(write_tokens=(0, V), usage_decay=1.0, write_threshold=0.0)),
]


@pytest.mark.parametrize("kw", [c[1] for c in BOUNDARY_CONFIGS], ids=[c[0] for c in BOUNDARY_CONFIGS])
def test_config_boundaries_accepted(kw):
    """The edges of the valid ranges are valid: the config keeps the values, and the model it builds
    gives finite logits of shape (B, T, vocab_size) and finite auxiliary losses, over several windows."""
    cfg = MemNetConfig(**_cfg_kwargs(**kw))
    assert all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v) for k, v in kw.items())
    torch.manual_seed(0)
    model = MemNet(cfg).eval()
    T = 3 * cfg.segment_len + 1  # several windows and a partial last one
    with torch.no_grad():
        out = model(rand_tokens(2, T, seed=5))
    assert out.logits.shape == (2, T, V)
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(v).all() for v in out.aux_losses.values())


def test_from_dict_rejects_unknown_key():
    d = tiny_cfg().to_dict()
    d["num_slot"] = 8  # a typo
    with pytest.raises(ValueError, match=r"unknown.*num_slot"):
        MemNetConfig.from_dict(d)


def test_from_dict_validates_values():
    d = tiny_cfg().to_dict()
    d["top_k"] = 99
    with pytest.raises(ValueError, match="top_k"):
        MemNetConfig.from_dict(d)


def test_memory_bank_check_state_direct():
    cfg = tiny_cfg(num_slots=8)
    bank = MultiHeadMemoryBank(cfg)
    s = bank.initial_state(2)
    assert bank.check_state(s, 2) is s
    with pytest.raises(ValueError, match="state.*batch size"):
        bank.check_state(s, 3, name="state")
