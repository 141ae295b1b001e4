"""Trainer: losses, learning-rate schedule, AMP selection, checkpoints that resume exactly."""
import json

import pytest
import torch

from memnet import MemNet, MemNetConfig
from memnet.metrics import IGNORE_INDEX
from memnet.tasks import KeyValueRecall
from memnet.train import Trainer, TrainConfig, amp_dtype, lr_at, masked_cross_entropy

TASK = KeyValueRecall(n_keys=6, n_values=5, n_distractors=5, n_pairs=2, segment_len=6)


def tiny_cfg():
    return MemNetConfig(vocab_size=TASK.vocab_size, d_model=16, num_slots=8, top_k=2, mem_heads=2,
                        segment_len=6, n_heads=2)


def batch_fn(step):
    b = TASK.sample(4, 18, seed=step)
    return b.tokens, b.targets


def make_trainer(tmp_path=None, steps=6):
    torch.manual_seed(0)
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, log_every=1, progress=False)
    return Trainer(MemNet(tiny_cfg()), tc, "cpu", out_dir=tmp_path, name="tiny")


def test_masked_cross_entropy_ignores_non_query_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = 10.0
    targets = torch.tensor([[-100, 2, -100]])
    assert masked_cross_entropy(logits, targets).item() < 1e-3
    logits[0, 0, 0] = 50.0  # a confident wrong answer at an ignored position changes nothing
    assert masked_cross_entropy(logits, targets).item() < 1e-3


def test_lr_schedule_warms_up_then_decays_to_floor():
    tc = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(100, tc) == pytest.approx(0.1)
    assert lr_at(55, tc) < lr_at(20, tc)


def test_amp_dtype_off_on_cpu_by_default():
    assert amp_dtype(torch.device("cpu"), "auto") is None
    assert amp_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert amp_dtype(torch.device("cpu"), "off") is None


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_training_writes_jsonl_and_lowers_loss(tmp_path):
    tr = make_trainer(tmp_path, steps=40)
    hist = tr.fit(batch_fn)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[-1])["step"] == 40
    first = sum(h["loss"] for h in hist[:5]) / 5
    last = sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first
    assert all("aux/utilization" in h for h in hist)


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    full = make_trainer(steps=6)
    full.fit(batch_fn)

    part = make_trainer(steps=6)
    part.fit(batch_fn, steps=3)
    path = part.save_checkpoint(tmp_path / "ck.pt")
    state = torch.load(path, weights_only=True)  # everything in it loads without pickle
    assert state["step"] == 3

    resumed = make_trainer(steps=6)
    assert resumed.load_checkpoint(path) == 3
    resumed.fit(batch_fn)
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_nan_loss_is_an_error():
    tr = make_trainer(steps=1)
    with torch.no_grad():
        tr.model.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss"):
        tr.fit(batch_fn)


# ----------------------------------------------------------------------------- micro-batches, one process
def uneven_batch_fn(step):
    """Rows hold different numbers of query positions (the first row keeps one), so per-chunk
    mean losses would not average to the batch mean."""
    tokens, targets = batch_fn(step)
    targets = targets.clone()
    targets[0, (targets[0] != IGNORE_INDEX).nonzero()[0, 0] + 1:] = IGNORE_INDEX
    return tokens, targets


def make_micro_trainer(micro_batches, util_weight=0.0, steps=4):
    torch.manual_seed(0)
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, log_every=1, progress=False,
                     micro_batches=micro_batches)
    cfg = MemNetConfig(**{**tiny_cfg().to_dict(), "util_weight": util_weight})
    return Trainer(MemNet(cfg), tc, "cpu", name="tiny")


def test_micro_batches_give_the_whole_batch_update():
    """CE is weighted by the batch's query count, so 2 accumulated halves = 1 whole batch
    (float summation order aside) when no batch-level auxiliary loss is on."""
    whole, halves = make_micro_trainer(1), make_micro_trainer(2)
    whole.fit(uneven_batch_fn)
    halves.fit(uneven_batch_fn)
    for (n, a), (_, b) in zip(whole.model.state_dict().items(), halves.model.state_dict().items()):
        assert torch.allclose(a, b, atol=2e-5, rtol=0), n
    for h, g in zip(whole.history, halves.history):
        assert h["loss"] == pytest.approx(g["loss"], abs=1e-5) and h["acc"] == pytest.approx(g["acc"], abs=1e-6)


def test_micro_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match="micro_batches"):
        TrainConfig(micro_batches=0)
    with pytest.raises(ValueError, match="micro_batches"):
        TrainConfig(batch_size=4, micro_batches=3)  # the configured batch does not split into 3 pieces
    torch.manual_seed(0)
    tr = Trainer(MemNet(tiny_cfg()), TrainConfig(steps=4, batch_size=6, micro_batches=3, progress=False), "cpu")
    with pytest.raises(ValueError, match="micro_batches"):
        tr.fit(batch_fn)  # batch_fn's 4 rows do not split into 3 equal pieces


def test_nan_loss_is_an_error_with_micro_batches():
    tr = make_micro_trainer(2)
    with torch.no_grad():
        tr.model.head.weight.fill_(float("nan"))
    before = {n: p.clone() for n, p in tr.model.named_parameters()}
    with pytest.raises(FloatingPointError, match="loss"):
        tr.fit(batch_fn)
    assert tr.step == 0  # no update was applied
    assert all(torch.equal(p, before[n]) for n, p in tr.model.named_parameters() if n != "head.weight")


def test_single_process_step_is_the_plain_adamw_loop():
    """Without a process group the trainer is exactly (bit for bit) a plain loop: masked CE +
    aux, backward, clip, AdamW with the schedule; no DDP wrapper, no sharding."""
    tr = make_trainer(steps=3)
    assert tr.ddp is None and tr.is_main
    torch.manual_seed(0)
    model = MemNet(tiny_cfg())
    decays = {n: p.dim() >= 2 and "tok" not in n and "embed" not in n for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if decays[n]],
                              "weight_decay": tr.cfg.weight_decay},
                             {"params": [p for n, p in model.named_parameters() if not decays[n]],
                              "weight_decay": 0.0}], lr=tr.cfg.lr)
    for step in range(3):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tr.cfg)
        out = model(batch_fn(step)[0])
        loss = masked_cross_entropy(out.logits, batch_fn(step)[1]) + sum(out.aux_losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr.cfg.grad_clip)
        opt.step()
    tr.fit(batch_fn)
    for (n, a), (_, b) in zip(model.state_dict().items(), tr.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_sharded_batch_fn_gets_rank_and_world_size():
    seen = []

    def shard_fn(step, rank, world):
        seen.append((step, rank, world))
        return batch_fn(step)

    make_trainer(steps=2).fit(shard_fn, sharded=True)
    assert seen == [(0, 0, 1), (1, 0, 1)]
