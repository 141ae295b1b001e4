"""Training and checkpoints under faults: checked configs, checkpoints that are validated before they
change anything (and roll back when applying fails), one consistent metrics file per run, refused
steps that leave the weights alone, and runs killed with SIGKILL that resume to the same bits."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import V, assert_unchanged, snapshot, tiny_cfg
from memnet import MemNet
from memnet.baselines import LSTMBaseline, WindowedTransformer
from memnet.metrics import IGNORE_INDEX
from memnet.train import CHECKPOINT_FORMAT, RESUME_FIELDS, Trainer, TrainConfig, lr_at, model_config_dict

NAN, INF = float("nan"), float("inf")


def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch per step: recall the first 6 tokens in the last 6 positions."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, V, (4, 12), generator=g)
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, 6:] = tokens[:, :6]
    return tokens, targets


def make_trainer(out_dir: Path | None = None, steps: int = 6, model_cls=MemNet, model_kw: dict | None = None,
                 **tc_kw) -> Trainer:
    torch.manual_seed(0)
    tc = dict(steps=steps, batch_size=4, lr=3e-3, warmup=2, log_every=1, progress=False)
    tc.update(tc_kw)
    return Trainer(model_cls(tiny_cfg(**(model_kw or {}))), TrainConfig(**tc), "cpu", out_dir=out_dir, name="tiny")


def trained(n: int = 2, **kw) -> Trainer:
    """A trainer (see make_trainer) after `n` steps: its weights, .grad and optimizer state are all in use."""
    tr = make_trainer(**kw)
    tr.fit(batch_fn, steps=n)
    return tr


def records(path: Path) -> list[dict]:
    """metrics.jsonl records without the wall-clock time (the one field a rerun changes)."""
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in path.read_text().splitlines()]


# ================================================================== TrainConfig
BAD_TRAIN_CONFIG = [
    ("steps", 0, ValueError), ("steps", -3, ValueError), ("steps", 10.0, TypeError), ("steps", True, TypeError),
    ("steps", "10", TypeError), ("steps", None, TypeError),
    ("batch_size", 0, ValueError), ("batch_size", 2.5, TypeError), ("batch_size", False, TypeError),
    ("lr", 0.0, ValueError), ("lr", -1e-3, ValueError), ("lr", INF, ValueError), ("lr", NAN, ValueError),
    ("lr", "1e-3", TypeError), ("lr", True, TypeError), ("lr", None, TypeError),
    ("weight_decay", -0.01, ValueError), ("weight_decay", NAN, ValueError), ("weight_decay", INF, ValueError),
    ("weight_decay", "0", TypeError),
    ("warmup", -1, ValueError), ("warmup", 5.0, TypeError), ("warmup", True, TypeError),
    ("min_lr_ratio", -0.1, ValueError), ("min_lr_ratio", 1.5, ValueError), ("min_lr_ratio", NAN, ValueError),
    ("min_lr_ratio", None, TypeError),
    ("grad_clip", -1.0, ValueError), ("grad_clip", 0.0, ValueError), ("grad_clip", NAN, ValueError),
    ("grad_clip", INF, ValueError), ("grad_clip", -INF, ValueError), ("grad_clip", "1", TypeError),
    ("grad_clip", True, TypeError),
    ("amp", "fp8", ValueError), ("amp", "BF16", ValueError), ("amp", None, ValueError), ("amp", True, ValueError),
    ("log_every", -1, ValueError), ("log_every", 1.0, TypeError), ("log_every", None, TypeError),
    ("ckpt_every", -5, ValueError), ("ckpt_every", 2.0, TypeError), ("ckpt_every", True, TypeError),
    ("micro_batches", 0, ValueError), ("micro_batches", 2.0, TypeError), ("micro_batches", 3, ValueError),
    ("progress", 1, TypeError), ("progress", "yes", TypeError), ("find_unused_parameters", None, TypeError),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("field, value, exc", BAD_TRAIN_CONFIG,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_TRAIN_CONFIG])
def test_train_config_rejects(field, value, exc):
    match = r"micro_batches \(3\) must divide batch_size \(32\)" if (field, value) == ("micro_batches", 3) \
        else rf"TrainConfig\.{field} must be"
    with pytest.raises(exc, match=match):
        TrainConfig(**{field: value})


def test_train_config_boundaries_and_int_like_values():
    tc = TrainConfig(steps=np.int64(1), batch_size=np.int32(6), lr=np.float32(0.5), warmup=0, weight_decay=0,
                     min_lr_ratio=1, grad_clip=None, log_every=0, ckpt_every=0, micro_batches=3)
    assert (type(tc.steps), type(tc.batch_size), type(tc.lr), type(tc.weight_decay)) == (int, int, float, float)
    assert tc.grad_clip is None and TrainConfig(min_lr_ratio=0.0).min_lr_ratio == 0.0
    assert json.loads(json.dumps(dataclasses.asdict(tc)))["steps"] == 1  # plain values: checkpoints stay loadable


def test_grad_clip_none_means_no_clipping():
    """No clipping is the plain update (an infinite threshold multiplies by exactly 1)."""
    off, big = make_trainer(steps=3, grad_clip=None), make_trainer(steps=3, grad_clip=1e9)
    off.fit(batch_fn)
    big.fit(batch_fn)
    assert all(math.isfinite(h["grad_norm"]) for h in off.history)
    for (n, a), (_, b) in zip(off.model.state_dict().items(), big.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_log_every_zero_logs_the_last_step_only(tmp_path):
    tr = make_trainer(tmp_path, steps=4, log_every=0)
    tr.fit(batch_fn)
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [4]


BAD_FIT_ARGS = [
    ("steps=-1", dict(steps=-1), ValueError, r"fit: steps must be None or an int >= 0, got -1"),
    ("steps=2.0", dict(steps=2.0), TypeError, r"fit: steps must be None or an int"),
    ("steps=True", dict(steps=True), TypeError, r"fit: steps must be None or an int"),
    ("batch_fn=None", dict(batch_fn=None), TypeError, r"fit: batch_fn must be callable"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("kw, exc, match", [c[1:] for c in BAD_FIT_ARGS], ids=[c[0] for c in BAD_FIT_ARGS])
def test_bad_fit_arguments(tmp_path, kw, exc, match):
    tr = trained(n=1, out_dir=tmp_path)
    before = snapshot(tr.model, tr.optimizer, files=[tmp_path / "metrics.jsonl"])
    with pytest.raises(exc, match=match):
        tr.fit(**{"batch_fn": batch_fn, **kw})
    assert_unchanged(before, snapshot(tr.model, tr.optimizer, files=[tmp_path / "metrics.jsonl"]))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while the checkpoint is written (here: torch.save dies half-way) leaves the previous one."""
    tr = trained(n=2)
    path = tr.save_checkpoint(tmp_path / "ck.pt")
    old = path.read_bytes()
    tr.fit(batch_fn, steps=3)

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        tr.save_checkpoint(path)
    assert path.read_bytes() == old
    assert make_trainer().load_checkpoint(path) == 2


# ================================================================== checkpoints: content
def test_checkpoint_carries_format_and_configs(tmp_path):
    tr = trained()
    state = torch.load(tr.save_checkpoint(tmp_path / "ck.pt"), weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT == 1 and state["model_class"] == "MemNet" and state["step"] == 2
    assert state["model_config"] == json.loads(json.dumps(tiny_cfg().to_dict()))
    assert state["train_config"] == dataclasses.asdict(tr.cfg)


@pytest.mark.parametrize("cls", [WindowedTransformer, LSTMBaseline])
def test_baseline_checkpoints_carry_their_config_and_resume(tmp_path, cls):
    tr = trained(model_cls=cls)
    path = tr.save_checkpoint(tmp_path / "ck.pt")
    assert torch.load(path, weights_only=True)["model_config"] == model_config_dict(tr.model)
    other = make_trainer(model_cls=cls)
    assert other.load_checkpoint(path) == 2
    for (n, a), (_, b) in zip(tr.model.state_dict().items(), other.model.state_dict().items()):
        assert torch.equal(a, b), n
    before = snapshot(other.model, other.optimizer)
    with pytest.raises(ValueError, match="top_k=2 in the checkpoint vs 3 here"):
        make_trainer(model_cls=cls, model_kw=dict(top_k=3)).load_checkpoint(path)
    assert_unchanged(before, snapshot(other.model, other.optimizer))


# ================================================================== checkpoints: rejected loads change nothing
def _saved(tmp_path: Path, **kw) -> Path:
    """A checkpoint at step 2 of a trainer built with `kw` (see make_trainer)."""
    return trained(**kw).save_checkpoint(tmp_path / "src.pt")


def _doctored(change):
    """A case: a valid checkpoint of the target's own setup, with `change(state)` applied."""
    def make(tmp_path: Path) -> Path:
        path = _saved(tmp_path)
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
        return path
    return make


def _set(**kw):
    return _doctored(lambda s: s.update(kw))


def _drop(key):
    return _doctored(lambda s: s.pop(key))


def _model_tensor(fn):
    def change(s):
        s["model"]["head.weight"] = fn(s["model"]["head.weight"])
    return _doctored(change)


def _opt_state(key, fn):
    def change(s):
        s["optimizer"]["state"][0][key] = fn(s["optimizer"]["state"][0][key])
    return _doctored(change)


def _bytes(data: bytes):
    def make(tmp_path: Path) -> Path:
        (tmp_path / "src.pt").write_bytes(data)
        return tmp_path / "src.pt"
    return make


def _truncated(tmp_path: Path) -> Path:
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _torch_saved(obj):
    def make(tmp_path: Path) -> Path:
        torch.save(obj, tmp_path / "src.pt")
        return tmp_path / "src.pt"
    return make


BAD_CHECKPOINTS = [
    # written for another model or run
    ("other num_slots (other shapes)", lambda t: _saved(t, model_kw=dict(num_slots=32)),
     r"num_slots=32 in the checkpoint vs 16 here"),
    ("other top_k (same shapes)", lambda t: _saved(t, model_kw=dict(top_k=3)), r"differing fields: top_k=3"),
    ("other n_heads (same shapes)", lambda t: _saved(t, model_kw=dict(n_heads=1)), r"n_heads=1 in the checkpoint"),
    ("two fields differ", lambda t: _saved(t, model_kw=dict(top_k=3, usage_decay=0.5)),
     r"top_k=3 .*usage_decay=0.5"),
    ("another model class", lambda t: _saved(t, model_cls=WindowedTransformer), r"'WindowedTransformer' model"),
    ("other lr", lambda t: _saved(t, lr=1e-3), r"lr=0.001 in the checkpoint vs 0.003 here.*strict_train_config"),
    ("other schedule length", lambda t: _saved(t, steps=60), r"steps=60 in the checkpoint vs 6 here"),
    ("other amp", lambda t: _saved(t, amp="bf16"), r"amp='bf16'"),
    # not a checkpoint at all
    ("random bytes", _bytes(bytes(random.Random(0).randrange(256) for _ in range(4096))), "not a readable"),
    ("empty file", _bytes(b""), "not a readable"),
    ("JSON text", _bytes(b'{"format": 1}'), "not a readable"),
    ("truncated file", _truncated, "not a readable"),
    ("a list", _torch_saved([1, 2, 3]), "holds a list, expected a dict"),
    ("a bare state_dict", lambda t: _torch_saved(make_trainer().model.state_dict())(t), "no 'format' key"),
    ("dict missing keys", _torch_saved({"format": 1, "step": 3}), r"missing keys \['model', 'model_class'"),
    # format
    ("no format key", _drop("format"), "no 'format' key"),
    ("future format", _set(format=2), r"format 2 \(newer than this code\) is not supported"),
    ("format 0", _set(format=0), "format 0 is not supported"),
    ("format as str", _set(format="1"), "'format' must be an int"),
    ("unknown key", _set(extra_key=1), r"unknown keys \['extra_key'\]"),
    ("missing optimizer", _drop("optimizer"), r"missing keys \['optimizer'\]"),
    ("missing model config", _drop("model_config"), r"missing keys \['model_config'\]"),
    # configs inside
    ("model config field missing", _doctored(lambda s: s["model_config"].pop("top_k")), r"top_k='<absent>'"),
    ("model config not a dict", _set(model_config=[1, 2]), "model config"),
    ("invalid train config", _doctored(lambda s: s["train_config"].update(lr=-1.0)), r"TrainConfig\.lr must be"),
    ("train config with unknown field", _doctored(lambda s: s["train_config"].update(lrr=1.0)),
     "not a valid TrainConfig"),
    ("train config not a dict", _set(train_config=None), "train_config must be a dict"),
    # step
    ("negative step", _set(step=-5), r"'step' must be an int >= 0, got -5"),
    ("float step", _set(step=2.5), r"'step' must be an int >= 0, got 2.5"),
    ("bool step", _set(step=True), "'step' must be an int"),
    ("str step", _set(step="2"), "'step' must be an int"),
    ("tensor step", _set(step=torch.tensor(2)), "'step' must be an int"),
    # model tensors
    ("tensor of another shape", _model_tensor(lambda t: t.t().contiguous()), r"'head.weight' has shape \(16, 20\)"),
    ("tensor of another dtype", _model_tensor(lambda t: t.double()), r"'head.weight'.*torch.float64"),
    ("NaN in a parameter", _model_tensor(lambda t: t.fill_(NAN)), r"'head.weight' holds non-finite"),
    ("a tensor missing", _doctored(lambda s: s["model"].pop("head.weight")), r"missing \['head.weight'\]"),
    ("an extra tensor", _doctored(lambda s: s["model"].update(extra=torch.zeros(1))), r"unexpected \['extra'\]"),
    ("model not a dict", _set(model=[1]), "'model' must be a dict"),
    # optimizer
    ("one parameter group", _doctored(lambda s: s["optimizer"]["param_groups"].pop()), "parameter groups"),
    ("groups swapped", _doctored(lambda s: s["optimizer"]["param_groups"].reverse()), "parameter group 0"),
    ("moment of another shape", _opt_state("exp_avg", lambda t: t.flatten()[:1]), r"'exp_avg' must be a tensor"),
    ("NaN in a moment", _opt_state("exp_avg_sq", lambda t: t.fill_(NAN)), "'exp_avg_sq' holds non-finite"),
    ("negative optimizer step", _opt_state("step", lambda t: t - 10), "'step' must be a number >= 0"),
    ("moment missing", _doctored(lambda s: s["optimizer"]["state"][0].pop("exp_avg")), r"must hold \['exp_avg'"),
    ("state of an unknown parameter", _doctored(lambda s: s["optimizer"]["state"].update({999: {}})), "index 999"),
    ("negative lr in a group", _doctored(lambda s: s["optimizer"]["param_groups"][0].update(lr=-1.0)), "'lr' must be"),
    ("optimizer not a dict", _set(optimizer=None), "'optimizer' must be an optimizer state dict"),
    # scaler and RNG
    ("scaler garbage", _set(scaler={"scale": -1.0}), "'scaler' must be a GradScaler state"),
    ("rng as float", _doctored(lambda s: s.update(rng_cpu=s["rng_cpu"].float())), r"'rng_cpu' must be a uint8 tensor"),
    ("rng cut short", _doctored(lambda s: s.update(rng_cpu=s["rng_cpu"][:100])), r"'rng_cpu'.*got a torch.uint8"),
    ("rng missing", _drop("rng_cpu"), r"missing keys \['rng_cpu'\]"),
    ("rng_cuda not tensors", _set(rng_cuda=[1, 2]), "'rng_cuda' must be a list of uint8 tensors"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("make, match", [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoint_rejected_and_nothing_changes(tmp_path, make, match):
    path = make(tmp_path)
    tr = trained(n=3, out_dir=tmp_path / "run")  # the target: weights, .grad, optimizer state all in use
    metrics = tmp_path / "run" / "metrics.jsonl"
    before = snapshot(tr.model, tr.optimizer, files=[path, metrics])
    scaler_before, history_before = tr.scaler.state_dict(), list(tr.history)
    with pytest.raises(ValueError, match=match):
        tr.load_checkpoint(path)
    assert_unchanged(before, snapshot(tr.model, tr.optimizer, files=[path, metrics]))
    assert tr.step == 3 and tr.scaler.state_dict() == scaler_before and tr.history == history_before
    tr.fit(batch_fn, steps=4)  # and it trains on, writing its run's records
    assert [r["step"] for r in records(metrics)] == [1, 2, 3, 4]


@pytest.mark.bad_input
@pytest.mark.parametrize("path, exc", [("missing.pt", FileNotFoundError), (3, TypeError), (None, TypeError)],
                         ids=["missing file", "int path", "None path"])
def test_bad_checkpoint_path(tmp_path, path, exc):
    tr = trained()
    before = snapshot(tr.model, tr.optimizer)
    with pytest.raises(exc):
        tr.load_checkpoint(tmp_path / path if isinstance(path, str) else path)
    assert_unchanged(before, snapshot(tr.model, tr.optimizer))


class _FailOnce:
    """Stands in for a function and raises on its first call only (the rollback calls it again)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected failure while applying")
        return self.fn(*a, **kw)


@pytest.mark.parametrize("stage", ["optimizer", "scaler", "rng"])
def test_failure_while_applying_rolls_back(tmp_path, monkeypatch, stage):
    """A checkpoint that passes every check but fails part-way through being applied (after the
    model tensors were copied in) leaves model, optimizer, scaler, step and RNG as they were."""
    amp = "fp16" if stage == "scaler" else "off"
    src = trained(n=4, amp=amp)
    src.model.head.bias.data += 1.0  # make the checkpoint differ visibly from the target
    path = src.save_checkpoint(tmp_path / "ck.pt")
    tr = trained(n=2, amp=amp)
    if stage == "optimizer":
        monkeypatch.setattr(tr.optimizer, "load_state_dict", _FailOnce(tr.optimizer.load_state_dict))
    elif stage == "scaler":
        monkeypatch.setattr(tr.scaler, "load_state_dict", _FailOnce(tr.scaler.load_state_dict))
    else:
        monkeypatch.setattr(torch, "set_rng_state", _FailOnce(torch.set_rng_state))
    before = snapshot(tr.model, tr.optimizer)
    scaler_before = tr.scaler.state_dict()
    with pytest.raises(RuntimeError, match="injected"):
        tr.load_checkpoint(path)
    assert_unchanged(before, snapshot(tr.model, tr.optimizer))
    assert tr.step == 2 and tr.scaler.state_dict() == scaler_before


def test_resume_with_other_settings_when_not_strict(tmp_path):
    """``strict_train_config=False`` resumes a run with this trainer's settings (here a longer
    schedule and another weight decay); the default refuses (see the bad-checkpoint cases)."""
    path = trained(n=3).save_checkpoint(tmp_path / "ck.pt")
    tr = make_trainer(steps=10, lr=1e-3, weight_decay=0.1)
    assert tr.load_checkpoint(path, strict_train_config=False) == 3
    assert [g["weight_decay"] for g in tr.optimizer.param_groups] == [0.1, 0.0]
    tr.fit(batch_fn)
    assert tr.step == 10 and tr.history[-1]["lr"] == lr_at(9, tr.cfg)  # this trainer's schedule
    # fields outside RESUME_FIELDS may always differ
    assert "log_every" not in RESUME_FIELDS and "ckpt_every" not in RESUME_FIELDS
    assert make_trainer(steps=6, log_every=3, ckpt_every=2).load_checkpoint(path) == 3


def test_resume_is_bit_identical(tmp_path):
    full = make_trainer(steps=6)
    full.fit(batch_fn)
    part = trained(n=3)
    path = part.save_checkpoint(tmp_path / "ck.pt")
    res = make_trainer(steps=6)
    res.load_checkpoint(path)
    res.fit(batch_fn)
    for (n, a), (_, b) in zip(full.model.state_dict().items(), res.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert [h["loss"] for h in full.history[3:]] == [h["loss"] for h in res.history]


# ================================================================== metrics.jsonl
def test_resume_drops_records_after_the_checkpoint(tmp_path):
    """A run checkpoints at step 3, logs up to 5 and dies; the resumed run drops 4..5 and logs them anew."""
    crashed = make_trainer(tmp_path, steps=6)
    crashed.fit(batch_fn, steps=3)
    crashed.save_checkpoint(tmp_path / "tiny.pt")
    crashed.fit(batch_fn, steps=5)
    first3 = (tmp_path / "metrics.jsonl").read_text().splitlines()[:3]
    res = make_trainer(tmp_path, steps=6)
    res.load_checkpoint(tmp_path / "tiny.pt")
    res.fit(batch_fn)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[:3] == first3  # the records up to the checkpoint are kept as they were
    ref = make_trainer(tmp_path / "ref", steps=6)
    ref.fit(batch_fn)
    assert records(tmp_path / "metrics.jsonl") == records(tmp_path / "ref" / "metrics.jsonl")
    assert not list(tmp_path.glob("*.tmp"))


def test_fresh_run_replaces_its_earlier_records(tmp_path):
    """A fresh run (no checkpoint loaded) into an out_dir that holds an earlier run of the same name
    replaces that run's records; another model's records in the same file stay."""
    other = Trainer(WindowedTransformer(tiny_cfg()), TrainConfig(steps=2, batch_size=4, log_every=1, progress=False),
                    "cpu", out_dir=tmp_path, name="other")
    other.fit(batch_fn)
    make_trainer(tmp_path, steps=5).fit(batch_fn)
    make_trainer(tmp_path, steps=3).fit(batch_fn)
    recs = records(tmp_path / "metrics.jsonl")
    assert [(r["model"], r["step"]) for r in recs] == [("other", 1), ("other", 2),
                                                       ("tiny", 1), ("tiny", 2), ("tiny", 3)]


def test_manual_steps_then_log_replace_the_earlier_run(tmp_path):
    """Records are trimmed to where the run started (0 here), not to the step of the first write."""
    make_trainer(tmp_path, steps=3).fit(batch_fn)
    tr = make_trainer(tmp_path, steps=3)
    tr.log(tr.train_step(*batch_fn(0)))
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [1]


def test_torn_last_line_is_dropped(tmp_path):
    tr = make_trainer(tmp_path, steps=4)
    tr.fit(batch_fn, steps=2)
    tr.save_checkpoint(tmp_path / "tiny.pt")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"model": "tiny", "step": 3, "lo')  # a crash in the middle of a write
    res = make_trainer(tmp_path, steps=4)
    res.load_checkpoint(tmp_path / "tiny.pt")
    res.fit(batch_fn)
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.bad_input
@pytest.mark.parametrize("junk", ["not json\n", "{\"model\": \"tiny\", \"step\": 1\n"], ids=["text", "cut record"])
def test_corrupt_metrics_line_is_an_error_and_the_file_stays(tmp_path, junk):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"model": "tiny", "step": 1}\n' + junk + '{"model": "tiny", "step": 2}\n')
    tr = make_trainer(tmp_path, steps=2)
    before = snapshot(tr.model, tr.optimizer, files=[path])
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not a JSON record"):
        tr.fit(batch_fn)
    assert_unchanged(before, snapshot(tr.model, tr.optimizer, files=[path]))


def test_metrics_rewrite_is_atomic(tmp_path, monkeypatch):
    """A crash inside the rewrite (here: os.replace fails) leaves the old file whole."""
    make_trainer(tmp_path, steps=3).fit(batch_fn)
    path = tmp_path / "metrics.jsonl"
    old = path.read_bytes()

    def boom(*a):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        make_trainer(tmp_path, steps=3).fit(batch_fn)
    assert path.read_bytes() == old


# ================================================================== refused steps
def _all_ignored(step):
    tokens, targets = batch_fn(step)
    return tokens, torch.full_like(targets, IGNORE_INDEX)


def _with_target(value: int):
    tokens, targets = batch_fn(5)
    targets[0, 7] = value
    return tokens, targets


BAD_BATCHES = [
    ("every target ignored", lambda: _all_ignored(5), ValueError, "targets hold no query position at step 2"),
    ("float targets", lambda: (batch_fn(5)[0], batch_fn(5)[1].float()), TypeError, "targets must be an integer"),
    ("bool targets", lambda: (batch_fn(5)[0], batch_fn(5)[1] > 0), TypeError, "targets must be an integer"),
    ("targets of another shape", lambda: (batch_fn(5)[0], batch_fn(5)[1][:, :5]), ValueError,
     r"targets must have the shape of tokens \(4, 12\)"),
    ("target == vocab_size", lambda: _with_target(V), ValueError, r"\[0, vocab_size=20\), got values in \[\d+, 20\]"),
    ("negative target", lambda: _with_target(-1), ValueError, r"IGNORE_INDEX \(-100\) or in \[0, vocab_size"),
    ("targets as a list", lambda: (batch_fn(5)[0], batch_fn(5)[1].tolist()), TypeError, "targets must be a torch"),
    ("tokens as a list", lambda: (batch_fn(5)[0].tolist(), batch_fn(5)[1]), TypeError, "tokens must be a torch"),
    ("token out of range", lambda: (batch_fn(5)[0] + V, batch_fn(5)[1]), ValueError, "tokens must be ids"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("make, exc, match", [c[1:] for c in BAD_BATCHES], ids=[c[0] for c in BAD_BATCHES])
def test_bad_batch_refused_and_nothing_changes(make, exc, match, micro_batches):
    tr = trained(n=2, micro_batches=micro_batches)
    tokens, targets = make()
    before = snapshot(tr.model, tr.optimizer)
    with pytest.raises(exc, match=match):
        tr.train_step(tokens, targets)
    assert_unchanged(before, snapshot(tr.model, tr.optimizer))
    assert tr.step == 2


def _poison_gradient(tr: Trainer):
    """A hook that turns one parameter's gradient into NaN while the loss stays finite."""
    return tr.model.head.weight.register_hook(lambda g: torch.full_like(g, NAN))


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_non_finite_gradient_is_refused_before_the_update(amp, micro_batches):
    tr = trained(n=2, amp=amp, micro_batches=micro_batches)
    assert not tr.scaler.is_enabled()
    hook = _poison_gradient(tr)
    before = snapshot(tr.model, tr.optimizer)
    with pytest.raises(FloatingPointError, match="tiny: gradient norm is nan at step 2"):
        tr.train_step(*batch_fn(2))
    assert_unchanged(before, snapshot(tr.model, tr.optimizer))
    assert tr.step == 2
    hook.remove()
    tr.fit(batch_fn, steps=3)  # training goes on from the intact state
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_non_finite_loss_is_refused_with_everything_intact():
    tr = trained(n=1)  # in warmup: the next step would set another learning rate
    with torch.no_grad():
        tr.model.head.weight.fill_(NAN)
    before = snapshot(tr.model, tr.optimizer)
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        tr.train_step(*batch_fn(1))
    assert_unchanged(before, snapshot(tr.model, tr.optimizer))  # the learning rate included


# ================================================================== fp16 with a GradScaler (runs on CPU)
FP16 = dict(amp="fp16", model_cls=WindowedTransformer)


def test_fp16_trains_on_cpu_with_a_grad_scaler():
    """amp="fp16" is honoured on CPU: fp16 autocast and an enabled GradScaler, whose scale is logged."""
    tr = make_trainer(steps=4, **FP16)
    assert tr.dtype == torch.float16 and tr.scaler.is_enabled()
    tr.fit(batch_fn)
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert [h["grad_scale"] for h in tr.history] == [65536.0] * 4  # no step skipped
    assert all(math.isfinite(h["grad_norm"]) for h in tr.history)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_fp16_skips_a_non_finite_gradient(micro_batches):
    """Under fp16 a non-finite gradient is the GradScaler's business: the update is skipped (weights
    and optimizer moments unchanged), the scale halves, and the step counts."""
    tr = trained(n=2, micro_batches=micro_batches, **FP16)
    hook = _poison_gradient(tr)
    scale = tr.scaler.get_scale()
    weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in tr.optimizer.state_dict()["state"].items()}
    rec = tr.train_step(*batch_fn(2))
    assert tr.step == 3 and rec["grad_scale"] == scale / 2 and math.isnan(rec["grad_norm"])
    assert all(torch.equal(v, tr.model.state_dict()[k]) for k, v in weights.items())
    after = tr.optimizer.state_dict()["state"]
    assert all(torch.equal(v, after[i][k]) for i, s in moments.items() for k, v in s.items())
    hook.remove()
    rec = tr.train_step(*batch_fn(3))
    assert math.isfinite(rec["grad_norm"]) and not all(torch.equal(v, tr.model.state_dict()[k])
                                                       for k, v in weights.items())


def test_fp16_checkpoint_restores_the_scale(tmp_path):
    tr = trained(n=2, **FP16)
    hook = _poison_gradient(tr)
    scale = tr.scaler.get_scale()
    tr.train_step(*batch_fn(2))  # halves the scale
    hook.remove()
    path = tr.save_checkpoint(tmp_path / "ck.pt")
    res = make_trainer(**FP16)
    res.load_checkpoint(path)
    assert res.scaler.get_scale() == tr.scaler.get_scale() == scale / 2
    with pytest.raises(ValueError, match="amp='fp16' in the checkpoint vs 'off' here"):
        make_trainer(model_cls=WindowedTransformer, amp="off").load_checkpoint(path)
    assert make_trainer(model_cls=WindowedTransformer, amp="off").load_checkpoint(path, strict_train_config=False) == 3


def test_memnet_fp16_gradients_are_finite():
    """MemNet under fp16 autocast with a GradScaler trains: once the scale has come down from its
    start (an overflow at 65536 is the scaler's normal business) the gradients are finite and the
    weights move. The zero write keys of a window's first tokens once gave the write-key weights
    a NaN gradient at every scale, so every update was skipped."""
    tr = make_trainer(steps=8, amp="fp16")
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit(batch_fn)
    finite = [math.isfinite(h["grad_norm"]) for h in tr.history]
    assert finite[-3:] == [True] * 3, [(h["grad_scale"], h["grad_norm"]) for h in tr.history]
    assert any(not torch.equal(v, tr.model.state_dict()[k]) for k, v in before.items())


# ================================================================== SIGKILL at random points, then resume
STEPS, CKPT_EVERY = 36, 3

# Run as `python -c CHILD out_dir`: imports torch once, then, for each "run" line on stdin, forks a
# process that trains (resuming from out_dir/tiny.pt when it exists) and reports "pid N"; the forked
# process prints "start s" and "step k" before each step, and its exit status comes back as "exit c".
# Forking from a warm parent keeps ten crash-and-resume cycles to a few seconds (a fresh interpreter
# spends seconds importing torch, and torch._dynamo with the first optimizer, on a busy machine).
CHILD = f"""
import os
import sys
import traceback
from pathlib import Path

import torch

from memnet import MemNet, MemNetConfig
from memnet.metrics import IGNORE_INDEX
from memnet.train import Trainer, TrainConfig

STEPS, CKPT_EVERY = {STEPS}, {CKPT_EVERY}


def batch_fn(step):
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, 20, (4, 12), generator=g)
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, 6:] = tokens[:, :6]
    return tokens, targets


def build(out_dir):
    torch.manual_seed(0)
    cfg = MemNetConfig(vocab_size=20, d_model=16, num_slots=16, top_k=2, mem_heads=2, segment_len=4, n_layers=1,
                       n_heads=2, mlp_ratio=2)
    tc = TrainConfig(steps=STEPS, batch_size=4, lr=3e-3, warmup=3, log_every=1, ckpt_every=CKPT_EVERY,
                     progress=False)
    return Trainer(MemNet(cfg), tc, "cpu", out_dir=out_dir, name="tiny")


def train(out):
    tr = build(out)
    if (out / "tiny.pt").exists():
        tr.load_checkpoint(out / "tiny.pt")
    print("start", tr.step, flush=True)

    def marked(step):
        print("step", step, flush=True)
        return batch_fn(step)

    tr.fit(marked)
    torch.save({{"model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict()}}, out / "final.pt")
    print("done", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    build(None)  # warm the lazy imports (the first optimizer pulls in torch._dynamo: seconds)
    for command in iter(sys.stdin.readline, ""):
        if command.strip() != "run":
            break
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                train(out)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print("pid", pid, flush=True)
        print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class _Runs:
    """The forking parent of CHILD: starts one training run at a time, optionally SIGKILLs it."""

    def __init__(self, out: Path, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.pop("WORLD_SIZE", None)
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True, env=env,
                                     cwd=Path(__file__).parent)
        self.starts: list[int] = []

    def run(self, kill_at: int | None = None, delay: float = 0.0) -> tuple[int, int]:
        """One run; with `kill_at`, SIGKILL it `delay` s after it begins step `kill_at` (or a later
        one). Returns (exit code, last step begun)."""
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        pid, seen, killed = None, -1, False
        for line in iter(self.proc.stdout.readline, ""):
            word, _, value = line.partition(" ")
            if word == "pid":
                pid = int(value)
            elif word == "start":
                self.starts.append(int(value))
            elif word == "step":
                seen = int(value)
            elif word == "exit":
                return int(value), seen
            if kill_at is not None and not killed and pid is not None and seen >= kill_at:
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                killed = True
        raise AssertionError(f"the forking parent died: {self.log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    """Ten SIGKILLs of one training run, each at a step drawn from a fixed seed plus a random delay
    (so it lands anywhere in a step: forward, update, metrics append, checkpoint write); after each,
    the run resumes from its latest checkpoint (or starts afresh if there is none yet). The final
    weights and optimizer state equal an uninterrupted run's bit for bit, and metrics.jsonl holds
    the same records (wall_s aside), each step once."""
    rng = random.Random(7)
    kills = sorted(rng.sample(range(1, STEPS - 4), 10))
    delays = [rng.uniform(0.0, 0.03) for _ in kills]

    ns: dict = {"__name__": "reference"}
    exec(CHILD, ns)
    ref = ns["build"](tmp_path / "ref")
    ref.fit(ns["batch_fn"])

    out = tmp_path / "run"
    out.mkdir()
    runs = _Runs(out, tmp_path / "child.log")
    try:
        for k, delay in zip(kills, delays):
            code, seen = runs.run(kill_at=k, delay=delay)
            assert seen >= k and code == -signal.SIGKILL, \
                f"run to be killed at step {k} ended with {code}: {runs.log.read_text()[-3000:]}"
        code, seen = runs.run()
        assert code == 0 and seen == STEPS - 1, runs.log.read_text()[-3000:]
    finally:
        runs.close()
    assert len(runs.starts) == len(kills) + 1 and max(runs.starts) > 0  # later runs resumed from checkpoints

    final = torch.load(out / "final.pt", weights_only=True)
    for n, t in ref.model.state_dict().items():
        assert torch.equal(final["model"][n], t), n
    for i, s in ref.optimizer.state_dict()["state"].items():
        for k, t in s.items():
            assert torch.equal(final["optimizer"]["state"][i][k], t), (i, k)
    got, want = records(out / "metrics.jsonl"), records(tmp_path / "ref" / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == want
