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

Faults: a rejected step (a batch without query positions, a non-finite loss or gradient)
raises before the optimizer changes anything, and leaves the weights, their ``.grad`` and
the optimizer as they were. Checkpoints are written atomically and carry a format version
and the model and training configs; :meth:`Trainer.load_checkpoint` checks all of it before
it changes any state, and restores the previous state if applying fails part-way. A run
killed at any point and resumed from its latest checkpoint ends with the same weights as an
uninterrupted one (bit for bit where the kernels are deterministic: same device and thread
count) and the same ``metrics.jsonl`` records (``wall_s`` aside).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import distributed as ddp
from .metrics import IGNORE_INDEX, correct_at_queries

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout written by :meth:`Trainer.save_checkpoint`."""

CHECKPOINT_KEYS = frozenset({"format", "model_class", "model_config", "train_config", "model", "optimizer",
                             "scaler", "step", "rng_cpu"})
"""Keys every checkpoint of :data:`CHECKPOINT_FORMAT` holds (``rng_cuda`` is optional)."""

RESUME_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "min_lr_ratio", "grad_clip", "amp",
                 "micro_batches")
"""TrainConfig fields that shape the optimisation trajectory. By default a checkpoint resumes only into
a trainer whose config agrees on all of them (``steps`` included: it sets the cosine schedule), so the
resumed run is the uninterrupted one; the other fields (logging, checkpoint period, progress display, DDP
flag) may differ. ``load_checkpoint(path, strict_train_config=False)`` resumes with this trainer's
settings instead (another lr, a longer schedule, ...)."""


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"TrainConfig.{name} must be an int >= {lo}, got {type(v).__name__} ({v!r})")
    if v < lo:
        raise ValueError(f"TrainConfig.{name} must be an int >= {lo}, got {v}")
    return int(v)


def _check_float(name: str, v: Any, lo: float, hi: float = math.inf, lo_open: bool = False, alt: str = "") -> float:
    want = f"a finite number {'>' if lo_open else '>='} {lo}" + ("" if hi == math.inf else f" and <= {hi}") + alt
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"TrainConfig.{name} must be {want}, got {type(v).__name__} ({v!r})")
    v = float(v)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v > hi:
        raise ValueError(f"TrainConfig.{name} must be {want}, got {v}")
    return v


@dataclass
class TrainConfig:
    """Optimisation settings, each checked in ``__post_init__`` (a bad value raises TypeError or
    ValueError naming the field and what it must be; int-like and float-like values are stored as
    plain int and float).

    - ``steps`` (int >= 1): length of the schedule, and of :meth:`Trainer.fit` by default.
    - ``batch_size`` (int >= 1): the global batch (over all processes); a multiple of ``micro_batches``.
    - ``lr`` (finite > 0), ``weight_decay`` (finite >= 0, on matrices other than embeddings),
      ``warmup`` (int >= 0 steps of linear warmup), ``min_lr_ratio`` (in [0, 1]: the cosine floor).
    - ``grad_clip``: finite > 0, the largest global gradient norm; None turns clipping off (the norm
      is still computed, logged and checked to be finite).
    - ``amp``: "auto" (bf16 on CUDA when supported, else fp16; off on CPU), "bf16", "fp16" (a
      GradScaler scales the loss; on CPU too) or "off".
    - ``log_every`` (int >= 0): log every that many steps (0: only the last step of each ``fit``);
      ``ckpt_every`` (int >= 0): write ``out_dir/<name>.pt`` every that many steps (0: only when asked).
    - ``micro_batches`` (int >= 1): splits each process's share into that many equal pieces whose
      gradients are accumulated (same update, less activation memory).
    - ``progress``, ``find_unused_parameters`` (DDP only: set True for models where a step leaves some
      weights unused): bools.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    amp: str = "auto"
    log_every: int = 50
    ckpt_every: int = 0  # 0: only when asked
    progress: bool = True
    micro_batches: int = 1
    find_unused_parameters: bool = False  # DDP only: set True for models where a step leaves some weights unused

    def __post_init__(self) -> None:
        if not isinstance(self.amp, str) or self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"TrainConfig.amp must be one of auto, bf16, fp16, off; got {self.amp!r}")
        for name, lo in (("steps", 1), ("batch_size", 1), ("warmup", 0), ("log_every", 0), ("ckpt_every", 0),
                         ("micro_batches", 1)):
            setattr(self, name, _check_int(name, getattr(self, name), lo))
        self.lr = _check_float("lr", self.lr, 0.0, lo_open=True)
        self.weight_decay = _check_float("weight_decay", self.weight_decay, 0.0)
        self.min_lr_ratio = _check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        if self.grad_clip is not None:
            self.grad_clip = _check_float("grad_clip", self.grad_clip, 0.0, lo_open=True, alt=" (or None: no clipping)")
        for name in ("progress", "find_unused_parameters"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainConfig.{name} must be a bool, got {type(getattr(self, name)).__name__} "
                                f"({getattr(self, name)!r})")
        if self.batch_size % self.micro_batches != 0:
            raise ValueError(f"TrainConfig.micro_batches ({self.micro_batches}) must divide batch_size "
                             f"({self.batch_size})")


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


def model_config_dict(model: nn.Module) -> dict | None:
    """The config of `model` as plain JSON data (dicts, lists, str, numbers, None): ``model.cfg``
    through ``dataclasses.asdict`` (or its ``to_dict()``), None for a model without one. This is what
    a checkpoint stores and what :meth:`Trainer.load_checkpoint` compares field by field."""
    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        d = dataclasses.asdict(cfg)
    elif callable(getattr(cfg, "to_dict", None)):
        d = cfg.to_dict()
    else:
        return None
    return json.loads(json.dumps(d, default=repr))  # canonical: tuples -> lists, odd objects -> repr


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write `path` through ``write(binary_file)`` into a temporary file next to it, flushed to disk,
    then moved over `path` (``os.replace``): a crash leaves the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every file system)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Trainer:
    """Train `model` on batches from ``batch_fn(step) -> (tokens, targets)``.

    Batches are a pure function of the step, so a resumed run sees the same data as an
    uninterrupted one. Metrics go to ``out_dir/metrics.jsonl`` (and TensorBoard if the
    package is installed); checkpoints hold model, optimizer, scaler, RNG, step, the model's
    and the training config and a format version (:data:`CHECKPOINT_FORMAT`).

    ``metrics.jsonl`` holds one run per model ``name``: several trainers may share an
    ``out_dir``, each record names its model. When a trainer first writes to the file (and
    again after each :meth:`load_checkpoint`), the records of its name with a step above the
    step its run started from are dropped by an atomic rewrite (temporary file + ``os.replace``):
    a fresh run (step 0) replaces its name's earlier run, a run resumed from a checkpoint at
    step s keeps the records up to s and drops those logged after s by the run that wrote the
    checkpoint (and went on, or crashed). A last line cut short by a crash is dropped too.

    Launched by torchrun on N > 1 processes, the trainer joins the process group
    (:func:`memnet.distributed.init_from_env`), trains through DistributedDataParallel and
    lets rank 0 alone log, show progress and write files; ``self.model`` stays the plain
    module (identical on every rank after each step), so evaluation and checkpoints need
    no change. Call :meth:`fit` and :meth:`save_checkpoint` on every rank.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: str | torch.device = "auto",
                 out_dir: str | Path | None = None, name: str = "model"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"Trainer: cfg must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"Trainer: name must be a non-empty string, got {name!r}")
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
        self._run_start = 0  # the step this trainer's run started from: 0, or a loaded checkpoint's
        self._metrics_ready = False  # metrics.jsonl trimmed to _run_start (see the class docstring)
        self._tb = None
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out_dir / "tb" / name))
            except Exception:  # tensorboard not installed: JSONL only
                self._tb = None

    # ------------------------------------------------------------------ one step
    def _check_batch(self, tokens: Tensor, targets: Tensor) -> None:
        """Reject a batch the loss cannot use, before any state changes (the model checks the ids in `tokens`)."""
        if not isinstance(tokens, Tensor):
            raise TypeError(f"{self.name}: tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if not isinstance(targets, Tensor):
            raise TypeError(f"{self.name}: targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
            raise TypeError(f"{self.name}: targets must be an integer tensor (class ids or IGNORE_INDEX="
                            f"{IGNORE_INDEX}), got {targets.dtype}")
        if targets.shape != tokens.shape:
            raise ValueError(f"{self.name}: targets must have the shape of tokens {tuple(tokens.shape)}, "
                             f"got {tuple(targets.shape)}")
        self._check_target_range(targets, None)

    def _check_target_range(self, targets: Tensor, n_classes: int | None) -> None:
        """Targets are IGNORE_INDEX or class ids in [0, n_classes) (the logits' last size; None: only
        the lower end, checked before the forward)."""
        kept = targets[targets != IGNORE_INDEX]
        if kept.numel() and (kept.min() < 0 or (n_classes is not None and kept.max() >= n_classes)):
            vocab = getattr(getattr(self.model, "cfg", None), "vocab_size", None)
            if isinstance(vocab, int) and n_classes in (None, vocab):
                upper = f"vocab_size={vocab}"
            else:
                upper = "the number of classes" if n_classes is None else f"{n_classes} (the logits' last size)"
            raise ValueError(f"{self.name}: targets must be IGNORE_INDEX ({IGNORE_INDEX}) or in [0, {upper}), "
                             f"got values in [{kept.min().item()}, {kept.max().item()}]")

    def _no_queries(self) -> ValueError:
        return ValueError(f"{self.name}: targets hold no query position at step {self.step} (every target is "
                          f"IGNORE_INDEX={IGNORE_INDEX}): the loss is undefined, so the step is refused")

    def _finish_step(self, gnorm: Tensor) -> None:
        """After backward and unscaling: refuse non-finite gradients (without a GradScaler, which
        skips such steps itself), else set the step's learning rate and update the weights."""
        if not self.scaler.is_enabled() and not torch.isfinite(gnorm):
            raise FloatingPointError(f"{self.name}: gradient norm is {float(gnorm)} at step {self.step}; "
                                     "the weights were not updated")
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1

    def _record(self, loss: float, acc: float, gnorm: Tensor, aux: dict[str, Tensor]) -> dict[str, float]:
        rec = {"step": self.step, "loss": loss, "acc": acc, "grad_norm": float(gnorm),
               "lr": self.optimizer.param_groups[0]["lr"]}
        if self.scaler.is_enabled():
            rec["grad_scale"] = self.scaler.get_scale()
        rec.update({f"aux/{k}": v.item() for k, v in aux.items()})
        return rec

    def train_step(self, tokens: Tensor, targets: Tensor) -> dict[str, float]:
        """One optimisation step on this process's batch (its shard under DDP); returns the
        logged scalars (over the global batch under DDP).

        Refused, with the weights, their ``.grad``, the optimizer and the step left as they were:
        targets that are not an integer tensor of the tokens' shape (TypeError/ValueError); a batch
        whose targets are all IGNORE_INDEX (ValueError naming ``targets``: the loss is undefined); a
        non-finite loss, or, without a GradScaler (fp32, bf16), a non-finite gradient
        (FloatingPointError naming the step). Under fp16 the GradScaler handles non-finite gradients
        as usual: it skips the optimizer update, lowers its scale (logged as ``grad_scale``) and the
        step counts.
        """
        self._check_batch(tokens, targets)
        tokens, targets = tokens.to(self.device), targets.to(self.device)
        params = list(self.model.parameters())
        grads = [p.grad for p in params]
        self.model.train()
        try:
            if self.ddp is not None or self.cfg.micro_batches > 1:
                return self._accumulated_step(tokens, targets)
            if not (targets != IGNORE_INDEX).any():
                raise self._no_queries()
            with autocast(self.device, self.dtype):
                out = self.model(tokens)
                self._check_target_range(targets, out.logits.shape[-1])
                task = masked_cross_entropy(out.logits, targets)
                aux = getattr(out, "aux_losses", None) or {}
                loss = task + sum(aux.values()) if aux else task
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.name}: loss is {loss.item()} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            gnorm = self._clip()
            self._finish_step(gnorm)
        except BaseException:
            for p, g in zip(params, grads):  # a refused step leaves the previous gradients
                p.grad = g
            raise
        with torch.no_grad():
            mask, ok = correct_at_queries(out.logits, targets)
            acc = (ok.sum() / mask.sum()).item() if mask.any() else float("nan")
        return self._record(task.item(), acc, gnorm, aux)

    def _clip(self) -> Tensor:
        """Clip the global gradient norm to ``grad_clip`` (None: no clipping); returns the norm."""
        max_norm = math.inf if self.cfg.grad_clip is None else self.cfg.grad_clip
        return nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

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
        if count == 0:  # the global count: every rank refuses together
            raise self._no_queries()
        scale = (W / count).float()
        self.optimizer.zero_grad(set_to_none=True)
        ce_sum = correct = n_mask = torch.zeros((), dtype=torch.float64, device=self.device)
        aux_sum: dict[str, Tensor] = {}
        for i, (tok, tgt) in enumerate(zip(tokens.chunk(M), targets.chunk(M))):
            last = i == M - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.dtype):
                    out = (self.model if self.ddp is None else self.ddp)(tok)
                    if i == 0:  # every chunk's targets, before any backward
                        self._check_target_range(targets, out.logits.shape[-1])
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
        gnorm = self._clip()  # of the averaged gradient: the same on every rank
        self._finish_step(gnorm)
        acc = (stats[1] / stats[2]).item() if stats[2] > 0 else float("nan")
        return self._record(task_mean.item(), acc, gnorm, aux_mean)

    def fit(self, batch_fn: Callable[..., tuple[Tensor, Tensor]], steps: int | None = None,
            sharded: bool = False) -> list[dict]:
        """Train until ``steps`` (default ``cfg.steps``) total steps; returns the logged history.

        ``batch_fn(step)`` returns the global batch; under DDP each rank keeps its contiguous
        share (:func:`memnet.distributed.shard`; rows must divide by the world size). With
        ``sharded=True``, ``batch_fn(step, rank, world_size)`` returns this rank's share itself.
        A step is logged when it is a multiple of ``log_every`` and at the end; a checkpoint
        (``out_dir/<name>.pt``) is written after the step's record, so a checkpoint at step s
        always follows the records up to s in ``metrics.jsonl``.
        """
        if not callable(batch_fn):
            raise TypeError(f"fit: batch_fn must be callable, got {type(batch_fn).__name__}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)):
            raise TypeError(f"fit: steps must be None or an int >= 0, got {type(steps).__name__} ({steps!r})")
        if steps is not None and steps < 0:
            raise ValueError(f"fit: steps must be None or an int >= 0, got {steps}")
        steps = self.cfg.steps if steps is None else int(steps)
        self._prepare_metrics()
        ticker = None
        if self.cfg.progress and self.is_main:
            from tqdm.auto import tqdm
            ticker = tqdm(total=steps, initial=min(self.step, steps), desc=self.name, leave=False)
        t0 = time.perf_counter()
        while self.step < steps:
            if sharded:
                batch = batch_fn(self.step, ddp.rank(), ddp.world_size())
            else:
                batch = batch_fn(self.step)
                if self.ddp is not None:
                    batch = ddp.shard(batch)
            rec = self.train_step(*batch)
            if (self.cfg.log_every and self.step % self.cfg.log_every == 0) or self.step == steps:
                rec["wall_s"] = time.perf_counter() - t0
                self.log(rec)
                if ticker is not None:
                    ticker.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.2f}")
            if self.cfg.ckpt_every and self.out_dir is not None and self.step % self.cfg.ckpt_every == 0:
                self.save_checkpoint(self.out_dir / f"{self.name}.pt")
            if ticker is not None:
                ticker.update(1)
        if ticker is not None:
            ticker.close()
        return self.history

    def _prepare_metrics(self) -> None:
        """Trim ``metrics.jsonl`` to the step this run started from, once (see the class docstring)."""
        if self._metrics_ready or self.out_dir is None or not self.is_main:
            return
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            text = path.read_text()
            lines = text.split("\n")
            torn = lines[-1] != ""  # a last line without its newline: a write cut short, dropped
            lines = lines[:-1]
            keep: list[str] = []
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {i + 1}, is not a JSON record ({e}); move the file away "
                                     "or repair it") from e
                if (isinstance(rec, dict) and rec.get("model") == self.name and isinstance(rec.get("step"), int)
                        and rec["step"] > self._run_start):
                    continue
                keep.append(line)
            if torn or len(keep) != len(lines):
                new = "".join(line + "\n" for line in keep).encode()
                _atomic_write(path, lambda f: f.write(new))
        self._metrics_ready = True

    def log(self, rec: dict) -> None:
        """Append a record to the history (every rank), metrics.jsonl and TensorBoard (rank 0)."""
        rec = {"model": self.name, **rec}
        self.history.append(rec)
        if not self.is_main:
            return
        if self.out_dir is not None:
            self._prepare_metrics()
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, rec["step"])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a checkpoint holds: format version, model class and config, train config,
        model, optimizer and scaler state, step and RNG state (plain data and tensors only, so it
        loads with ``weights_only=True``)."""
        state = {"format": CHECKPOINT_FORMAT, "model_class": type(self.model).__name__,
                 "model_config": model_config_dict(self.model), "train_config": asdict(self.cfg),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": self.step, "rng_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to `path` atomically (temporary file, flushed to disk, then
        ``os.replace``: a crash leaves the previous checkpoint intact). Under DDP rank 0 writes and
        every rank waits for it, so call it on every rank."""
        path = Path(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = self.state_dict()
            _atomic_write(path, lambda f: torch.save(state, f))
        if self.ddp is not None:
            ddp.barrier()
        return path

    def load_checkpoint(self, path: str | Path, strict_train_config: bool = True) -> int:
        """Restore everything :meth:`save_checkpoint` wrote (loaded with ``weights_only=True``);
        returns the step. Under DDP every rank loads the same file, so the replicas stay identical.

        Everything is checked before any state changes: the file is a checkpoint of
        :data:`CHECKPOINT_FORMAT` (ValueError otherwise: not a checkpoint, truncated, no or a newer
        format, missing or unknown keys); it was written for this model class and the same model
        config, field by field (ValueError naming the differing fields); its train config is valid
        and, with ``strict_train_config`` (the default), agrees with this trainer's on
        :data:`RESUME_FIELDS` (ValueError naming them; pass False to resume with this trainer's
        settings: its lr schedule, weight decay, clipping and amp then apply from the next step);
        every model tensor has this model's name, shape and dtype, and the parameters are finite;
        the optimizer state matches this optimizer's groups and parameter shapes; the step is an
        int >= 0; the RNG state is a uint8 tensor of the right size. Then the state is applied; if
        that fails part-way, the previous state (model, optimizer, scaler, step, RNG) is restored
        before the error propagates. ``metrics.jsonl`` is trimmed to the loaded step at the next write.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"load_checkpoint: path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(strict_train_config, bool):
            raise TypeError(f"load_checkpoint: strict_train_config must be a bool, got {strict_train_config!r}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (FileNotFoundError, IsADirectoryError, PermissionError):  # the plain error says it
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable content is "not a checkpoint"
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise ValueError(f"load_checkpoint: {path} is not a readable Trainer checkpoint "
                             f"({type(e).__name__}: {msg})") from e
        checked = self._check_checkpoint(state, str(path), strict_train_config)
        backup = self._backup()
        try:
            self._apply(checked)
        except BaseException:
            self._apply(backup)
            raise
        self.history = [h for h in self.history if not (isinstance(h.get("step"), int) and h["step"] > self.step)]
        self._run_start = self.step
        self._metrics_ready = False
        return self.step

    def _backup(self) -> dict:
        """Copies of the state :meth:`load_checkpoint` changes, in the form :meth:`_apply` takes."""
        b = {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
             "optimizer": copy.deepcopy(self.optimizer.state_dict()), "scaler": self.scaler.state_dict(),
             "step": self.step, "rng_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            b["rng_cuda"] = torch.cuda.get_rng_state_all()
        return b

    def _apply(self, s: dict) -> None:
        """Set model, optimizer, scaler, step and RNG from a checked state (or a :meth:`_backup`)."""
        self.model.load_state_dict(s["model"], strict=True)
        self.optimizer.load_state_dict(s["optimizer"])
        for g, wd in zip(self.optimizer.param_groups, (self.cfg.weight_decay, 0.0)):
            g["weight_decay"] = wd  # this trainer's (equal to the checkpoint's unless resumed non-strictly)
        if self.scaler.is_enabled() and s["scaler"]:
            self.scaler.load_state_dict(s["scaler"])
        torch.set_rng_state(s["rng_cpu"].cpu())
        if "rng_cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in s["rng_cuda"]])
        self.step = s["step"]

    def _check_checkpoint(self, state: Any, where: str, strict_train_config: bool) -> dict:
        """Validate a loaded checkpoint against this trainer (see :meth:`load_checkpoint`); returns it."""
        def bad(msg: str) -> ValueError:
            return ValueError(f"load_checkpoint: {where}: {msg}")

        if not isinstance(state, dict):
            raise bad(f"not a Trainer checkpoint: holds a {type(state).__name__}, expected a dict")
        if "format" not in state:
            raise bad("not a Trainer checkpoint of a known format: no 'format' key (written by an older "
                      f"version, or not by Trainer.save_checkpoint); this version reads format {CHECKPOINT_FORMAT}")
        fmt = state["format"]
        if isinstance(fmt, bool) or not isinstance(fmt, int):
            raise bad(f"'format' must be an int, got {fmt!r}")
        if fmt != CHECKPOINT_FORMAT:
            newer = " (newer than this code)" if fmt > CHECKPOINT_FORMAT else ""
            raise bad(f"checkpoint format {fmt}{newer} is not supported; this version reads format {CHECKPOINT_FORMAT}")
        missing = sorted(CHECKPOINT_KEYS - state.keys())
        unknown = sorted(map(str, state.keys() - CHECKPOINT_KEYS - {"rng_cuda"}))
        if missing or unknown:
            raise bad(f"not a complete Trainer checkpoint: missing keys {missing}, unknown keys {unknown}")

        # the model: class and config
        cls = type(self.model).__name__
        if state["model_class"] != cls:
            raise bad(f"written for a {state['model_class']!r} model, this trainer trains a {cls!r}")
        mine, theirs = model_config_dict(self.model), state["model_config"]
        if mine != theirs:
            if not isinstance(mine, dict) or not isinstance(theirs, dict):
                raise bad(f"model config {theirs!r} in the checkpoint, {mine!r} here")
            absent = "<absent>"
            diff = [k for k in sorted(mine.keys() | theirs.keys()) if mine.get(k, absent) != theirs.get(k, absent)]
            raise bad("written for another model config; differing fields: " + ", ".join(
                f"{k}={theirs.get(k, absent)!r} in the checkpoint vs {mine.get(k, absent)!r} here" for k in diff))

        # the train config
        tc = state["train_config"]
        if not isinstance(tc, dict):
            raise bad(f"train_config must be a dict of TrainConfig fields, got {type(tc).__name__}")
        try:
            theirs_tc = TrainConfig(**tc)
        except (TypeError, ValueError) as e:
            raise bad(f"train_config is not a valid TrainConfig: {e}") from e
        if strict_train_config:
            diff = [f for f in RESUME_FIELDS if getattr(theirs_tc, f) != getattr(self.cfg, f)]
            if diff:
                raise bad("written with other optimisation settings; differing TrainConfig fields: " + ", ".join(
                    f"{f}={getattr(theirs_tc, f)!r} in the checkpoint vs {getattr(self.cfg, f)!r} here" for f in diff)
                    + " (pass strict_train_config=False to resume with this trainer's settings)")

        # model tensors
        sd, expected = state["model"], self.model.state_dict()
        if not isinstance(sd, dict):
            raise bad(f"'model' must be a dict of tensors, got {type(sd).__name__}")
        missing = sorted(expected.keys() - sd.keys())
        unknown = sorted(map(str, sd.keys() - expected.keys()))
        if missing or unknown:
            raise bad(f"model tensors do not match this model: missing {missing[:8]}, unexpected {unknown[:8]}")
        params = {n for n, _ in self.model.named_parameters()}
        for k, ref in expected.items():
            t = sd[k]
            if not isinstance(t, Tensor):
                raise bad(f"model tensor {k!r} must be a tensor, got {type(t).__name__}")
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise bad(f"model tensor {k!r} has shape {tuple(t.shape)} and dtype {t.dtype}; this model "
                          f"expects shape {tuple(ref.shape)} and dtype {ref.dtype}")
            if k in params and t.is_floating_point() and not torch.isfinite(t).all():
                raise bad(f"model parameter {k!r} holds non-finite values")

        self._check_optimizer_state(state["optimizer"], bad)

        sc = state["scaler"]
        scaler_keys = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
        if not isinstance(sc, dict) or (sc and (sc.keys() != scaler_keys or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in sc.values())
                or not sc["scale"] > 0)):
            raise bad(f"'scaler' must be a GradScaler state (empty, or finite {sorted(scaler_keys)} with scale > 0), "
                      f"got {sc!r}")

        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise bad(f"'step' must be an int >= 0, got {step!r}")
        rng = state["rng_cpu"]
        ref = torch.get_rng_state()
        if not isinstance(rng, Tensor) or rng.dtype != torch.uint8 or rng.shape != ref.shape:
            desc = f"{rng.dtype} tensor of shape {tuple(rng.shape)}" if isinstance(rng, Tensor) else type(rng).__name__
            raise bad(f"'rng_cpu' must be a uint8 tensor of shape {tuple(ref.shape)}, got a {desc}")
        if "rng_cuda" in state:
            rc = state["rng_cuda"]
            if not isinstance(rc, (list, tuple)) or not all(isinstance(t, Tensor) and t.dtype == torch.uint8
                                                            for t in rc):
                raise bad("'rng_cuda' must be a list of uint8 tensors")
        return state

    def _check_optimizer_state(self, opt: Any, bad: Callable[[str], ValueError]) -> None:
        """The optimizer state must fit this AdamW: same groups and parameter indices, and for each
        parameter with state a scalar step >= 0 and finite moments of the parameter's shape and dtype."""
        mine = self.optimizer.state_dict()
        if not isinstance(opt, dict) or set(opt) != {"state", "param_groups"}:
            raise bad("'optimizer' must be an optimizer state dict with keys 'state' and 'param_groups'")
        groups = opt["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(mine["param_groups"]):
            raise bad(f"optimizer state has {len(groups) if isinstance(groups, list) else groups!r} parameter "
                      f"groups, this optimizer {len(mine['param_groups'])}")
        by_index: dict[int, tuple[Tensor, dict]] = {}
        for i, (g, ref, live) in enumerate(zip(groups, mine["param_groups"], self.optimizer.param_groups)):
            if not isinstance(g, dict) or g.get("params") != ref["params"]:
                raise bad(f"optimizer parameter group {i} does not hold this optimizer's parameters "
                          f"(indices {ref['params'][:4]}...)")
            for key in ("lr", "weight_decay", "eps"):
                v = g.get(key)
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                    raise bad(f"optimizer parameter group {i}: {key!r} must be a finite number >= 0, got {v!r}")
            betas = g.get("betas")
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                    and all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)):
                raise bad(f"optimizer parameter group {i}: 'betas' must be two numbers in [0, 1), got {betas!r}")
            for idx, p in zip(ref["params"], live["params"]):
                by_index[idx] = (p, g)
        st = opt["state"]
        if not isinstance(st, dict):
            raise bad(f"optimizer 'state' must be a dict, got {type(st).__name__}")
        for idx, s in st.items():
            if idx not in by_index:
                raise bad(f"optimizer state for parameter index {idx!r}, which this optimizer does not have")
            p, g = by_index[idx]
            want = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if g.get("amsgrad") else set())
            if not isinstance(s, dict) or set(s) != want:
                got = sorted(s) if isinstance(s, dict) else type(s).__name__
                raise bad(f"optimizer state of parameter {idx} must hold {sorted(want)}, got {got}")
            step = s["step"]
            step_v = step.item() if isinstance(step, Tensor) and step.numel() == 1 else step
            if (isinstance(step_v, bool) or not isinstance(step_v, numbers.Real) or not math.isfinite(step_v)
                    or step_v < 0):
                raise bad(f"optimizer state of parameter {idx}: 'step' must be a number >= 0, got {step!r}")
            for k in want - {"step"}:
                t = s[k]
                if not isinstance(t, Tensor) or t.shape != p.shape or t.dtype != p.dtype:
                    desc = f"shape {tuple(t.shape)}, {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                    raise bad(f"optimizer state of parameter {idx}: {k!r} must be a tensor of shape "
                              f"{tuple(p.shape)}, {p.dtype}; got {desc}")
                if not torch.isfinite(t).all():
                    raise bad(f"optimizer state of parameter {idx}: {k!r} holds non-finite values")
