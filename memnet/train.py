"""Training: AdamW with warmup and cosine decay, gradient clipping, AMP on CUDA, JSONL
(and TensorBoard, when installed) logging, resumable checkpoints, micro-batches, and
multi-process data parallelism (DDP) when launched by ``torchrun``.

The loop knows nothing about memory: it trains anything whose forward returns an
object with ``.logits`` (and, optionally, ``.aux_losses``), so MemNet and the baselines
go through the same code.

On N processes (``torchrun --nproc_per_node N ...``) the same ``Trainer(...).fit(batch_fn)``
wraps the model in DistributedDataParallel (gloo on CPU, nccl on CUDA), gives each rank
its contiguous share of every global batch, weights the masked cross-entropy by the
global number of query positions (so the N-process gradient is the single-process one),
and logs and writes checkpoints from rank 0 only. Auxiliary losses are averaged over the
shards: exact for those that are means over equal shares (pressure, read entropy), the
mean of per-shard values for batch statistics (slot utilisation), the same as a single
process with ``micro_batches=N``.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import distributed as ddp
from .metrics import IGNORE_INDEX, correct_at_queries


@dataclass
class TrainConfig:
    """Optimisation settings. ``amp``: "auto" (bf16 on CUDA when supported, else fp16; off on
    CPU), "bf16", "fp16" or "off". ``batch_size`` is the global batch (over all processes);
    ``micro_batches`` splits each process's share into that many equal pieces whose gradients
    are accumulated (same update, less activation memory)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: str = "auto"
    log_every: int = 50
    ckpt_every: int = 0  # 0: only when asked
    progress: bool = True
    micro_batches: int = 1
    find_unused_parameters: bool = False  # DDP only: set True for models where a step leaves some weights unused

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"TrainConfig.amp must be one of auto, bf16, fp16, off; got {self.amp!r}")
        for name in ("steps", "batch_size", "log_every", "micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device.

    Under a multi-process launch (torchrun, WORLD_SIZE > 1) a CUDA device without an index
    becomes ``cuda:LOCAL_RANK``: one GPU per process.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and ddp.launched_world_size() > 1:
        dev = torch.device("cuda", ddp.local_rank())
    return dev


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for `amp` on `device`, or None for full fp32."""
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over positions whose target is not IGNORE_INDEX. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def masked_cross_entropy_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed cross-entropy over positions whose target is not IGNORE_INDEX. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Trainer:
    """Train `model` on batches from ``batch_fn(step) -> (tokens, targets)``.

    Batches are a pure function of the step, so a resumed run sees the same data as an
    uninterrupted one. Metrics go to ``out_dir/metrics.jsonl`` (and TensorBoard if the
    package is installed); checkpoints hold model, optimizer, scaler, RNG and step.

    Launched by torchrun on N > 1 processes, the trainer joins the process group
    (:func:`memnet.distributed.init_from_env`), trains through DistributedDataParallel and
    lets rank 0 alone log, show progress and write files; ``self.model`` stays the plain
    module (identical on every rank after each step), so evaluation and checkpoints need
    no change. Call :meth:`fit` and :meth:`save_checkpoint` on every rank.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: str | torch.device = "auto",
                 out_dir: str | Path | None = None, name: str = "model"):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.name = name
        self.dtype = amp_dtype(self.device, cfg.amp)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "tok" not in n and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "tok" not in n and "embed" not in n)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        ddp.init_from_env(self.device)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if ddp.is_distributed():  # broadcasts rank 0's parameters, then averages gradients in backward
            gpus = None  # CPU: gloo, no device ids
            if self.device.type == "cuda":
                gpus = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=gpus,
                                                           find_unused_parameters=cfg.find_unused_parameters)
        self.is_main = ddp.is_main()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict] = []
        self._tb = None
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out_dir / "tb" / name))
            except Exception:  # tensorboard not installed: JSONL only
                self._tb = None

    # ------------------------------------------------------------------ one step
    def train_step(self, tokens: Tensor, targets: Tensor) -> dict[str, float]:
        """One optimisation step on this process's batch (its shard under DDP); returns the
        logged scalars (over the global batch under DDP)."""
        self.model.train()
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        tokens, targets = tokens.to(self.device), targets.to(self.device)
        if self.ddp is not None or self.cfg.micro_batches > 1:
            return self._accumulated_step(tokens, targets)
        with autocast(self.device, self.dtype):
            out = self.model(tokens)
            task = masked_cross_entropy(out.logits, targets)
            aux = getattr(out, "aux_losses", None) or {}
            loss = task + sum(aux.values()) if aux else task
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        gnorm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        with torch.no_grad():
            mask, ok = correct_at_queries(out.logits, targets)
            acc = (ok.sum() / mask.sum()).item() if mask.any() else float("nan")
        rec = {"step": self.step, "loss": task.item(), "acc": acc, "grad_norm": float(gnorm),
               "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({f"aux/{k}": v.item() for k, v in aux.items()})
        return rec

    def _accumulated_step(self, tokens: Tensor, targets: Tensor) -> dict[str, float]:
        """A step over W processes x M micro-batches (W*M equal chunks of the global batch).

        Objective: CE summed over all query positions / their global count, plus each
        auxiliary loss averaged over the chunks. Each chunk back-propagates
        ``W * ce_sum / count + aux / M``; DDP's mean over ranks then yields that objective's
        gradient. One all-reduce of the count before, one of the logged sums after.
        """
        W, M = ddp.world_size(), self.cfg.micro_batches
        if tokens.shape[0] % M != 0:
            raise ValueError(f"TrainConfig.micro_batches ({M}) must divide this process's batch "
                             f"({tokens.shape[0]} rows)")
        count = ddp.all_reduce_sum((targets != IGNORE_INDEX).sum().to(torch.float64))
        scale = (W / count).float()  # nan/inf when the global batch holds no query: caught below
        self.optimizer.zero_grad(set_to_none=True)
        ce_sum = correct = n_mask = torch.zeros((), dtype=torch.float64, device=self.device)
        aux_sum: dict[str, Tensor] = {}
        for i, (tok, tgt) in enumerate(zip(tokens.chunk(M), targets.chunk(M))):
            last = i == M - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.dtype):
                    out = (self.model if self.ddp is None else self.ddp)(tok)
                    task = masked_cross_entropy_sum(out.logits, tgt)
                    aux = getattr(out, "aux_losses", None) or {}
                    loss = task * scale + (sum(aux.values()) / M if aux else 0.0)
                self.scaler.scale(loss).backward()
            with torch.no_grad():
                mask, ok = correct_at_queries(out.logits, tgt)
                ce_sum = ce_sum + task.detach().double()
                correct, n_mask = correct + ok.sum(), n_mask + mask.sum()
                for k, v in aux.items():
                    aux_sum[k] = aux_sum.get(k, 0.0) + v.detach().double()
        keys = sorted(aux_sum)
        stats = ddp.all_reduce_sum(torch.stack([ce_sum, correct, n_mask] + [aux_sum[k] for k in keys]))
        task_mean = stats[0] / count
        aux_mean = {k: stats[3 + j] / (W * M) for j, k in enumerate(keys)}
        total = task_mean + sum(aux_mean.values())  # the same on every rank: all raise together
        if not torch.isfinite(total):
            raise FloatingPointError(f"{self.name}: loss is {total.item()} at step {self.step}")
        self.scaler.unscale_(self.optimizer)
        gnorm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)  # of the averaged gradient
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        acc = (stats[1] / stats[2]).item() if stats[2] > 0 else float("nan")
        rec = {"step": self.step, "loss": task_mean.item(), "acc": acc, "grad_norm": float(gnorm),
               "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({f"aux/{k}": v.item() for k, v in aux_mean.items()})
        return rec

    def fit(self, batch_fn: Callable[..., tuple[Tensor, Tensor]], steps: int | None = None,
            sharded: bool = False) -> list[dict]:
        """Train until ``steps`` (default ``cfg.steps``) total steps; returns the logged history.

        ``batch_fn(step)`` returns the global batch; under DDP each rank keeps its contiguous
        share (:func:`memnet.distributed.shard`; rows must divide by the world size). With
        ``sharded=True``, ``batch_fn(step, rank, world_size)`` returns this rank's share itself.
        """
        steps = self.cfg.steps if steps is None else steps
        bar = None
        if self.cfg.progress and self.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, initial=self.step, desc=self.name, leave=False)
        t0 = time.perf_counter()
        while self.step < steps:
            if sharded:
                batch = batch_fn(self.step, ddp.rank(), ddp.world_size())
            else:
                batch = batch_fn(self.step)
                if self.ddp is not None:
                    batch = ddp.shard(batch)
            rec = self.train_step(*batch)
            if self.step % self.cfg.log_every == 0 or self.step == steps:
                rec["wall_s"] = time.perf_counter() - t0
                self.log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.2f}")
            if self.cfg.ckpt_every and self.out_dir is not None and self.step % self.cfg.ckpt_every == 0:
                self.save_checkpoint(self.out_dir / f"{self.name}.pt")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return self.history

    def log(self, rec: dict) -> None:
        """Append a record to the history (every rank), metrics.jsonl and TensorBoard (rank 0)."""
        rec = {"model": self.name, **rec}
        self.history.append(rec)
        if not self.is_main:
            return
        if self.out_dir is not None:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, rec["step"])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": self.step, "rng_cpu": torch.get_rng_state(),
                 "train_config": asdict(self.cfg)}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write model, optimizer, scaler, RNG state and step to `path` (atomically). Under DDP
        rank 0 writes and every rank waits for it, so call it on every rank."""
        path = Path(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            torch.save(self.state_dict(), tmp)
            tmp.replace(path)
        if self.ddp is not None:
            ddp.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore everything `save_checkpoint` wrote (loaded with weights_only=True); returns the step.
        Under DDP every rank loads the same file, so the replicas stay identical."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        return self.step
