"""Faults around the model: a corrupt cached kernel, bad arguments to truncated_backward, memory
states from another config or out of range, config values that overflow float32, and a fuzz over
MemNet's inputs. A rejected call raises TypeError/ValueError naming the argument and leaves the
model (parameters, buffers, .grad), the RNGs and the memory state as they were."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from helpers import V, assert_unchanged, examples, rand_tokens, small_configs, snapshot, tiny_cfg, tiny_model
from memnet import MemNet, MemNetConfig, MemoryState, StreamingMemory
from memnet.config import FLOAT32_MAX, FLOAT32_TINY, LOSS_WEIGHT_MAX, MEMORY_FIELDS, NORM_FLOOR_MIN
from memnet.memory import COUNT_MAX, STATE_MAX_ABS, TENSOR_FIELDS
from memnet.metrics import IGNORE_INDEX
from memnet.model import truncated_backward

REPO = Path(__file__).resolve().parents[1]
bad_input = pytest.mark.bad_input


def cases(table: list[tuple]) -> list:
    """pytest.param of each row (id first), marked bad_input: one collected test per bad input."""
    return [pytest.param(*row[1:], id=row[0], marks=bad_input) for row in table]


# ------------------------------------------------------------------ 1. the cached native library
CHILD = """
import torch
from memnet import MemNet, MemNetConfig, native
torch.manual_seed(0)
cfg = MemNetConfig(vocab_size=20, d_model=16, num_slots=16, top_k=2, mem_heads=2, segment_len=4, n_layers=1,
                   n_heads=2, mlp_ratio=2)
with torch.no_grad():
    out = MemNet(cfg).eval()(torch.randint(0, 20, (2, 9)))
print("status:", native.status())
print("finite:", bool(torch.isfinite(out.logits).all()))
"""


def run_child(cache: Path, **env: str) -> subprocess.CompletedProcess:
    """A forward of a tiny MemNet in a fresh interpreter with the kernel cached in `cache` (a crash
    there, SIGBUS included, is the child's exit code, not this test's)."""
    full = {**os.environ, "MEMNET_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MEMNET_NATIVE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-c", CHILD], env=full, capture_output=True, text=True, timeout=120,
                          cwd=REPO)


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache folder holding a freshly built kernel (skips where no C compiler builds one)."""
    cache = tmp_path_factory.mktemp("kernel")
    run = run_child(cache)
    assert run.returncode == 0, run.stderr[-2000:]
    if "status: native" not in run.stdout:
        pytest.skip(f"no compiled kernel here: {run.stdout.strip()}")
    return cache


def _library(cache: Path) -> Path:
    (lib,) = cache.glob("topk_*.so")
    return lib


def _truncate(lib: Path) -> None:
    lib.write_bytes(lib.read_bytes()[:4096])


def _empty(lib: Path) -> None:
    lib.write_bytes(b"")


def _garbage(lib: Path) -> None:
    lib.write_bytes(bytes(range(256)) * (lib.stat().st_size // 256 + 1))


def _no_digest(lib: Path) -> None:
    lib.with_name(lib.name + ".sha256").unlink()


def _wrong_digest(lib: Path) -> None:
    lib.with_name(lib.name + ".sha256").write_text("0" * 64 + "\n")


def _flipped_byte(lib: Path) -> None:
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))


CORRUPTIONS = [
    ("library truncated", _truncate),
    ("library emptied", _empty),
    ("library overwritten with garbage", _garbage),
    ("one byte of the library flipped", _flipped_byte),
    ("digest missing", _no_digest),
    ("digest wrong", _wrong_digest),
]


@pytest.mark.parametrize("corrupt", cases(CORRUPTIONS))
def test_a_corrupt_cached_library_is_built_again(built_cache, tmp_path, corrupt):
    """The cached kernel is loaded only when its bytes match the sha256 stored with it: a damaged
    library (which loaded as it is kills the process with SIGBUS) or digest is built again, and the
    forward runs with the kernel and finite output."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in built_cache.iterdir():
        (cache / f.name).write_bytes(f.read_bytes())
    lib = _library(cache)
    corrupt(lib)
    run = run_child(cache)
    assert run.returncode == 0, f"exit code {run.returncode}: {run.stderr[-2000:]}"
    assert "finite: True" in run.stdout and "status: native" in run.stdout, run.stdout + run.stderr[-2000:]
    digest = lib.with_name(lib.name + ".sha256").read_text().strip()
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == digest  # the cache is whole again
    assert sorted(f.name for f in cache.iterdir()) == sorted(f.name for f in built_cache.iterdir())  # no leftovers


@bad_input
def test_a_corrupt_library_that_cannot_be_rebuilt_falls_back_to_torch(built_cache, tmp_path):
    """No working compiler and a truncated cached library: a warning names why, and the torch path
    answers (finite output, exit code 0)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in built_cache.iterdir():
        (cache / f.name).write_bytes(f.read_bytes())
    _truncate(_library(cache))
    run = run_child(cache, CC="false")
    assert run.returncode == 0, f"exit code {run.returncode}: {run.stderr[-2000:]}"
    assert "finite: True" in run.stdout and "status: unavailable" in run.stdout, run.stdout
    assert "RuntimeWarning" in run.stderr and "compiled top-k kernel is unavailable" in run.stderr


# ------------------------------------------------------------------ 2. truncated_backward checks first
def _tb_inputs(model: MemNet) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and targets of three chunks of one segment each (and a partial fourth)."""
    L = model.cfg.segment_len
    x = rand_tokens(2, 3 * L + 2, seed=5)
    y = rand_tokens(2, 3 * L + 2, seed=6)
    y[0, 1] = IGNORE_INDEX
    return x, y


def _set(t: torch.Tensor, index: tuple, value: int) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


BAD_TB = [
    ("target == vocab_size in the last chunk", lambda x, y, m: dict(targets=_set(y, (1, -1), V)), ValueError,
     r"targets must be ids in \[0, vocab_size=20\) or IGNORE_INDEX"),
    ("negative target in a later chunk", lambda x, y, m: dict(targets=_set(y, (0, -3), -1)), ValueError, "targets"),
    ("huge target in a later chunk", lambda x, y, m: dict(targets=_set(y, (0, -1), 10 ** 9)), ValueError, "targets"),
    ("float targets", lambda x, y, m: dict(targets=y.float()), TypeError, "targets.*integer"),
    ("bool targets", lambda x, y, m: dict(targets=y > 3), TypeError, "targets.*integer"),
    ("complex targets", lambda x, y, m: dict(targets=y.to(torch.complex64)), TypeError, "targets"),
    ("targets shorter than tokens", lambda x, y, m: dict(targets=y[:, :-1]), ValueError, "targets.*shape"),
    ("targets of another batch", lambda x, y, m: dict(targets=y[:1]), ValueError, "targets.*shape"),
    ("targets as a list", lambda x, y, m: dict(targets=y.tolist()), TypeError, "targets.*torch.Tensor"),
    ("targets None", lambda x, y, m: dict(targets=None), TypeError, "targets"),
    ("token id out of range in a later chunk", lambda x, y, m: dict(tokens=_set(x, (1, -1), V)), ValueError,
     "tokens"),
    ("float tokens", lambda x, y, m: dict(tokens=x.float()), TypeError, "tokens"),
    ("chunk_segments 0", lambda x, y, m: dict(chunk_segments=0), ValueError, "chunk_segments"),
    ("chunk_segments -1", lambda x, y, m: dict(chunk_segments=-1), ValueError, "chunk_segments"),
    ("chunk_segments True", lambda x, y, m: dict(chunk_segments=True), ValueError, "chunk_segments"),
    ("chunk_segments 1.5", lambda x, y, m: dict(chunk_segments=1.5), ValueError, "chunk_segments"),
    ("chunk_segments '1'", lambda x, y, m: dict(chunk_segments="1"), ValueError, "chunk_segments"),
    ("memory of another batch size", lambda x, y, m: dict(memory=m.initial_state(3)), ValueError,
     "memory.*batch size"),
    ("memory with NaN", lambda x, y, m: dict(memory=_with(m.initial_state(2), "keys", (0, 0, 0), float("nan"))),
     ValueError, r"memory\.keys.*NaN"),
    ("memory of another config", lambda x, y, m: dict(memory=MemNet(tiny_cfg(top_k=3)).initial_state(2)),
     ValueError, "memory.*another config.*top_k"),
]


@pytest.mark.parametrize("make, exc, match", cases(BAD_TB))
def test_truncated_backward_checks_every_argument_before_any_backward(make, exc, match):
    """A bad argument (a target out of range in the last chunk included) raises before the first
    chunk runs: parameters, their accumulated .grad and the RNGs are untouched."""
    model = tiny_model().train()
    x, y = _tb_inputs(model)
    truncated_backward(model, x, y, 1)  # .grad holds something to keep
    kw = dict(tokens=x, targets=y, chunk_segments=1, memory=None)
    kw.update(make(x, y, model))
    before = snapshot(model)
    with pytest.raises(exc, match=match):
        truncated_backward(model, **kw)
    assert_unchanged(before, snapshot(model))


def test_truncated_backward_accepts_ignored_and_narrow_integer_targets():
    """IGNORE_INDEX anywhere and int32 targets are valid: the same loss and gradients as int64."""
    losses, grads = [], []
    for dtype in (torch.int64, torch.int32):
        model = tiny_model().train()
        x, y = _tb_inputs(model)
        y[1, -1] = IGNORE_INDEX
        loss, mem = truncated_backward(model, x, y.to(dtype), 2)
        losses.append(loss)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert mem.signature == model.cfg.memory_signature()
    assert losses[0] == losses[1] and all(torch.equal(a, b) for a, b in zip(*grads))


# ------------------------------------------------------------------ 3. memory states: config and range
def _with(state: MemoryState, field: str, index: tuple, value: float) -> MemoryState:
    """`state` with one entry of `field` set to `value` (a copy; the signature kept)."""
    t = getattr(state, field).clone()
    t[index] = value
    return dataclasses.replace(state, **{field: t}, signature=state.signature)


# one field of the memory's config changed at a time; every state keeps the shapes of tiny_cfg()'s
OTHER_CONFIGS = [
    ("mem_heads", dict(mem_heads=3)),
    ("top_k", dict(top_k=3)),
    ("segment_len", dict(segment_len=5)),
    ("writes_per_segment", dict(writes_per_segment=2)),
    ("write_tokens", dict(write_tokens=(0, 5))),
    ("write_key_shift", dict(write_key_shift=0)),
    ("window_reads", dict(window_reads=False)),
    ("write_threshold", dict(write_threshold=0.3)),
    ("usage_decay", dict(usage_decay=0.5)),
    ("decay_mode", dict(decay_mode="fixed")),
    ("decay_init", dict(decay_init=2.0)),
    ("allocation", dict(allocation="faded")),
    ("full_key_norm", dict(full_key_norm=0.5)),
    ("eps", dict(eps=1e-5)),
    ("segment_codes", dict(segment_codes=2)),
]


def test_every_memory_field_has_an_other_config_case():
    assert {name for name, _ in OTHER_CONFIGS} | {"num_slots", "slot_dim"} == set(MEMORY_FIELDS)


@pytest.fixture(scope="module")
def model() -> MemNet:
    return tiny_model()


@pytest.mark.parametrize("field, kw", cases([(name, name, kw) for name, kw in OTHER_CONFIGS]))
def test_a_state_of_another_config_is_rejected(model, field, kw):
    """A state made by a model of another config, with the same tensor shapes, is rejected by
    forward and by StreamingMemory with an error that names the argument and the differing field."""
    torch.manual_seed(1)
    other = MemNet(tiny_cfg(**kw)).eval()
    with torch.no_grad():
        state = other(rand_tokens(2, 7, seed=2)).memory
    assert all(getattr(state, f).shape == getattr(model.initial_state(2), f).shape for f in TENSOR_FIELDS)
    before = snapshot(model, state=state)
    with pytest.raises(ValueError, match=rf"memory is a MemoryState made for another config: .*\b{field}="):
        model(rand_tokens(2, 6), memory=state)
    with pytest.raises(ValueError, match=rf"state is a MemoryState made for another config: .*\b{field}="):
        StreamingMemory(model.memory, state.rows(0, 1))
    with pytest.raises(ValueError, match=rf"memory.*another config.*\b{field}="):
        truncated_backward(model, rand_tokens(2, 6), rand_tokens(2, 6), 1, memory=state)
    assert_unchanged(before, snapshot(model, state=state))


def _big(state, field, value):
    return _with(state, field, (0, 1) if getattr(state, field).dim() > 1 else (0,), value)


BAD_RANGES = [
    ("keys 1e38", "keys", 1e38, r"memory\.keys must be in \[-1e\+08, 1e\+08\]"),
    ("keys -1e38", "keys", -1e38, r"memory\.keys must be in"),
    ("keys just above the bound", "keys", 2 * STATE_MAX_ABS, r"memory\.keys must be in"),
    ("values 1e38", "values", 1e38, r"memory\.values must be in"),
    ("values -3e38", "values", -3e38, r"memory\.values must be in"),
    ("values just above the bound", "values", 2 * STATE_MAX_ABS, r"memory\.values must be in"),
    ("age 1e38", "age", 1e38, r"memory\.age must be >= 0 and <= 1\.67772e\+07"),
    ("age above COUNT_MAX", "age", COUNT_MAX + 2, r"memory\.age must be"),
    ("negative age", "age", -1.0, r"memory\.age must be >= 0"),
    ("segments 1e38", "segments", 1e38, r"memory\.segments must be >= 0 and <= "),
    ("segments 2**40", "segments", 2.0 ** 40, r"memory\.segments"),
    ("negative segments", "segments", -1.0, r"memory\.segments must be >= 0"),
    ("usage 1e38", "usage", 1e38, r"memory\.usage must be in \[0, 1\]"),
    ("retained 2", "retained", 2.0, r"memory\.retained must be in \[0, 1\]"),
    ("retained -1e-3", "retained", -1e-3, r"memory\.retained must be in \[0, 1\]"),
    ("keys inf", "keys", float("inf"), r"memory\.keys contains NaN or inf"),
    ("values NaN", "values", float("nan"), r"memory\.values contains NaN or inf"),
]


@pytest.mark.parametrize("field, value, match", cases(BAD_RANGES))
def test_a_state_out_of_range_is_rejected(model, field, value, match):
    """Finite but huge keys or values (which gave non-finite logits) and counts past what float32
    counts to are rejected, naming the field and its range; nothing is changed."""
    with torch.no_grad():
        good = model(rand_tokens(2, 9, seed=3)).memory
    state = _big(good, field, value)
    before = snapshot(model, state=state)
    with pytest.raises(ValueError, match=match):
        model(rand_tokens(2, 6), memory=state)
    with pytest.raises(ValueError, match=match.replace("memory", "state")):
        StreamingMemory(model.memory, state.rows(0, 1))
    assert_unchanged(before, snapshot(model, state=state))


BAD_SIGNATURES = [
    ("a string", "top_k=2", TypeError),
    ("a tuple of strings", ("top_k", "2"), TypeError),
    ("a list of pairs", [("top_k", 2)], TypeError),
    ("pairs of another config", (("top_k", 3),), ValueError),
]


@pytest.mark.parametrize("signature, exc", cases(BAD_SIGNATURES))
def test_a_state_with_a_malformed_signature_is_rejected(model, signature, exc):
    state = dataclasses.replace(model.initial_state(1), signature=signature)
    before = snapshot(model, state=state)
    with pytest.raises(exc, match=r"memory(\.signature| is a MemoryState made for another config)"):
        model(rand_tokens(1, 5), memory=state)
    assert_unchanged(before, snapshot(model, state=state))


def test_states_carry_their_config_through_every_copy(model):
    """initial_state, forward, write, stream and every MemoryState method keep the signature; a state
    built by hand has none and is checked by shapes and values only; the tensors alone are fields."""
    sig = model.cfg.memory_signature()
    s0 = model.initial_state(2)
    out = model(rand_tokens(2, 9))
    m = out.memory
    assert s0.signature == sig and m.signature == sig
    assert [f.name for f in dataclasses.fields(MemoryState)] == list(TENSOR_FIELDS)
    for made in (m.detach(), m.clone(), m.to(torch.float32), m.rows(0, 1), m.rows(0, 1).expand(3),
                 MemoryState.cat([m, s0]), pickle.loads(pickle.dumps(m.detach())),
                 dataclasses.replace(m, age=m.age, signature=m.signature)):
        assert made.signature == sig
    stream = StreamingMemory(model.memory, m.rows(0, 1).detach())
    model.stream(rand_tokens(1, 5), stream)
    assert stream.to_state().signature == sig
    hand = MemoryState(m.keys.detach(), m.values.detach(), m.age, m.usage)
    assert hand.signature is None and MemoryState.cat([hand, hand.clone()]).signature is None
    assert MemoryState.cat([hand, m.detach()]).signature == sig
    assert torch.isfinite(model(rand_tokens(2, 5), memory=hand).logits).all()
    torch.manual_seed(3)  # the same config with other weights: accepted
    assert torch.isfinite(tiny_model(seed=3)(rand_tokens(2, 5), memory=m).logits).all()


@bad_input
def test_states_of_two_configs_cannot_be_joined(model):
    other = MemNet(tiny_cfg(top_k=3)).initial_state(1)
    with pytest.raises(ValueError, match="states must be made for the same config"):
        MemoryState.cat([model.initial_state(1), other])


def test_states_with_signatures_compile():
    """A MemoryState goes into and comes out of a torch.compile'd function (fullgraph) with its signature."""
    torch._dynamo.reset()
    model = tiny_model()
    state = model(rand_tokens(1, 5)).memory.detach()

    def step(s: MemoryState, x: torch.Tensor) -> MemoryState:
        return MemoryState(s.keys + x, s.values, s.age + 1.0, s.usage, s.retained, s.segments,
                           signature=s.signature).detach()

    out = torch.compile(step, backend="eager", fullgraph=True)(state, torch.ones(()))
    assert out.signature == state.signature and torch.equal(out.keys, state.keys + 1)


def _at_bounds(state: MemoryState, g: torch.Generator) -> MemoryState:
    """Every key and value at +-STATE_MAX_ABS, counts at COUNT_MAX, usage 1, retained at 0 or 1."""
    sign = lambda t: torch.where(torch.rand(t.shape, generator=g) < 0.5, -1.0, 1.0)
    return MemoryState(sign(state.keys) * STATE_MAX_ABS, sign(state.values) * STATE_MAX_ABS,
                       torch.full_like(state.age, COUNT_MAX), torch.ones_like(state.usage),
                       (torch.rand(state.retained.shape, generator=g) < 0.5).float(),
                       torch.full_like(state.segments, COUNT_MAX), signature=state.signature)


@settings(max_examples=examples(40), deadline=None)
@given(small_configs(), st.integers(0, 2 ** 31 - 1))
def test_states_at_the_bounds_give_finite_outputs(cfg, seed):
    """The ranges check_state enforces are ones the model computes within: a state at every bound
    gives finite logits and a finite next state, through forward and stream."""
    torch.manual_seed(seed % 1000)
    model = MemNet(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    state = _at_bounds(model.initial_state(2), g)
    x = torch.randint(0, V, (2, 2 * cfg.segment_len + 1), generator=g)
    with torch.no_grad():
        out = model(x, memory=state)
        logits, mem = model.stream(x[:1], StreamingMemory(model.memory, state.rows(0, 1)))
    assert torch.isfinite(out.logits).all() and torch.isfinite(logits).all()
    assert all(torch.isfinite(t).all() for t in out.memory.tensors() + mem.to_state().tensors())


# ------------------------------------------------------------------ 4. config values
def _field_names(*types: str) -> list[str]:
    return [f.name for f in dataclasses.fields(MemNetConfig) if f.type in types]


FLOAT_FIELDS = _field_names("float")
REQUIRED_INTS = _field_names("int")
OPTIONAL_INTS = _field_names("int | None")
NONNEGATIVE_INTS = ["write_key_shift", "segment_codes"]  # 0 is valid for these


def test_the_field_lists_cover_the_config():
    assert FLOAT_FIELDS == ["dropout", "write_threshold", "usage_decay", "decay_init", "sharpness_init",
                            "full_key_norm", "util_weight", "pressure_weight", "read_entropy_weight",
                            "write_weight", "write_budget", "eps"]
    assert set(NONNEGATIVE_INTS) < set(REQUIRED_INTS) and len(REQUIRED_INTS) == 11
    assert OPTIONAL_INTS == ["slot_dim", "bottleneck_dim", "writes_per_segment", "tbptt_segments"]


BAD_FLOATS = [("nan", float("nan"), ValueError), ("inf", float("inf"), ValueError),
              ("-inf", float("-inf"), ValueError), ("1e300", 1e300, ValueError), ("-1e300", -1e300, ValueError),
              ("str", "1.0", TypeError), ("bool", True, TypeError), ("None", None, TypeError),
              ("list", [1.0], TypeError)]
FLOAT_CASES = [(f"{name}={vid}", name, v, exc) for name in FLOAT_FIELDS for vid, v, exc in BAD_FLOATS]
# values inside float64 but outside a field's own range
FLOAT_CASES += [(f"{name}={v:g}", name, v, ValueError) for name in ("sharpness_init", "full_key_norm", "eps")
                for v in (0.0, -1.0, 1e-300, FLOAT32_TINY / 2)]
FLOAT_CASES += [(f"{name}={v:g}", name, v, ValueError) for name in ("full_key_norm", "eps")
                for v in (FLOAT32_TINY, NORM_FLOOR_MIN / 2)]
FLOAT_CASES += [(f"{name}={v:g}", name, v, ValueError) for name in
                ("util_weight", "pressure_weight", "read_entropy_weight", "write_weight")
                for v in (-1e-3, 2 * LOSS_WEIGHT_MAX, 3e38)]
FLOAT_CASES += [(f"decay_init={v:g}", "decay_init", v, ValueError) for v in (2 * FLOAT32_MAX, -2 * FLOAT32_MAX)]


@pytest.mark.parametrize("field, value, exc", cases(FLOAT_CASES))
def test_config_rejects_float_values(field, value, exc):
    with pytest.raises(exc, match=rf"MemNetConfig\.{field} must be"):
        tiny_cfg(**{field: value})


BAD_INTS = [("float", 4.0, TypeError), ("bool", True, TypeError), ("str", "4", TypeError), ("list", [4], TypeError)]
INT_CASES = [(f"{name}={vid}", name, v, exc) for name in REQUIRED_INTS + OPTIONAL_INTS for vid, v, exc in BAD_INTS]
INT_CASES += [(f"{name}=None", name, None, TypeError) for name in REQUIRED_INTS]
INT_CASES += [(f"{name}={v}", name, v, ValueError) for name in REQUIRED_INTS + OPTIONAL_INTS
              for v in ((-1,) if name in NONNEGATIVE_INTS else (0, -1))]


@pytest.mark.parametrize("field, value, exc", cases(INT_CASES))
def test_config_rejects_int_values(field, value, exc):
    with pytest.raises(exc, match=rf"MemNetConfig\.{field} must be"):
        tiny_cfg(**{field: value})


@pytest.mark.parametrize("kw", [
    dict(decay_init=FLOAT32_MAX), dict(decay_init=-FLOAT32_MAX), dict(decay_init=FLOAT32_MAX, decay_mode="fixed"),
    dict(eps=NORM_FLOOR_MIN, full_key_norm=NORM_FLOOR_MIN), dict(eps=FLOAT32_MAX), dict(full_key_norm=FLOAT32_MAX),
    dict(sharpness_init=FLOAT32_TINY), dict(sharpness_init=FLOAT32_MAX),
    dict(util_weight=LOSS_WEIGHT_MAX, pressure_weight=LOSS_WEIGHT_MAX, read_entropy_weight=LOSS_WEIGHT_MAX,
         write_weight=LOSS_WEIGHT_MAX),
], ids=lambda kw: ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()))
def test_config_values_at_the_bounds_train_to_finite_numbers(kw):
    """Every float field at the edge of its range gives finite logits, a finite loss and finite
    gradients: the ranges are ones the model computes within."""
    torch.manual_seed(0)
    model = MemNet(tiny_cfg(**kw))
    out = model(rand_tokens(2, 13))
    loss = out.logits.float().logsumexp(-1).mean() + sum(out.aux_losses.values())
    loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------ 5. fuzz over MemNet's inputs
FUZZ_CONFIGS = [
    tiny_cfg(),
    tiny_cfg(num_slots=8, top_k=3, mem_heads=1, slot_dim=4, segment_len=3, writes_per_segment=2,
             allocation="faded", decay_mode="fixed", window_reads=False),
    tiny_cfg(num_slots=6, top_k=1, mem_heads=3, slot_dim=8, segment_len=2, segment_codes=0, decay_mode="none",
             write_tokens=(2, 9), full_key_norm=1e-6),
]
_fuzz_models: dict[int, tuple[MemNet, MemNet, dict]] = {}


def fuzz_setup(i: int) -> tuple[MemNet, MemNet, dict]:
    """Config i's model, a model of the same shapes but another mem_heads, and states to start from:
    for batch sizes 1 and 2, a used state of each model."""
    if i not in _fuzz_models:
        torch.manual_seed(i)
        model = MemNet(FUZZ_CONFIGS[i]).eval()
        twin = MemNet(dataclasses.replace(FUZZ_CONFIGS[i], mem_heads=FUZZ_CONFIGS[i].mem_heads + 1)).eval()
        with torch.no_grad():
            used = {(who, B): m(rand_tokens(B, 7, seed=B)).memory for who, m in (("own", model), ("twin", twin))
                    for B in (1, 2)}
        _fuzz_models[i] = model, twin, used
    return _fuzz_models[i]


RANGES = {"keys": (-STATE_MAX_ABS, STATE_MAX_ABS), "values": (-STATE_MAX_ABS, STATE_MAX_ABS),
          "age": (0.0, COUNT_MAX), "usage": (0.0, 1.0), "retained": (0.0, 1.0), "segments": (0.0, COUNT_MAX),
          "evidence": (0.0, 1.0)}
FUZZ_VALUES = [float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 1e9, -1e9, 1e5, -1e5, 2.0 ** 25, 0.5, 1.0,
               0.0, -1e-3, 1.5, 7.0]


@st.composite
def fuzz_tokens(draw, B: int, L: int) -> tuple[object, bool]:
    """Tokens for a call and whether they are valid."""
    T = draw(st.integers(1, 3 * L + 1))
    ids = torch.tensor(draw(st.lists(st.integers(0, V - 1), min_size=B * T, max_size=B * T))).view(B, T)
    kind = draw(st.sampled_from(["ok", "ok", "ok", "int32", "uint8", "bad id", "float", "bool", "1-D", "3-D",
                                 "T=0", "B=0", "list", "None"]))
    if kind == "bad id":
        return _set(ids, (draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1))),
                    draw(st.sampled_from([-1, V, V + 7, -(2 ** 40), 2 ** 40]))), False
    made = {"ok": ids, "int32": ids.int(), "uint8": ids.to(torch.uint8), "float": ids.float(), "bool": ids > 5,
            "1-D": ids[0], "3-D": ids[..., None], "T=0": ids[:, :0], "B=0": ids[:0], "list": ids.tolist(),
            "None": None}[kind]
    return made, kind in ("ok", "int32", "uint8")


@st.composite
def fuzz_state(draw, used: dict, B: int) -> tuple[object, bool]:
    """A memory state for a call with batch B (or None) and whether it is valid for the model."""
    kind = draw(st.sampled_from(["none", "own", "own", "own", "twin", "other batch", "signature", "perturbed",
                                 "perturbed", "perturbed", "shape", "dtype"]))
    own = used[("own", B)]
    if kind == "none":
        return None, True
    if kind == "own":
        return own, True
    if kind == "twin":
        return used[("twin", B)], False
    if kind == "other batch":
        return used[("own", 3 - B)], False
    if kind == "signature":
        return dataclasses.replace(own, signature=draw(st.sampled_from(["x", (("top_k", 99),), 3]))), False
    field = draw(st.sampled_from(TENSOR_FIELDS))
    t = getattr(own, field)
    if kind == "shape":
        bad = draw(st.sampled_from(["drop slot", "extra dim", "scalar", "batch"]))
        if bad == "drop slot" and t.dim() < 2:
            bad = "extra dim"
        t = {"drop slot": lambda: t[:, :-1], "extra dim": lambda: t[..., None], "scalar": lambda: t.reshape(-1)[0],
             "batch": lambda: torch.cat([t, t])}[bad]()
        return dataclasses.replace(own, **{field: t}, signature=own.signature), False
    if kind == "dtype":
        dtype = draw(st.sampled_from([torch.float64, torch.float16, torch.int64, torch.bool]))
        return dataclasses.replace(own, **{field: t.to(dtype)}, signature=own.signature), False
    value = draw(st.sampled_from(FUZZ_VALUES))
    index = draw(st.integers(0, t.numel() - 1))
    t = t.clone()
    t.view(-1)[index] = value
    lo, hi = RANGES[field]
    return dataclasses.replace(own, **{field: t}, signature=own.signature), bool(lo <= value <= hi)


@bad_input
@settings(max_examples=examples(1000), deadline=None)
@given(st.data())
def test_fuzz_memnet_inputs_are_rejected_cleanly_or_give_finite_outputs(data):
    """Random tokens (valid or not) and memory states (valid, of another config or batch, perturbed in
    shape, dtype or value) through forward or stream: a valid call gives finite logits and state; an
    invalid one raises TypeError/ValueError naming the argument (tokens, memory, or state for the
    state a StreamingMemory is built from). Neither changes the model, the RNGs or the state given."""
    i = data.draw(st.integers(0, len(FUZZ_CONFIGS) - 1), label="config")
    model, _, used = fuzz_setup(i)
    stream = data.draw(st.booleans(), label="stream")
    B = data.draw(st.sampled_from([1, 1, 2] if stream else [1, 2]), label="batch")
    tokens, tokens_ok = data.draw(fuzz_tokens(B, model.cfg.segment_len), label="tokens")
    state, state_ok = data.draw(fuzz_state(used, B), label="state")
    if stream and B != 1:
        tokens_ok = False  # stream takes one sequence
    whole = isinstance(state, MemoryState) and all(isinstance(getattr(state, f), torch.Tensor) for f in TENSOR_FIELDS)
    before = snapshot(model, state=state if whole else None)
    try:
        with torch.no_grad():
            if stream:
                memory = None if state is None else StreamingMemory(model.memory, state)
                logits, memory = model.stream(tokens, memory)
                new = memory.to_state()
            else:
                out = model(tokens, memory=state)
                logits, new = out.logits, out.memory
    except (TypeError, ValueError) as e:
        msg = str(e)
        event("rejected")
        assert not (tokens_ok and state_ok), f"a valid call was rejected: {msg}"
        names = ("tokens", "state") if stream else ("tokens", "memory")
        assert any(n in msg for n in names), f"the error names no argument: {msg}"
    else:
        event("accepted")
        assert tokens_ok and state_ok, "an invalid call was accepted"
        assert torch.isfinite(logits).all() and all(torch.isfinite(t).all() for t in new.tensors())
        assert new.signature == model.cfg.memory_signature()
    assert_unchanged(before, snapshot(model, state=state if whole else None))
