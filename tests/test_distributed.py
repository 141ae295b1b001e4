"""Multi-process training: helpers, and a 2-process gloo DDP run (torchrun) that must agree
with a single process on the same global batches.

The 2-process run launches this file as a script under ``torchrun --standalone`` (a free
port on localhost, gloo on CPU); the workers write their results to a temporary folder
and the test compares them with single-process runs made here.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memnet import MemNet, MemNetConfig
from memnet import distributed as ddp
from memnet.losses import utilization_loss
from memnet.metrics import IGNORE_INDEX
from memnet.tasks import KeyValueRecall
from memnet.train import Trainer, TrainConfig, resolve_device

TASK = KeyValueRecall(n_keys=6, n_values=5, n_distractors=5, n_pairs=2, segment_len=6)
STEPS, GLOBAL_BATCH, WORLD = 4, 8, 2
UTIL = 0.01  # MemNetConfig's default slot-utilisation weight


def _cfg(util_weight: float) -> MemNetConfig:
    return MemNetConfig(vocab_size=TASK.vocab_size, d_model=16, num_slots=8, top_k=2, mem_heads=2,
                        segment_len=6, n_heads=2, n_layers=1, util_weight=util_weight)


def _batch_fn(step: int):
    """The global batch: a pure function of the step. The first row keeps one query only, so the
    two shards hold different numbers of query positions (per-shard mean losses would disagree)."""
    b = TASK.sample(GLOBAL_BATCH, 18, seed=1000 + step)
    targets = b.targets.clone()
    first = (targets[0] != IGNORE_INDEX).nonzero()[0, 0]
    targets[0, first + 1:] = IGNORE_INDEX
    return b.tokens, targets


def _trainer(util_weight: float, micro_batches: int = 1, out_dir=None, ckpt_every: int = 0) -> Trainer:
    torch.manual_seed(0)
    tc = TrainConfig(steps=STEPS, batch_size=GLOBAL_BATCH, lr=3e-3, warmup=1, log_every=1, progress=False,
                     micro_batches=micro_batches, ckpt_every=ckpt_every)
    return Trainer(MemNet(_cfg(util_weight)), tc, "cpu", out_dir=out_dir, name="tiny")


def _worker(out: Path) -> None:
    """Runs on every rank under torchrun; each rank saves what the test compares."""
    signal.alarm(WORKER_DEADLINE_S)
    torch.set_num_threads(1)
    assert ddp.init_from_env("cpu") and ddp.world_size() == WORLD
    r = ddp.rank()
    # A: auxiliary weights 0 -> the objective decomposes exactly; checkpoint at step 2, then go on
    tr = _trainer(0.0, out_dir=out / "A", ckpt_every=STEPS)
    tr.fit(_batch_fn, steps=STEPS // 2)
    tr.save_checkpoint(out / "A_half.pt")
    tr.fit(_batch_fn)
    torch.save({"params": tr.model.state_dict(), "history": tr.history}, out / f"A_rank{r}.pt")
    # A resumed from the half-way checkpoint by a fresh trainer on both ranks
    res = _trainer(0.0)
    res.load_checkpoint(out / "A_half.pt")
    res.fit(_batch_fn)
    torch.save({"params": res.model.state_dict()}, out / f"A_resumed_rank{r}.pt")
    # B: the default slot-utilisation weight (a batch statistic: averaged over the shards)
    tb = _trainer(UTIL)
    tb.fit(_batch_fn)
    torch.save({"params": tb.model.state_dict(), "history": tb.history}, out / f"B_rank{r}.pt")
    ddp.cleanup()


# ----------------------------------------------------------------------------- helpers, one process
def test_backend_choice():
    assert ddp.backend_for("cpu") == "gloo"
    assert ddp.backend_for(torch.device("cuda", 1)) == "nccl"


def test_single_process_defaults_without_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.init_from_env("cpu") is False  # not launched by torchrun: nothing to initialise
    assert (ddp.rank(), ddp.world_size(), ddp.is_main(), ddp.is_distributed()) == (0, 1, True, False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ddp.init_from_env("cpu") is False
    ddp.barrier()  # no-ops
    ddp.cleanup()
    x = torch.arange(3.0)
    assert torch.equal(ddp.all_reduce_sum(x.clone()), x)


def test_init_from_env_rejects_incomplete_or_bad_settings(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="RANK is not set: launch with torchrun"):
        ddp.init_from_env("cpu")
    with pytest.raises(ValueError, match="backend"):
        ddp.init_from_env("cpu", backend="mpi")
    with pytest.raises(ValueError, match="timeout_s"):
        ddp.init_from_env("cpu", timeout_s=0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        ddp.launched_world_size()


def test_resolve_device_gives_each_process_its_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_device("cuda") == torch.device("cuda")


def test_shard_splits_the_global_batch_into_contiguous_equal_parts():
    x, y = torch.arange(12).view(6, 2), torch.arange(6)
    parts = [ddp.shard((x, y), r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert parts[1][1].tolist() == [2, 3]
    assert torch.equal(ddp.shard((x,))[0], x)  # one process keeps the whole batch
    with pytest.raises(ValueError, match="divisible"):
        ddp.shard((x,), 0, 4)
    with pytest.raises(ValueError, match="same batch size"):
        ddp.shard((x, y[:5]), 0, 2)
    with pytest.raises(ValueError, match="rank"):
        ddp.shard((x,), 2, 2)
    with pytest.raises(TypeError, match="tensors"):
        ddp.shard([], 0, 1)


@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3))
def test_shards_over_all_ranks_rebuild_the_batch(world, rows_per_rank, width):
    x = torch.randn(world * rows_per_rank, width)
    parts = [ddp.shard((x, x.sum(1)), r, world) for r in range(world)]
    assert all(p[0].shape[0] == rows_per_rank for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), x)


@given(st.integers(2, 4), st.integers(2, 12), st.integers(0, 10_000))
def test_shard_averaged_utilisation_loss_is_within_log_w_above_the_global_one(world, slots, seed):
    """Why the 2-process run may differ with util_weight > 0: for shards of equal read mass,
    the global mean read weight is the mean of the shards', and the entropy is concave, so
    util(global) <= mean_r util(shard r) <= util(global) + log W (Jensen; mixing W
    distributions adds at most log W of entropy)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(world, slots, generator=g) ** 4  # uneven read mass per slot and shard
    w = w / w.sum(1, keepdim=True)
    whole = utilization_loss(w.sum(0)).item()
    per_shard = sum(utilization_loss(w[r]).item() for r in range(world)) / world
    assert whole - 1e-5 <= per_shard <= whole + math.log(world) + 1e-5


# ----------------------------------------------------------------------------- two processes
LAUNCH_TIMEOUT_S = 180  # the run takes ~30 s on 2 busy cores
WORKER_DEADLINE_S = LAUNCH_TIMEOUT_S + 20  # a worker that outlives its launcher dies by SIGALRM


def launch(script: str, args: list[str], timeout_s: float, nproc: int = WORLD) -> tuple[int, str]:
    """Run `script` under torchrun on `nproc` local processes (a free port on localhost);
    returns (exit code, stdout + stderr). On timeout the launcher gets SIGTERM, which it
    forwards to its workers, then SIGKILL; the test fails instead of hanging."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), script, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"torchrun {script} timed out after {timeout_s} s:\n{out[-6000:]}")
    return proc.returncode, out

def _params_close(a: dict, b: dict, atol: float) -> float:
    """Largest absolute difference over all parameters; asserts it is within atol."""
    worst = 0.0
    for n in a:
        d = (a[n].float() - b[n].float()).abs().max().item()
        worst = max(worst, d)
        assert d <= atol, f"{n}: max |diff| {d:.2e} > {atol:.0e}"
    return worst


def test_two_process_gloo_ddp_agrees_with_one_process(tmp_path):
    rc, out = launch(__file__, [str(tmp_path)], timeout_s=LAUNCH_TIMEOUT_S)
    assert rc == 0, out[-6000:]

    # tolerance: the two paths add the same float32 numbers in a different order (per-shard sums,
    # gloo's all-reduce, DDP's mean), ~1e-7 relative per step; AdamW's first steps are about
    # lr * sign(g) (lr = 3e-3) wherever |g| >> eps, so 4 steps stay ~1e-6 apart.
    tol = 2e-5
    load = lambda name: torch.load(tmp_path / name, weights_only=True)
    a0, a1 = load("A_rank0.pt"), load("A_rank1.pt")
    for n in a0["params"]:  # the replicas are identical: same averaged gradient, same update
        assert torch.equal(a0["params"][n], a1["params"][n]), n
    ref = _trainer(0.0)
    ref.fit(_batch_fn)
    worst_a = _params_close(a0["params"], ref.model.state_dict(), tol)
    for h, g in zip(a0["history"], ref.history, strict=True):  # the same global loss, accuracy, grad norm
        assert h["loss"] == pytest.approx(g["loss"], abs=1e-5) and h["acc"] == pytest.approx(g["acc"], abs=1e-6)
        assert h["grad_norm"] == pytest.approx(g["grad_norm"], rel=1e-4)

    # resume: a fresh 2-process trainer from the step-2 checkpoint ends where the uninterrupted run did
    _params_close(load("A_resumed_rank0.pt")["params"], a0["params"], 1e-6)
    _params_close(load("A_resumed_rank1.pt")["params"], a0["params"], 1e-6)

    # rank 0 alone writes: one line per step (not two), one checkpoint
    lines = (tmp_path / "A" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (tmp_path / "A").iterdir() if p.suffix == ".pt") == ["tiny.pt"]

    # B, slot-utilisation loss on: it is an entropy of the batch's summed read mass, which does not
    # decompose over shards. DDP optimises the mean of the per-shard losses, exactly what one process
    # does with micro_batches=2 ...
    b0 = load("B_rank0.pt")
    micro = _trainer(UTIL, micro_batches=WORLD)
    micro.fit(_batch_fn)
    worst_b = _params_close(b0["params"], micro.model.state_dict(), tol)
    # ... and, as H is concave and the shards carry equal mass (Jensen), that mean lies above the
    # global-batch loss by at most util_weight * log(W). Step 1 starts from the same parameters.
    whole = _trainer(UTIL)
    whole.fit(_batch_fn, steps=1)
    gap = b0["history"][0]["aux/utilization"] - whole.history[0]["aux/utilization"]
    print(f"max |param diff| vs one process: {worst_a:.1e} (aux off), {worst_b:.1e} (util on, micro_batches=2); "
          f"utilisation gap at step 1: {gap:.2e} (bound {UTIL * math.log(WORLD):.2e})")
    assert 0 < gap <= UTIL * math.log(WORLD) + 1e-7, gap
    assert b0["history"][0]["loss"] == pytest.approx(whole.history[0]["loss"], abs=1e-5)  # CE still agrees


if __name__ == "__main__":  # a worker under torchrun (see the test above)
    _worker(Path(sys.argv[1]))
