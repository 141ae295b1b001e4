"""MemNetConfig: defaults, derived fields and the to_dict/from_dict round trip.

Invalid values are in test_inputs.py (the bad-input catalog)."""
import dataclasses
import json

from hypothesis import given, strategies as st

from helpers import small_configs, tiny_cfg
from memnet import MemNetConfig


def test_defaults_and_derived_fields():
    cfg = MemNetConfig(vocab_size=7)
    assert (cfg.d_model, cfg.num_slots, cfg.top_k, cfg.mem_heads, cfg.segment_len) == (64, 64, 4, 4, 32)
    assert cfg.slot_dim == 64  # defaults to d_model
    assert cfg.bottleneck_dim == 32  # defaults to d_model // 2
    assert cfg.writes == 32  # every token of the window writes
    assert cfg.extra == {}


def test_explicit_dims_are_kept():
    cfg = tiny_cfg(slot_dim=6, bottleneck_dim=3)
    assert cfg.slot_dim == 6 and cfg.bottleneck_dim == 3


def test_bottleneck_dim_never_zero():
    assert tiny_cfg(d_model=1, n_heads=1).bottleneck_dim == 1


def test_writes_property():
    assert tiny_cfg(segment_len=4).writes == 4
    assert tiny_cfg(segment_len=4, writes_per_segment=2).writes == 2
    assert tiny_cfg(segment_len=4, writes_per_segment=9).writes == 4  # capped by the window


def test_extra_is_not_shared_between_instances():
    a, b = MemNetConfig(vocab_size=5), MemNetConfig(vocab_size=5)
    a.extra["x"] = 1
    assert b.extra == {}


@given(small_configs(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_to_dict_from_dict_round_trip(cfg, extra):
    cfg.extra.update(extra)
    d = cfg.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(MemNetConfig)}
    again = MemNetConfig.from_dict(d)
    assert again == cfg
    # JSON-ready, and the JSON round trip gives the same config
    assert MemNetConfig.from_dict(json.loads(json.dumps(d))) == cfg
    # to_dict is a copy: editing it does not touch the config
    d["extra"]["__new__"] = 1
    assert "__new__" not in cfg.extra


def test_from_dict_minimal():
    assert MemNetConfig.from_dict({"vocab_size": 9}) == MemNetConfig(vocab_size=9)


def test_int_valued_floats_accepted():
    cfg = tiny_cfg(dropout=0, decay_init=3, write_threshold=1)
    assert cfg.dropout == 0 and cfg.decay_init == 3


def test_decay_mode_default_and_validation():
    import pytest

    assert tiny_cfg().decay_mode == "learned"
    for mode in ("learned", "fixed", "none"):
        assert MemNetConfig.from_dict(tiny_cfg(decay_mode=mode).to_dict()).decay_mode == mode
    for bad in ("Learned", "", None, 1):
        with pytest.raises(ValueError, match="decay_mode"):
            tiny_cfg(decay_mode=bad)


def test_write_tokens_default_validation_and_json_round_trip():
    import pytest

    assert tiny_cfg().write_tokens is None
    cfg = tiny_cfg(write_tokens=[3, 7])  # a list (as JSON gives it back) is kept as a tuple
    assert cfg.write_tokens == (3, 7)
    assert MemNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert tiny_cfg(write_tokens=(0, tiny_cfg().vocab_size)).write_tokens == (0, 20)
    for bad in ((5, 5), (6, 2), (-1, 3), (0, 21), (1.0, 3), (True, 3), (1, 2, 3), "0:3", 4):
        with pytest.raises(ValueError, match="write_tokens"):
            tiny_cfg(write_tokens=bad)
