"""Experiment 2: continual learning under distribution shift (class-incremental streams).

Two streams of five tasks with two new classes each, one shared 10-way label space and no task
id at test time: Split-Digits (scikit-learn's 8x8 digits) and Shifting-Prototypes (synthetic,
the token statistics move with every task). Every model is trained on tasks 1..T in order and
evaluated on every task after each one, filling the accuracy matrix ``R[i, j]``.

What persists across tasks, and what resets:

- ``memnet``: the weights persist; every task gets a fresh AdamW and learning-rate schedule
  (as every other model). On task t MemNet meta-trains on *episodes of task t only*: support
  items with labels, then queries, labels freshly permuted per episode (MANN), each episode
  starting from a copy of the carried memory (``train_with_memory``; False: from an empty one),
  so new queries learn to pass over the old tasks' slots. Half of every batch
  (``instance_share``) are instead self-supervised *instance* episodes on the same task's items:
  each support item its own class, the queries perturbed copies of them
  (:meth:`memnet.tasks.stream.TaskStream.instance_episodes`), which train keys that separate
  items rather than only the task's two classes. After training on task t the carried
  keys are moved by the drift of the key encoder over task t, a linear map fitted on task t's
  own training items (``realign``; :func:`memnet.continual.fit_key_map`), and then
  ``support_per_class`` training items of each of its classes (true labels) are streamed into
  the carried memory, which persists across tasks and is never reset. Every evaluation reads a
  copy of it (a query never changes it). Only the last token of a segment writes, and keys and
  queries address by the item alone (:func:`memnet.continual.stream_memnet`).
- ``memnet_replay``: the learned-address MemNet that keeps its memory readable while it keeps
  learning. Every weight trains on every task, on episodes (labelled and instance) drawn from
  the task's items and from a bounded raw buffer of earlier items (``replay_per_class`` per class
  seen, class-balanced reservoir, :mod:`memnet.replay`); with ``key_anchor`` > 0 a penalty holds
  the buffer items' keys near their keys at the start of the task. After each task the buffer
  takes the task's items and the memory is rebuilt from the buffer by the current weights
  (re-keying). It stores the bank and the raw buffer (``memory_bytes``).
- ``memnet_reset`` (ablation): the same weights at every step of the stream, but the carried
  memory is cleared at each task boundary, so it only ever holds the current task.
- ``memnet_unaligned`` (ablation, with ``realign``): the same weights, the memory carried as
  written, with no drift compensation.
- ``memnet_frozen`` (ablation): the weights as they were after the first task, every later task
  learned only by writing its support items into the carried memory: no parameter drift at all,
  and no training on the later classes either.
- ``memnet_rewrite`` (diagnostic, not a continual method: it re-reads old training data): the
  same weights with a memory refilled from the support items of tasks 0..i by the *current*
  weights: what perfect drift compensation would reach. ``key_drift`` reports the cosine between
  carried (realigned) and rewritten keys.
- ``memnet_fixed``: MemNet whose keys and queries are a fixed function of the item
  (:class:`memnet.continual.FixedAddress` of the stream's :meth:`~memnet.tasks.stream.TaskStream.symbol_code`:
  on the digits, the pixel vector itself), so no training step can make an old key stale. It
  meta-trains on the first task's episodes only (on a small bank: ``fixed_train_slots``), then its
  weights never change again; every task's training items (``fixed_support_per_class``, default
  all of them) are streamed into one carried memory sized to hold the whole stream, without decay.
  Later tasks are learned by writing alone. ``memnet_fixed_reset`` (ablation): the same weights,
  the memory cleared at every task boundary.
- ``windowed`` / ``lstm``: WindowedTransformer and LSTMBaseline fine-tuned sequentially as plain
  classifiers (item tokens then QUERY -> label): the lower bounds; nothing but weights persists.
- ``er_windowed`` / ``er_lstm``: the same with experience replay (Chaudhry et al. 2019): every
  batch of the current task is joined by as many items from a buffer (reservoir or
  class-balanced, ``er_policy``) that holds as many bytes as memnet_replay stores, or every
  training item when fewer fill them (``er_per_class`` sets the items per class instead).
- ``knn`` / ``ncm``: no network: a cosine-weighted vote of the ``knn_k`` nearest, or the nearest
  class mean, over memnet_replay's buffer of items under the stream's fixed code.
- ``*_joint``: the same models trained once on all tasks' data together (MemNet: episodes over all
  classes and a memory filled from all tasks' support items; ``memnet_fixed_joint``: the same, on
  its small training bank, then its full memory), each for as many steps as it trains in the
  stream (``memnet_fixed_joint``: the first task's): the upper bounds, one final row.

Accuracy is argmax over the 10 label tokens (class-incremental). Every configuration (learning
rate, ER policy, key anchor, k) is chosen on validation items carved from the training items
(``val_fraction``) before any test accuracy is read (:func:`run`); the memory-budget axis
(``budgets``) runs memnet_replay, ER and kNN at several items per class with the chosen
configurations. Stored under data/continual/<profile>/ with provenance; every job's result is
cached under its ``runs/`` first, so a killed run resumes where it stopped. A result that lacks runs of the stored results.json
(fewer streams, models or seeds) does not replace it: it is stored, with its traces, in
``partial/`` of that folder. Worker processes end when the run's process dies.

    python -m memnet.experiments.continual --profile laptop   # 2 worker processes, one thread each
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..baselines import LSTMBaseline, WindowedTransformer, count_params
from ..config import MemNetConfig
from ..continual import (accuracy_matrix, fit_key_map, forgetting, max_drop, realign_keys, segment_keys,
                         slot_owner_over_time, stream_memnet)
from ..continual import summarize as matrix_summary
from ..memory import MemoryState, WriteRequest
from ..model import MemNet
from ..peers import memnet_state_bytes
from ..replay import ReplayBuffer
from ..tasks.digits import SplitDigits
from ..tasks.shift import ShiftingPrototypes
from ..tasks.stream import TaskStream
from ..trace import MemoryTrace
from ..train import Trainer, TrainConfig, amp_dtype, autocast, resolve_device
from .common import (DATA_DIR, DistinctList, Verdict, cached_record, check_device, check_names, check_out, check_seeds,
                     done_line, experiment_parser, git_commit, format_table, mean_ci, positive_int, provenance, result_folder, save_torch,
                     seed_everything, t_interval, worker_pool, writable_folder, write_json)

SEQUENTIAL = ("memnet", "memnet_replay", "memnet_fixed", "windowed", "lstm", "er_windowed", "er_lstm")
JOINT = ("memnet_joint", "memnet_fixed_joint", "windowed_joint", "lstm_joint")
REFERENCES = ("knn", "ncm")  # no network: votes over the stored items' fixed codes
BUDGET_MODELS = ("memnet_replay", "er_windowed", "er_lstm", "knn")  # the models of the memory-budget axis
DERIVED = ("memnet_reset", "memnet_rewrite", "memnet_frozen")  # computed along the memnet run, no extra training
MEMNETS = ("memnet", "memnet_fixed")  # the runs that make derived variants (memnet_fixed_reset, ...)
DERIVED_OF = {"memnet": ("memnet",) + DERIVED + ("memnet_unaligned",), "memnet_fixed": ("memnet_fixed", "memnet_fixed_reset")}
STREAMS = ("digits", "shift")


@dataclass
class Profile:
    """Everything a profile fixes: model size, streams, memory budget, training budget."""

    d_model: int = 32
    n_layers: int = 1
    n_heads: int = 4
    num_slots: int = 128
    top_k: int = 4
    mem_heads: int = 4
    decay_init: float = 10.0  # retention sigmoid(10) = 0.99995 per segment: a stream is hundreds of segments
    train_with_memory: bool = True  # MemNet's episodes on task t start from the carried memory (False: empty)
    instance_share: float = 0.5  # share of MemNet's episodes that are self-supervised instance episodes
    instance_noise: int = 2  # their perturbation strength (TaskStream.perturb)
    restrict_labels: bool = False  # permute task t's labels only among labels no earlier task used
    write_threshold: float = 0.01  # every item's write claims its slot (see make_config)
    digits_pool: int = 2  # 2: 4x4 images (16 tokens); 1: the full 8x8 (64 tokens)
    support_per_class: int | None = 10  # items per class streamed into the carried memory after each task (None: all)
    fixed_support_per_class: int | None = None  # the same for the fixed-address MemNet (None: every training item)
    fixed_train_slots: int = 64  # the fixed-address MemNet trains on episodes with a bank this small
    n_support: int = 6  # meta-training episode: support segments ...
    n_query: int = 6  # ... then query segments
    episode_batch: int = 16
    memnet_steps: tuple = (120, 60)  # MemNet: steps on the first task, on each later task (0: no training)
    realign: bool = True  # after each later task, move the carried keys by the drift measured on that task's items
    realign_ridge: float = 0.1  # pull of the drift map towards the identity (memnet.continual.fit_key_map)
    clf_steps: int = 150  # baselines: steps per task (cheap: enough that the joint upper bound is trained,
    # not left at an easy-to-reach 60-70%)
    clf_batch: int = 32
    lr: float = 3e-3  # the learning rate of a run (the grid ``lrs`` sets it per run)
    replay_per_class: int = 10  # memnet_replay: its raw buffer holds this many items per class seen (class-balanced)
    er_policy: str = "balanced"  # er_*: the buffer's policy (memnet.replay), chosen on validation among er_policies
    key_anchor: float = 0.0  # memnet_replay: weight of the key-consistency penalty on its buffer's items (KeyAnchored)
    er_per_class: int | None = None  # er_*: items per class its buffer holds (None: as many bytes as memnet_replay's)
    knn_k: int = 3  # knn: neighbours that vote, chosen on validation among knn_ks
    val_fraction: float = 0.2  # share of every class's training items held out for validation
    lrs: tuple = (1e-3, 3e-3, 1e-2)  # every trained model's learning rate is chosen among these on validation ...
    lrs_more: tuple = (3e-2,)  # ... and these, in turn, while its best rate so far is the largest tried
    er_policies: tuple = ("reservoir", "balanced")
    key_anchors: tuple = (0.0, 10.0)
    knn_ks: tuple = (1, 3, 5)
    sweep_seeds: tuple = (0,)  # the seeds whose validation accuracy chooses each model's configuration
    budgets: tuple = (10, 30, None)  # items per class stored, the memory-budget axis (None: every training item)
    budget_streams: tuple = ("digits",)
    seeds: tuple = (0, 1, 2)
    streams: tuple = STREAMS
    models: tuple = SEQUENTIAL + JOINT + REFERENCES
    eval_chunk: int = 128
    workers: int = 2  # processes running (stream, seed, model) jobs side by side on a CPU (one thread each)


PROFILES = {
    "smoke": Profile(d_model=16, num_slots=64, support_per_class=3, fixed_support_per_class=3, fixed_train_slots=16,
                     n_support=4, n_query=2, episode_batch=4,
                     memnet_steps=(3, 2), clf_steps=3, clf_batch=8, seeds=(0,), replay_per_class=3, lrs=(3e-3,),
                     lrs_more=(), er_policies=("balanced",), key_anchors=(10.0,), knn_ks=(3,), budgets=(3,),
                     models=SEQUENTIAL + ("windowed_joint", "lstm_joint") + REFERENCES, workers=1),
    "laptop": Profile(streams=("digits",), budgets=(10, 30)),
    "full": Profile(sweep_seeds=(0, 1, 2)),
    "gpu": Profile(d_model=64, n_layers=2, num_slots=256, digits_pool=1, support_per_class=20, n_support=10,
                   n_query=10, episode_batch=64, memnet_steps=(1500, 500), clf_steps=300, clf_batch=64,
                   seeds=(0, 1, 2, 3, 4), eval_chunk=512),
}


def make_stream(name: str, p: Profile, seed: int) -> TaskStream:
    """The stream ``name`` with its train/test split fixed by ``seed``."""
    if name == "digits":
        return SplitDigits(n_tasks=5, seed=seed, pool=p.digits_pool, val_fraction=p.val_fraction)
    if name == "shift":
        return ShiftingPrototypes(n_tasks=5, seed=seed, val_fraction=p.val_fraction)
    raise ValueError(f"stream must be one of {STREAMS}, got {name!r}")


def support_count(stream: TaskStream, per_class: int | None) -> int:
    """How many support items a stream writes with ``per_class`` items per class (None: every training item)."""
    return stream.items(None, "train")[1].size if per_class is None else stream.n_classes * per_class


def make_config(p: Profile, stream: TaskStream) -> MemNetConfig:
    """One config for every model of a stream: one item (+ label/QUERY) per window, one write per window.

    A write whose strength stays below ``write_threshold`` is no write event: its slot keeps its
    age, stays the stalest, and the next item is allocated to it again. With the default 0.5 and
    gates that hover around 0.5, a carried memory keeps only a fraction of the items streamed into
    it; the profile's low threshold makes every item's write claim its own slot."""
    needed = max(support_count(stream, p.support_per_class), stream.n_classes * p.replay_per_class)
    if needed > p.num_slots:
        raise ValueError(f"num_slots ({p.num_slots}) must hold every support item of the stream and the replay buffer "
                         f"({needed})")
    return MemNetConfig(vocab_size=stream.vocab_size, d_model=p.d_model, n_layers=p.n_layers, n_heads=p.n_heads,
                        num_slots=p.num_slots, top_k=p.top_k, mem_heads=p.mem_heads, segment_len=stream.segment_len,
                        writes_per_segment=1, decay_init=p.decay_init, write_threshold=p.write_threshold)


def build(name: str, cfg: MemNetConfig, stream: TaskStream) -> torch.nn.Module:
    """The untrained model ``name`` (``*_joint`` builds the same model) for ``stream``."""
    base = name.removesuffix("_joint").removeprefix("er_")
    if base in ("memnet", "memnet_replay"):
        return stream_memnet(cfg)
    if base == "memnet_fixed":
        return stream_memnet(cfg, address="fixed", code=stream.symbol_code())
    return {"windowed": WindowedTransformer, "lstm": LSTMBaseline}[base](cfg)


# ---------------------------------------------------------------------------- memory
def expand_state(state: MemoryState, n: int) -> MemoryState:
    """A (1, ...) memory state copied to n batch rows."""
    return MemoryState.cat([state] * n)


def fill(model: MemNet, stream: TaskStream, x: np.ndarray, y: np.ndarray, memory: MemoryState | None,
         device: torch.device) -> tuple[MemoryState, MemoryTrace]:
    """Stream support items (with their labels) into `memory` (a fresh one when None): one segment
    per item, batch 1. Returns the new state and the trace of the writes."""
    (state,), trace = fill_each(model, stream, x, y, [memory], device)
    return state, trace


@torch.no_grad()
def fill_each(model: MemNet, stream: TaskStream, x: np.ndarray, y: np.ndarray, memories: list[MemoryState | None],
              device: torch.device) -> tuple[list[MemoryState], MemoryTrace]:
    """:func:`fill` of the same items into several (1, ...) memories (None: a fresh one) in one call,
    one batch row each: rows never interact, so each state is what its own fill would give (up to
    float rounding), for the cost of about one fill. Returns the states and the first row's trace."""
    if not memories:
        raise ValueError("memories must name at least one memory (None for a fresh one)")
    model.eval()
    tok = stream.support_tokens(x, y).to(device)
    rows = [m if m is not None else model.initial_state(1, device) for m in memories]
    out = model(tok.expand(len(rows), -1), memory=MemoryState.cat(rows), return_trace=True)
    states = [out.memory.rows(b, b + 1) for b in range(len(rows))]
    return states, MemoryTrace(**{k: v[:1] for k, v in out.trace.as_dict().items()})


@torch.no_grad()
def query_logits(model: MemNet, tokens: Tensor, memory: MemoryState) -> Tensor:
    """Logits (n, V) at the last token of n one-window query sequences (n, L <= segment_len) that
    all read one (1, N, D) memory: ``model(tokens, memory=expand_state(memory, n)).logits[:, -1]``
    without copying the memory n times, reading it for the other tokens or computing the writes that
    call would throw away (a window reads the memory as it stood before the window, so one read of
    the shared bank by the n last tokens is all the answer needs; with ``cfg.window_reads`` each row
    also weighs its own window's earlier writes, over a broadcast view of the bank)."""
    n, L = tokens.shape
    if L > model.cfg.segment_len or memory.keys.shape[0] != 1:
        raise ValueError(f"tokens must be one window per row (L <= {model.cfg.segment_len}) and memory one sequence's "
                         f"(batch 1); got tokens {tuple(tokens.shape)}, memory batch {memory.keys.shape[0]}")
    state = model.memory.check_state(memory, 1)
    ws = model.signals(tokens, state.segments.expand(n))  # the window's code counts from the memory's windows
    q = ws.sig.read_query[:, 0, -1]  # (n, H, Dm) the last token's queries
    if model.cfg.window_reads:  # the last token also reads its window's earlier writes: one bank view per row
        mine = WriteRequest(*(t[:, 0] for t in (ws.key, ws.value, ws.gate, ws.erase, ws.update, ws.sig.decay)),
                            pos=ws.pos[:, 0] - (L - 1))  # offsets relative to the reading token
        vectors = model.memory.read(state.expand(n), q.unsqueeze(1), mine).vectors  # (n, 1, H, Dm)
    else:
        vectors = model.memory.read(state, q.unsqueeze(0)).vectors.view(n, 1, *q.shape[1:])  # one read of the bank
    return model._logits(ws.h[:, :, -1:], vectors.unsqueeze(1), 1)[:, -1]  # reads (n, 1, 1, H, Dm)


@torch.no_grad()
def accuracy(model: torch.nn.Module, stream: TaskStream, task: int, device: torch.device, amp: str,
             memory: MemoryState | None = None, chunk: int = 128, split: str = "test") -> float:
    """Accuracy on `task`'s items of `split` (test by default), argmax over every label token (no
    task id). MemNet reads a copy of `memory` per query; the memory a query writes is thrown away."""
    model.eval()
    x, y = stream.items(task, split)
    tok, _ = stream.query_tokens(x, y)
    labels = stream.label_tokens.to(device)
    ok = 0
    with autocast(device, amp_dtype(device, amp)):
        for i in range(0, tok.shape[0], chunk):
            t = tok[i:i + chunk].to(device)
            if isinstance(model, MemNet):
                logits = query_logits(model, t, memory if memory is not None else model.initial_state(1, device))
            else:
                logits = model(t).logits[:, -1]
            pred = logits[:, labels].argmax(-1).cpu().numpy()  # (n,) class index
            ok += int((pred == y[i:i + chunk]).sum())
    return ok / len(y)


def evaluate(model: torch.nn.Module, stream: TaskStream, device: torch.device, amp: str,
             memory: MemoryState | None = None, chunk: int = 128) -> dict[str, list[float]]:
    """:func:`accuracy` on every task, on its test and its validation items: {"test": (T,), "val": (T,)}
    (no validation items: "val" is empty)."""
    out = {"test": [accuracy(model, stream, j, device, amp, memory, chunk) for j in range(stream.n_tasks)], "val": []}
    if stream.items(None, "val")[1].size:
        out["val"] = [accuracy(model, stream, j, device, amp, memory, chunk, "val") for j in range(stream.n_tasks)]
    return out


def track_items(slot_item: np.ndarray, trace, first_id: int) -> np.ndarray:
    """Update ``slot_item`` (N,), the id of the item last *allocated* to each slot (-1: none), with a
    fill's trace, whose segment s carried item ``first_id + s``. An item is lost from the bank when a
    later item is allocated to its slot (content-addressed updates blend into a slot, they do not
    take it over)."""
    slot_item = slot_item.copy()
    alloc = trace.write_alloc[0].cpu().numpy()  # (S, W) with W = 1
    for s in range(alloc.shape[0]):
        slot_item[alloc[s]] = first_id + s
    return slot_item


def slot_events(rec: dict) -> Tensor:
    """(S, N) bool write events of a stored fill record (``write_alloc``, ``write_event`` (S,);
    N from its ``slot_owner`` (T, N)): segment s wrote item s into slot ``write_alloc[s]``, a write
    event when ``write_event[s]``."""
    alloc, event = rec["write_alloc"].long(), rec["write_event"].bool()
    ev = torch.zeros(alloc.shape[0], rec["slot_owner"].shape[1], dtype=torch.bool)
    ev[torch.arange(alloc.shape[0]), alloc] = event
    return ev


def item_keys(model: MemNet, stream: TaskStream, x: np.ndarray, y: np.ndarray, device: torch.device) -> Tensor:
    """(n, Dm) the keys the current weights would store items ``x`` (n, P) with classes ``y`` under
    (their support segments, one window each)."""
    return segment_keys(model, stream.support_tokens(x, y).view(len(y), -1).to(device))


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine similarity between matching rows of (n, D) ``a`` and ``b``."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def matrices(rows: list[dict]) -> dict:
    """The accuracy matrices of a run from its :func:`evaluate` rows (one per task trained):
    ``R`` on the test items and ``R_val`` on the validation items (omitted without them)."""
    out = {"R": [r["test"] for r in rows]}
    if all(r["val"] for r in rows):
        out["R_val"] = [r["val"] for r in rows]
    return out


def key_cosine(a: MemoryState, a_items: np.ndarray, b: MemoryState, b_items: np.ndarray, ids: np.ndarray) -> float:
    """Mean cosine similarity between the keys that hold the same items in two (1, N, D) states;
    only items present in both count (NaN when none is)."""
    sims = []
    for i in ids:
        sa, sb = np.flatnonzero(a_items == i), np.flatnonzero(b_items == i)
        if sa.size and sb.size:
            sims.append(float(F.cosine_similarity(a.keys[0, sa[-1]], b.keys[0, sb[-1]], dim=0)))
    return float(np.mean(sims)) if sims else float("nan")


# ---------------------------------------------------------------------------- training
def train_config(p: Profile, steps: int, amp: str, progress: bool, lr: float | None = None) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=p.episode_batch, lr=p.lr if lr is None else lr, warmup=min(10, steps), amp=amp,
                       log_every=max(1, steps // 5), progress=progress)


class KeyAnchored(torch.nn.Module):
    """`net` (a MemNet, or a :class:`WithMemory` around one) whose output carries one more
    auxiliary loss: ``weight`` times the mean of ``1 - cos`` between the keys the current weights
    give the anchor segments (n, L) and ``targets`` (n, Dm), their keys when the task began. The
    penalty keeps the key encoder from moving the stored items while it learns the new ones."""

    def __init__(self, net: torch.nn.Module, model: MemNet, anchors: Tensor, targets: Tensor, weight: float):
        super().__init__()
        self.net, self.model, self.weight = net, model, float(weight)
        self.anchors, self.targets = anchors, targets.detach()

    def forward(self, tokens: torch.Tensor):
        out = self.net(tokens)
        keys = self.model.signals(self.anchors).key[:, 0, 0].float()  # (n, Dm) with gradients
        drift = 1 - F.cosine_similarity(keys, self.targets, dim=-1).mean()
        out.aux_losses = {**out.aux_losses, "key_anchor": self.weight * drift}
        return out


class WithMemory(torch.nn.Module):
    """`model` whose every sequence starts from a copy of a fixed memory state (the carried memory):
    what MemNet meta-trains through on a later task. Its parameters are the model's."""

    def __init__(self, model: MemNet, memory: MemoryState):
        super().__init__()
        self.model, self.state = model, memory.detach()

    def forward(self, tokens: torch.Tensor):
        return self.model(tokens, memory=expand_state(self.state, tokens.shape[0]))


def train_on(model, p: Profile, stream: TaskStream, task: int | None, steps: int, seed: int, device, amp: str,
             progress: bool, name: str, memory: MemoryState | None = None,
             label_pool: list[int] | None = None, lr: float | None = None,
             replay: tuple[np.ndarray, np.ndarray] | None = None, anchor_weight: float = 0.0) -> list[dict]:
    """Train `model` on `task` (all tasks when None) with a fresh optimizer for `steps` steps (0: not
    at all) at learning rate `lr` (None: the profile's); returns the history. MemNet trains on
    episodes (starting from `memory` when given, labels permuted within `label_pool`).

    replay: items (x, y) kept from earlier tasks. A classifier's every batch gets as many of them
    again (experience replay, Chaudhry et al. 2019: the current batch and a replayed one); a
    MemNet's episodes draw from the task's training items and these together, and with
    ``anchor_weight`` > 0 the keys of these items are held near their keys at the start
    (:class:`KeyAnchored`)."""
    if steps == 0:
        return []
    memnet = isinstance(model, MemNet)
    net = WithMemory(model, memory) if memnet and memory is not None else model
    if memnet and anchor_weight > 0 and replay is not None and len(replay[1]):
        anchors = stream.support_tokens(*replay).view(len(replay[1]), -1).to(device)
        net = KeyAnchored(net, model, anchors, segment_keys(model, anchors), anchor_weight)
    trainer = Trainer(net, train_config(p, steps, amp, progress, lr), device, name=name)
    tag = 99 if task is None else task

    source = None
    if memnet and replay is not None and len(replay[1]):
        x, y = stream.items(task, "train")
        source = (np.concatenate([replay[0], x]), np.concatenate([replay[1], y]))

    def batch_fn(step: int):
        s = seed * 1_000_003 + tag * 10_007 + step
        if memnet:
            tok, tgt = stream.episodes(task, p.episode_batch, p.n_support, p.n_query, seed=s, label_pool=label_pool,
                                       source=source)
            n_inst = int(round(p.instance_share * p.episode_batch))
            if n_inst:  # the first rows become instance episodes (same layout, the task's own items)
                tok[:n_inst], tgt[:n_inst] = stream.instance_episodes(
                    task, n_inst, p.n_support, p.n_query, seed=s + 500_009, strength=p.instance_noise, label_pool=label_pool,
                    source=source)
            return tok, tgt
        tok, tgt = stream.classifier_batch(task, p.clf_batch, seed=s)
        if replay is not None and len(replay[1]):
            rt, rg = stream.classifier_batch(None, p.clf_batch, seed=s + 700_001, source=replay)
            tok, tgt = torch.cat([tok, rt]), torch.cat([tgt, rg])
        return tok, tgt

    return trainer.fit(batch_fn)


class CarriedLog:
    """What a carried memory holds along the stream, from the fills that wrote it: the item each
    slot holds (``slot_item``; an item is lost when a later one is allocated its slot), the task of
    every slot's item after each task (``owners`` (T, N)), the share of each task's items still
    held (``retained[i, j]``, after task i) and the fill record of every streamed item."""

    def __init__(self, supports: list, num_slots: int):
        T = len(supports)
        self.first = np.cumsum([0] + [len(y) for _, y in supports])  # task t's items: ids first[t]..first[t+1]-1
        self.slot_item = np.full(num_slots, -1)
        self.owners = np.zeros((T, num_slots), dtype=np.int64)
        self.retained = np.full((T, T), np.nan)
        self.traces, self.seg_task = [], []

    def ids(self, t: int) -> np.ndarray:
        return np.arange(self.first[t], self.first[t + 1])

    def add(self, task: int, trace) -> None:
        """Log the fill of ``task``'s items (its trace) into the carried memory."""
        self.traces.append(trace)
        self.seg_task += [task] * trace.num_segments
        self.slot_item = track_items(self.slot_item, trace, int(self.first[task]))
        held = self.slot_item >= 0
        self.owners[task] = np.where(held, np.searchsorted(self.first, self.slot_item, side="right") - 1, -1)
        for j in range(task + 1):
            self.retained[task, j] = float(np.isin(self.ids(j), self.slot_item).mean())

    def record(self, model: str) -> dict:
        """The stored fill record: slot and write event of every streamed item, its task, and ``owners``."""
        alloc = torch.cat([t.write_alloc[0, :, 0] for t in self.traces]).cpu()  # (S,) the slot each item was given
        event = torch.cat([t.write_events[0].gather(1, t.write_alloc[0]).squeeze(1) for t in self.traces]).cpu()
        return {"model": model, "write_alloc": alloc, "write_event": event,
                "segment_task": torch.tensor(self.seg_task), "slot_owner": torch.from_numpy(self.owners)}


def untrained_accuracy(model, p: Profile, stream: TaskStream, device, amp: str) -> np.ndarray:
    """GEM's b-bar: every task's accuracy under the untrained model, memory empty."""
    return np.array([accuracy(model, stream, j, device, amp, None, p.eval_chunk) for j in range(stream.n_tasks)])


def run_memnet(p: Profile, stream: TaskStream, cfg: MemNetConfig, seed: int, device, amp: str,
               progress: bool) -> tuple[dict, dict]:
    """The continual MemNet run (learned addresses) with its reset, rewrite, frozen and (with
    ``realign``) unaligned variants; returns (runs, fill record)."""
    T = stream.n_tasks
    seed_everything(seed)
    model = build("memnet", cfg, stream).to(device)
    R = {k: [] for k in ("memnet",) + DERIVED + (("memnet_unaligned",) if p.realign else ())}  # rows of evaluate()
    drift = np.full((T, T), np.nan)  # drift[i, j]: key cosine, carried vs rewritten, items of task j after task i
    task_drift = [float("nan")] * T  # over task i: cosine of the old tasks' support keys before and after it
    carried, unaligned, history = None, None, []
    supports = [stream.support_set(t, p.support_per_class, seed=seed * 7 + t) for t in range(T)]
    log = CarriedLog(supports, cfg.num_slots)
    b = untrained_accuracy(model, p, stream, device, amp)
    t0 = time.perf_counter()
    for i in range(T):
        steps = p.memnet_steps[0] if i == 0 else p.memnet_steps[1]
        # episodes start from the carried memory (old tasks, true labels); with restrict_labels the new
        # task's labels are permuted only among labels no earlier task used (then the head learns to
        # never answer an old label: the class-incremental output bias comes back through the targets)
        old = [c for t in range(i) for c in stream.task_classes(t)]
        pool = [c for c in range(stream.n_classes) if c not in old] if p.restrict_labels else None
        if p.realign and i > 0:  # this task's items, keyed by the weights that wrote the carried keys
            task_items = stream.items(i, "train")
            keys_before = item_keys(model, stream, *task_items, device)
        olds = [np.concatenate(a) for a in zip(*supports[:i])] if i else None
        old_keys = item_keys(model, stream, *olds, device) if i else None
        history += train_on(model, p, stream, i, steps, seed, device, amp, progress, f"memnet_{stream.name}_s{seed}_t{i}",
                            memory=carried if p.train_with_memory else None, label_pool=pool)
        if i == 0:  # memnet_frozen: the weights after the first task, every later task only written
            frozen = copy.deepcopy(model).eval()
            frozen_mem = None
        frozen_mem, _ = fill(frozen, stream, *supports[i], frozen_mem, device)
        if i:
            task_drift[i] = mean_cosine(old_keys, item_keys(model, stream, *olds, device))
        if p.realign and i > 0:  # drift of the key encoder over this task, measured on this task's items only
            carried = realign_keys(carried, fit_key_map(keys_before, item_keys(model, stream, *task_items, device), p.realign_ridge))
        # this task's items into the carried memory, a fresh one (the reset variant) and the unaligned one
        (carried, fresh, unaligned), tr = fill_each(model, stream, *supports[i], [carried, None, unaligned], device)
        if i == 0:
            unaligned = carried  # the same memory until the first realignment
        log.add(i, tr)
        rewrite, rewrite_items = None, np.full(cfg.num_slots, -1)
        for t in range(i + 1):
            rewrite, rtr = fill(model, stream, *supports[t], rewrite, device)
            rewrite_items = track_items(rewrite_items, rtr, int(log.first[t]))
        read = {"memnet": (model, carried), "memnet_reset": (model, fresh), "memnet_rewrite": (model, rewrite),
                "memnet_frozen": (frozen, frozen_mem), "memnet_unaligned": (model, unaligned)}
        for k in R:
            R[k].append(evaluate(read[k][0], stream, device, amp, read[k][1], p.eval_chunk))
        for j in range(i + 1):
            drift[i, j] = key_cosine(carried, log.slot_item, rewrite, rewrite_items, log.ids(j))
    train_s = time.perf_counter() - t0
    runs = {k: {**matrices(rows), "baseline_b": b.tolist(), "memory_bytes": memnet_state_bytes(cfg)} for k, rows in R.items()}
    runs["memnet"].update(key_drift=drift.tolist(), task_drift=task_drift, retained=log.retained.tolist(),
                          history=history, train_s=round(train_s, 1))
    return runs, log.record("memnet")


def fixed_config(p: Profile, stream: TaskStream, cfg: MemNetConfig) -> tuple[MemNetConfig, MemNetConfig]:
    """The fixed-address MemNet's configs: (the one it streams with: a bank that holds every item
    of ``fixed_support_per_class``, no decay; the one it trains on: the same with
    ``fixed_train_slots`` slots). Without decay the bank has no per-slot parameter, so weights
    trained on the small bank load into the large one unchanged."""
    n = support_count(stream, p.fixed_support_per_class)
    big = replace(cfg, num_slots=-(-n // 64) * 64, decay_mode="none")
    return big, replace(big, num_slots=p.fixed_train_slots)


def trained_fixed(p: Profile, stream: TaskStream, cfg: MemNetConfig, task: int | None, steps: int, seed: int,
                  device, amp: str, progress: bool, tag: str) -> tuple[MemNet, list[dict]]:
    """A fixed-address MemNet trained for ``steps`` on ``task``'s episodes (all tasks when None) on the
    small training bank, returned with the streaming bank (weights copied) and the history."""
    big, small = fixed_config(p, stream, cfg)
    trainee = build("memnet_fixed", small, stream).to(device)
    history = train_on(trainee, p, stream, task, steps, seed, device, amp, progress, tag)
    model = build("memnet_fixed", big, stream).to(device)
    weights = {k: v for k, v in trainee.state_dict().items() if k != "memory.decay_logit"}  # (N,) buffer, unused
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing != ["memory.decay_logit"] or unexpected:
        raise RuntimeError(f"fixed-address weights did not carry over: missing {missing}, unexpected {unexpected}")
    return model.eval(), history


def run_memnet_fixed(p: Profile, stream: TaskStream, cfg: MemNetConfig, seed: int, device, amp: str,
                     progress: bool) -> tuple[dict, dict]:
    """The fixed-address MemNet: trained on the first task's episodes only, then never again; every
    task's items (``fixed_support_per_class`` per class, None: all) are written into one carried
    memory, which is all it learns later tasks by. memnet_fixed_reset: the same weights with the
    memory cleared at every task boundary. Returns (runs, fill record)."""
    T = stream.n_tasks
    seed_everything(seed)
    big, _ = fixed_config(p, stream, cfg)
    b = untrained_accuracy(build("memnet_fixed", big, stream).to(device), p, stream, device, amp)
    t0 = time.perf_counter()
    model, history = trained_fixed(p, stream, cfg, 0, p.memnet_steps[0], seed, device, amp, progress,
                                   f"memnet_fixed_{stream.name}_s{seed}_t0")
    supports = [stream.support_set(t, p.fixed_support_per_class, seed=seed * 7 + t) for t in range(T)]
    log = CarriedLog(supports, big.num_slots)
    R: dict[str, list] = {k: [] for k in ("memnet_fixed", "memnet_fixed_reset")}
    carried = None
    for i in range(T):
        (carried, fresh), tr = fill_each(model, stream, *supports[i], [carried, None], device)
        log.add(i, tr)
        R["memnet_fixed"].append(evaluate(model, stream, device, amp, carried, p.eval_chunk))
        R["memnet_fixed_reset"].append(evaluate(model, stream, device, amp, fresh, p.eval_chunk))
    runs = {k: {**matrices(rows), "baseline_b": b.tolist(), "num_slots": big.num_slots,
                "memory_bytes": memnet_state_bytes(big)} for k, rows in R.items()}
    runs["memnet_fixed"].update(retained=log.retained.tolist(), history=history,
                                train_s=round(time.perf_counter() - t0, 1))
    return runs, log.record("memnet_fixed")


def replay_capacity(p: Profile, stream: TaskStream, cfg: MemNetConfig) -> int:
    """Items the buffer of ``er_*`` holds: ``er_per_class`` per class, or (None) as many as fit the
    bytes memnet_replay stores (its bank and its raw buffer); at most every training item."""
    every = stream.items(None, "train")[1].size
    if p.er_per_class is not None:
        return min(stream.n_classes * p.er_per_class, every)
    per_item = ReplayBuffer.item_bytes(stream.item_len)
    return min((memnet_state_bytes(cfg) + stream.n_classes * p.replay_per_class * per_item) // per_item, every)


def run_sequential(name: str, p: Profile, stream: TaskStream, cfg: MemNetConfig, seed: int, device, amp: str,
                   progress: bool) -> dict:
    """A baseline fine-tuned on the tasks in order; returns its accuracy matrices. ``er_*``: with
    experience replay from a buffer of :func:`replay_capacity` items (policy ``er_policy``), fed
    every training item of a task after that task."""
    T = stream.n_tasks
    seed_everything(seed)
    model = build(name, cfg, stream).to(device)
    b = untrained_accuracy(model, p, stream, device, amp)
    buf = ReplayBuffer(replay_capacity(p, stream, cfg), stream.item_len, p.er_policy, seed) if name.startswith("er_") else None
    rows, history = [], []
    t0 = time.perf_counter()
    for i in range(T):
        history += train_on(model, p, stream, i, p.clf_steps, seed, device, amp, progress, f"{name}_{stream.name}_s{seed}_t{i}",
                            replay=buf.items() if buf is not None else None)
        if buf is not None:
            buf.add(*stream.support_set(i, None, seed=seed * 7 + i))
        rows.append(evaluate(model, stream, device, amp, chunk=p.eval_chunk))
    out = {**matrices(rows), "baseline_b": b.tolist(), "history": history, "train_s": round(time.perf_counter() - t0, 1),
           "memory_bytes": 0 if buf is None else buf.nbytes}
    if buf is not None:
        out.update(buffer_items=buf.capacity, buffer_policy=p.er_policy)
    return out


def run_memnet_replay(p: Profile, stream: TaskStream, cfg: MemNetConfig, seed: int, device, amp: str,
                      progress: bool) -> dict:
    """The learned-address MemNet that keeps its memory readable while it keeps learning: every
    weight trains on every task, on episodes drawn from the task's items and from a bounded raw
    buffer of earlier items (``replay_per_class`` per class seen, class-balanced), so the key
    encoder keeps separating the old classes; after each task the buffer takes the task's items
    and the memory is rebuilt from the buffer by the current weights (re-keying), so no stored key
    is stale. ``task_drift[i]`` is the cosine between the buffer's keys before and after task i's
    training: the drift that re-keying removes."""
    T = stream.n_tasks
    seed_everything(seed)
    model = build("memnet_replay", cfg, stream).to(device)
    b = untrained_accuracy(model, p, stream, device, amp)
    buf = ReplayBuffer(stream.n_classes * p.replay_per_class, stream.item_len, "balanced", seed)
    memory, rows, history, task_drift = None, [], [], [float("nan")] * T
    t0 = time.perf_counter()
    for i in range(T):
        steps = p.memnet_steps[0] if i == 0 else p.memnet_steps[1]
        before = item_keys(model, stream, *buf.items(), device) if len(buf) else None
        history += train_on(model, p, stream, i, steps, seed, device, amp, progress,
                            f"memnet_replay_{stream.name}_s{seed}_t{i}",
                            memory=memory if p.train_with_memory else None, replay=buf.items() if len(buf) else None,
                            anchor_weight=p.key_anchor)
        if before is not None:
            task_drift[i] = mean_cosine(before, item_keys(model, stream, *buf.items(), device))
        buf.add(*stream.support_set(i, None, seed=seed * 7 + i))
        memory, _ = fill(model, stream, *buf.items(), None, device)  # every held item keyed by the current weights
        rows.append(evaluate(model, stream, device, amp, memory, p.eval_chunk))
    return {**matrices(rows), "baseline_b": b.tolist(), "history": history, "task_drift": task_drift,
            "train_s": round(time.perf_counter() - t0, 1), "memory_bytes": memnet_state_bytes(cfg) + buf.nbytes,
            "buffer_items": buf.capacity}


def coded_units(stream: TaskStream, x: np.ndarray) -> np.ndarray:
    """Items ``x`` (n, P) as unit vectors (n, P * c) of the stream's fixed code (no learning)."""
    v = stream.symbol_code().numpy()[x].reshape(len(x), -1)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def vote_accuracy(units: np.ndarray, y: np.ndarray, bank: np.ndarray, labels: np.ndarray, k: int,
                  n_classes: int) -> float:
    """Accuracy of the cosine-weighted vote of the ``k`` most cosine-similar rows of ``bank`` (M, d),
    with classes ``labels`` (M,), on unit queries ``units`` (n, d) of classes ``y`` (n,)."""
    sim = units @ bank.T  # (n, M)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(y), n_classes))
    np.add.at(votes, (np.arange(len(y))[:, None], labels[top]), np.take_along_axis(sim, top, 1))
    return float((votes.argmax(1) == y).mean())


def reference_matrices(name: str, p: Profile, stream: TaskStream, seed: int) -> dict:
    """kNN (cosine-weighted vote of the ``knn_k`` nearest) or nearest-class-mean over the items a
    class-balanced buffer of ``replay_per_class`` per class holds (memnet_replay's raw buffer, fed
    the same way), coded by the stream's fixed code: no network, no training."""
    buf = ReplayBuffer(stream.n_classes * p.replay_per_class, stream.item_len, "balanced", seed)
    rows = []
    for i in range(stream.n_tasks):
        buf.add(*stream.support_set(i, None, seed=seed * 7 + i))
        bx, by = buf.items()
        B = coded_units(stream, bx)
        if name == "ncm":
            held = np.unique(by)
            B = np.stack([B[by == c].mean(0) for c in held])
            B, by = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12), held
        row = {}
        for split in ("test", "val"):
            acc = []
            for j in range(stream.n_tasks):
                x, y = stream.items(j, split)
                if not y.size:
                    break
                k = 1 if name == "ncm" else min(p.knn_k, B.shape[0])
                acc.append(vote_accuracy(coded_units(stream, x), y, B, by, k, stream.n_classes))
            row[split] = acc
        rows.append(row)
    return {**matrices(rows), "baseline_b": [stream.chance] * stream.n_tasks, "memory_bytes": buf.nbytes,
            "buffer_items": buf.capacity}


def run_joint(name: str, p: Profile, stream: TaskStream, cfg: MemNetConfig, seed: int, device, amp: str,
              progress: bool) -> dict:
    """The upper bound: trained on every task at once, for as many steps as the model trains in the
    whole stream (the fixed-address MemNet: the first task's steps)."""
    T = stream.n_tasks
    seed_everything(seed)
    memnet, fixed = name.startswith("memnet"), name == "memnet_fixed_joint"
    tag = f"{name}_{stream.name}_s{seed}"
    t0 = time.perf_counter()
    if fixed:  # in the stream it trains on the first task only
        model, history = trained_fixed(p, stream, cfg, None, p.memnet_steps[0], seed, device, amp, progress, tag)
    else:
        steps = p.memnet_steps[0] + (T - 1) * p.memnet_steps[1] if memnet else T * p.clf_steps
        model = build(name, cfg, stream).to(device)
        history = train_on(model, p, stream, None, steps, seed, device, amp, progress, tag)
    memory = None
    if memnet:
        per_class = p.fixed_support_per_class if fixed else p.support_per_class
        for t in range(T):
            memory, _ = fill(model, stream, *stream.support_set(t, per_class, seed=seed * 7 + t), memory, device)
    final = evaluate(model, stream, device, amp, memory, p.eval_chunk)
    out = {"final": final["test"], "acc": float(np.mean(final["test"])), "history": history,
           "train_s": round(time.perf_counter() - t0, 1)}
    if final["val"]:
        out.update(final_val=final["val"], acc_val=float(np.mean(final["val"])))
    return out


def grid(p: Profile, model: str, lrs: tuple | None = None) -> list[dict]:
    """The configurations (overrides of the profile) among which ``model``'s is chosen on validation:
    every learning rate of ``lrs`` (default: the profile's) for a trained model (with every policy
    of ``er_policies`` for ``er_*``, every weight of ``key_anchors`` for ``memnet_replay``), every
    ``knn_ks`` for ``knn``, nothing to choose for ``ncm``."""
    if model in REFERENCES:
        return [{"knn_k": int(k)} for k in p.knn_ks] if model == "knn" else [{}]
    configs = [{"lr": float(lr)} for lr in (p.lrs if lrs is None else lrs)]
    if model.startswith("er_"):
        configs = [{**c, "er_policy": pol} for c in configs for pol in p.er_policies]
    if model == "memnet_replay":
        configs = [{**c, "key_anchor": float(w)} for c in configs for w in p.key_anchors]
    return configs


def _run_job(p: Profile, sname: str, seed: int, m: str, config: dict, device: str, amp: str, progress: bool,
             threads: int | None = None) -> tuple[list[dict], dict | None]:
    """One (stream, seed, model, configuration) job: a pure function of its arguments, so jobs can
    run in any order or process. Returns its run entries (MemNet: one per derived variant, each
    naming the job's model in ``of``) and MemNet's trace record."""
    if threads is not None:
        torch.set_num_threads(threads)
    p = replace(p, **config)
    dev = resolve_device(device)
    stream = make_stream(sname, p, seed)
    tag = {"seed": seed, "of": m, "config": config}
    if m in REFERENCES:
        return [{"model": m, "params": 0, **tag, **reference_matrices(m, p, stream, seed)}], None
    cfg = make_config(p, stream)
    params = count_params(build(m, cfg, stream))
    if m in MEMNETS:
        runs, rec = (run_memnet if m == "memnet" else run_memnet_fixed)(p, stream, cfg, seed, dev, amp, progress)
        return [{"model": k, "params": params, **tag, **r} for k, r in runs.items()], rec
    if m == "memnet_replay":
        return [{"model": m, "params": params, **tag, **run_memnet_replay(p, stream, cfg, seed, dev, amp, progress)}], None
    r = (run_joint if m in JOINT else run_sequential)(m, p, stream, cfg, seed, dev, amp, progress)
    return [{"model": m, "params": params, **tag, **r}], None


def choose(p: Profile, grids: dict, done: dict, ckey: Callable[[tuple], tuple]) -> tuple[dict, dict]:
    """For every (stream, model) of ``grids``, the configuration with the best validation score
    (mean over the sweep seeds; ties: the first in the grid) among the runs ``done`` (keyed by
    ``ckey``), and the record of the choice: (chosen, selection)."""
    chosen, selection = {}, {}
    for (sname, m), configs in grids.items():
        own = lambda key: next(e for e in done[key][0] if e["model"] == m)  # not a derived variant
        scores = [float(np.mean([validation_score(own(ckey((sname, seed, m, c)))) for seed in p.sweep_seeds]))
                  if len(configs) > 1 else float("nan") for c in configs]
        chosen[(sname, m)] = configs[int(np.argmax(scores))] if len(configs) > 1 else configs[0]
        selection.setdefault(sname, {})[m] = {"grid": configs, "validation": scores, "chosen": chosen[(sname, m)],
                                              "sweep_seeds": list(p.sweep_seeds)}
    return chosen, selection


def budget_items(stream: TaskStream, per_class: int | None) -> int:
    """Items per class a budget stores: ``per_class``, or (None) every training item of the
    largest class."""
    return int(np.bincount(stream.items(None, "train")[1]).max()) if per_class is None else int(per_class)


def budget_overrides(p: Profile, stream: TaskStream, model: str, per_class: int | None) -> dict:
    """The overrides of the profile that make ``model`` store ``per_class`` items of every class
    (None: every training item), its bank grown to hold them; only those that differ from the
    profile, so a budget equal to the profile's is the main run itself."""
    n = budget_items(stream, per_class)
    if model.startswith("er_"):
        want = {"er_per_class": n}
    else:
        want = {"replay_per_class": n}
        if model == "memnet_replay":
            want["num_slots"] = max(p.num_slots, -(-n * stream.n_classes // 64) * 64)
    return {k: v for k, v in want.items() if getattr(p, k) != v}


def budget_points(entry: dict) -> list[dict]:
    """The memory-budget axis of a stream's runs: model, seed, items per class stored, bytes,
    ACC and BWT of every run made for a budget (``budget`` set)."""
    return [{"model": r["model"], "seed": r["seed"], "per_class": r["budget"], "memory_bytes": r["memory_bytes"],
             "acc": r["summary"]["acc"], "bwt": r["summary"]["bwt"]} for r in entry["runs"] if "budget" in r]


def validation_score(entry: dict) -> float:
    """What a configuration is chosen by: the validation accuracy over every task after the last
    one (a joint model: its final validation accuracy)."""
    if "acc_val" in entry:
        return float(entry["acc_val"])
    if "R_val" in entry:
        return float(np.mean(entry["R_val"][-1]))
    raise ValueError(f"run {entry.get('model')!r} has no validation accuracy: a stream with val_fraction > 0 is needed "
                     "to choose among several configurations")


RUN_INDEPENDENT = ("lrs", "lrs_more", "er_policies", "key_anchors", "knn_ks", "sweep_seeds", "seeds", "streams", "models", "workers",
                   "budgets", "budget_streams")  # profile fields no single job depends on


def job_settings(p: Profile, config: dict) -> dict:
    """What one job's result depends on: the profile with the job's configuration applied, less
    the fields that only say which jobs run."""
    settings = {k: v for k, v in asdict(replace(p, **config)).items() if k not in RUN_INDEPENDENT}
    return json.loads(json.dumps(settings))  # as it reads back from a record (tuples become lists)


def _cached_job(p: Profile, cache: Path | None, sname: str, seed: int, m: str, config: dict, device: str, amp: str,
                progress: bool, threads: int | None = None) -> tuple[list[dict], dict | None]:
    """:func:`_run_job`, cached under ``cache`` (None: not cached) as
    ``<stream>_<model>_seed<seed>_<configuration digest>.json``, with MemNet's trace record
    beside it (``.pt``, written first, so a record on disk always has its trace). A record made
    under other settings is an error, never reused."""
    if cache is None:
        return _run_job(p, sname, seed, m, config, device, amp, progress, threads)
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    path = cache / f"{sname}_{m}_seed{seed}_{digest}.json"
    trace = path.with_suffix(".pt")

    def make() -> dict:
        entries, rec = _run_job(p, sname, seed, m, config, device, amp, progress, threads)
        if rec is not None:
            save_torch(rec, trace)
        return {"job": [sname, seed, m], "config": config, "entries": entries, "has_trace": rec is not None,
                "git_commit": git_commit()}

    record = cached_record(path, make, settings=job_settings(p, config))
    rec = torch.load(trace, weights_only=True) if record["has_trace"] else None
    return record["entries"], rec


def _execute(p: Profile, jobs: list[tuple], dev: torch.device, amp: str, progress: bool, workers: int,
             cache: Path | None = None) -> list:
    """The results of ``jobs`` ((stream, seed, model, config) each), in order: in this process, or
    on ``workers`` processes of one thread each (MemNet's jobs, the longest, first); each job's
    result cached under ``cache`` (see :func:`_cached_job`)."""
    if workers == 1 or len(jobs) <= 1:
        return [_cached_job(p, cache, *job, str(dev), amp, progress) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda k: not jobs[k][2].startswith("memnet"))
    with worker_pool(min(workers, len(jobs))) as pool:  # workers end when this process dies
        futures = {k: pool.submit(_cached_job, p, cache, *jobs[k], str(dev), amp, False, 1) for k in order}
        return [futures[k].result() for k in range(len(jobs))]


def job_key(job: tuple) -> tuple:
    """A (stream, seed, model, configuration) job as a dict key: the configuration as sorted JSON."""
    return job[:3] + (json.dumps(job[3], sort_keys=True),)


def sweep_and_choose(p: Profile, streams: list[str], models: list[str], dev: torch.device, amp: str, progress: bool,
                     workers: int, cache: Path | None) -> tuple[dict, dict, dict]:
    """Run every configuration of :func:`grid` on the sweep seeds (the grid of a model whose best
    rate is the largest tried grows by the next of ``lrs_more``, while there is one) and choose on
    validation (:func:`choose`). Returns (the jobs done by :func:`job_key`, chosen, selection)."""
    grids = {(sname, m): grid(p, m) for sname in streams for m in models}
    swept = [key for key, g in grids.items() if len(g) > 1]
    sweep = [(sname, seed, m, c) for sname, m in swept for seed in p.sweep_seeds for c in grids[(sname, m)]]
    done, more = {}, list(p.lrs_more)
    while True:
        done.update({job_key(j): r for j, r in zip(sweep, _execute(p, sweep, dev, amp, progress, workers, cache))})
        chosen, selection = choose(p, grids, done, job_key)
        edge = [key for key in swept if "lr" in chosen[key] and chosen[key]["lr"] == max(c["lr"] for c in grids[key])]
        if not (edge and more):
            return done, chosen, selection
        lr = more.pop(0)  # the best rate is the largest tried: try the next one
        sweep = []
        for sname, m in edge:
            grids[(sname, m)] = grids[(sname, m)] + grid(p, m, (lr,))
            sweep += [(sname, seed, m, c) for seed in p.sweep_seeds for c in grid(p, m, (lr,))]


def budget_jobs(p: Profile, streams: list[str], seeds: list[int], models: list[str], chosen: dict) -> dict:
    """The memory-budget axis: job key -> items per class it stores, for every model of
    ``BUDGET_MODELS`` run, seed and budget of the profile, at the configuration chosen on validation."""
    budget = {}
    for sname in (s for s in streams if s in p.budget_streams):
        for seed in seeds:
            stream = make_stream(sname, p, seed)
            for m in (m for m in BUDGET_MODELS if m in models):
                for b in p.budgets:
                    over = budget_overrides(p, stream, m, b)
                    budget[job_key((sname, seed, m, {**chosen[(sname, m)], **over}))] = budget_items(stream, b)
    return budget


def assemble(p: Profile, profile: str, done: dict, chosen: dict, selection: dict, budget: dict,
             seeds: list[int]) -> tuple[dict, dict]:
    """The result of a run from its jobs: every run entry, marked ``selected`` (the chosen
    configuration, a reported seed) and with its ``budget`` when it is a point of the budget axis,
    with the summaries of its matrices; and the trace records of the selected MemNet runs
    (seed -> model -> stream)."""
    result = {"experiment": "continual", "profile": profile, "profile_settings": asdict(p), "streams": {}}
    records: dict[int, dict] = {}
    for key, (entries, rec) in done.items():
        sname, seed, m, c = key[:3] + (json.loads(key[3]),)
        if sname not in result["streams"]:
            stream = make_stream(sname, p, seed)
            result["streams"][sname] = {"runs": [], "stream": stream.describe(), "selection": selection[sname],
                                        "config": make_config(p, stream).to_dict(), "chance": stream.chance}
        selected = c == chosen[(sname, m)] and seed in seeds
        mark = {"budget": budget[key]} if key in budget else {}
        result["streams"][sname]["runs"] += [{**e, "selected": selected, **mark} for e in entries]
        if rec is not None and selected:
            records.setdefault(seed, {}).setdefault(m, {})[sname] = rec
    for entry in result["streams"].values():
        for r in entry["runs"]:
            for key, name in (("R", "summary"), ("R_val", "summary_val")):
                if key in r:
                    R = accuracy_matrix(r[key])
                    r[name] = matrix_summary(R, r["baseline_b"])
                    r[name]["max_drop"] = max_drop(R)
                    r[name]["forgetting_per_task"] = forgetting(R).tolist()
    return result, records


def run(profile: str = "laptop", device: str = "auto", seeds: list[int] | None = None, out_dir: Path | None = None,
        save: bool = True, progress: bool = True, amp: str = "auto", streams: list[str] | None = None,
        models: list[str] | None = None, workers: int | None = None) -> dict:
    """Run every stream, model and seed of the profile; returns (and with `save`, stores) the results.

    Every model's configuration is chosen on validation before any test accuracy is read: each
    configuration of :func:`grid` is run on the ``sweep_seeds`` (while a model's best rate is the
    largest tried, it also tries the next of ``lrs_more``), the one with the best
    :func:`validation_score` (mean over those seeds; ties: the first in the grid) is run on the
    other seeds, and only its runs are ``selected`` for the tables. Every run of the sweep is
    stored. A model with one configuration skips the sweep.

    workers: processes that run (stream, seed, model, configuration) jobs side by side, each on one
    CPU thread (default: the profile's ``workers`` on CPU, 1 on CUDA). Every job seeds itself, so
    the results do not depend on it."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    streams = check_names(streams, STREAMS, "streams") or list(p.streams)
    models = check_names(models, SEQUENTIAL + JOINT + REFERENCES, "models") or list(p.models)
    seeds = check_seeds(seeds if seeds is not None else p.seeds)
    dev = resolve_device(check_device(device))
    if workers is None:
        workers = p.workers if dev.type == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    out_dir = Path(out_dir) if out_dir is not None else DATA_DIR / "continual" / profile
    cache = None
    if save:  # fail now, not after the training, when the folder cannot be written
        writable_folder(out_dir, "out_dir")
        cache = out_dir / "runs"  # one record per job: a killed run resumes where it stopped
        cache.mkdir(exist_ok=True)
    t_all = time.perf_counter()
    done, chosen, selection = sweep_and_choose(p, streams, models, dev, amp, progress, workers, cache)
    rest = [(sname, seed, m, chosen[(sname, m)]) for sname in streams for seed in seeds for m in models
            if job_key((sname, seed, m, chosen[(sname, m)])) not in done]
    done.update({job_key(j): r for j, r in zip(rest, _execute(p, rest, dev, amp, progress, workers, cache))})
    budget = budget_jobs(p, streams, seeds, models, chosen)
    todo = [k[:3] + (json.loads(k[3]),) for k in budget if k not in done]
    done.update({job_key(j): r for j, r in zip(todo, _execute(p, todo, dev, amp, progress, workers, cache))})
    result, records = assemble(p, profile, done, chosen, selection, budget, seeds)
    wall = time.perf_counter() - t_all
    result["provenance"] = provenance(dev, seeds, wall, experiment="continual", amp=amp, workers=workers)
    if save:  # never over a stored result that holds runs this one lacks: those go to partial/
        folder = result_folder(out_dir, result, run_keys)
        for seed, rec in records.items():
            save_torch(rec, folder / f"trace_seed{seed}.pt")
        write_json(folder / "results.json", result)
    return result


def run_keys(result: dict) -> list[tuple]:
    """One key per run of a result, (stream, model, seed, configuration): what a stored result must keep."""
    return [(s, r["model"], r["seed"], json.dumps(r.get("config", {}), sort_keys=True))
            for s, entry in result["streams"].items() for r in entry["runs"]]


# ---------------------------------------------------------------------------- references
def nearest_neighbour_matrix(stream: TaskStream, k: int, per_class: int | None, seed: int) -> np.ndarray:
    """The accuracy matrix (T, T) of a plain k-nearest-neighbour classifier on the stream's fixed
    codes: after task i it holds the support items of tasks 0..i (``per_class`` per class, None:
    all; drawn as the continual run draws them for ``seed``) and answers a test item by the
    cosine-weighted vote of its k most cosine-similar items. No learning: what an episodic memory
    addressed by :class:`~memnet.continual.FixedAddress` would answer if its reads were a vote."""
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    T = stream.n_tasks
    R = np.zeros((T, T))
    tests = [(coded_units(stream, xt), yt) for xt, yt in (stream.items(j, "test") for j in range(T))]  # coded once
    bank, labels = [], []
    for i in range(T):
        x, y = stream.support_set(i, per_class, seed=seed * 7 + i)
        bank.append(coded_units(stream, x))
        labels.append(y)
        B, Y = np.concatenate(bank), np.concatenate(labels)
        for j, (ut, yt) in enumerate(tests):
            R[i, j] = vote_accuracy(ut, yt, B, Y, k, stream.n_classes)
    return R


# ---------------------------------------------------------------------------- tables
METRICS = ("acc", "bwt", "forgetting", "max_drop", "fwt")  # per-run summary entries (joint models: "acc" only), table columns
ER_POINTS, REPLAY_BWT_POINTS = 0.0, -10.0  # the claim: memnet_replay's ACC minus the best ER's, its backward transfer


def seed_values(result: dict, stream: str) -> dict[str, dict[str, list[float]]]:
    """model -> metric -> its per-seed values on `stream` (joint models: ``acc`` only)."""
    runs = [r for r in result["streams"][stream]["runs"] if r.get("selected", True)]
    out: dict = {}
    for m in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == m]
        out[m] = ({k: [r["summary"][k] for r in rs] for k in METRICS} if "summary" in rs[0]
                  else {"acc": [r["acc"] for r in rs]})
    return out


def model_summary(result: dict, stream: str) -> dict[str, dict[str, tuple[float, float]]]:
    """model -> metric -> (mean, 95% t-interval half-width; nan for one seed) over seeds, and
    ``n_seeds``; joint models have only ``acc``."""
    return {m: {**{k: t_interval(v) for k, v in d.items()}, "n_seeds": len(d["acc"])}
            for m, d in seed_values(result, stream).items()}


def summarize(result: dict) -> list[Verdict]:
    """The claims on every stream that has the runs: the learned-address MemNet that keeps training
    (memnet_replay) ends at an ACC at least that of experience replay storing as many bytes (the
    best of ``er_*``, whose buffers hold as many whole items as memnet_replay's bytes pay for, or every
    training item),
    and its backward transfer is at least ``REPLAY_BWT_POINTS`` (means over seeds)."""
    out = []
    for s, entry in result["streams"].items():
        summ = model_summary(result, s)
        if "memnet_replay" not in summ:
            continue
        m = summ["memnet_replay"]
        ers = [e for e in summ if e.startswith("er_")]
        if ers:
            best = max(ers, key=lambda e: summ[e]["acc"][0])
            nbytes = lambda name: next(r["memory_bytes"] for r in entry["runs"] if r["model"] == name)
            lead = 100 * (m["acc"][0] - summ[best]["acc"][0])
            out.append(Verdict(f"memnet_replay on {s}: ACC >= experience replay's at as many bytes (points ahead)", lead,
                               ER_POINTS, lead >= ER_POINTS,
                               f"{best} {100 * summ[best]['acc'][0]:.1f}% with {nbytes(best):,} bytes; "
                               f"memnet_replay {100 * m['acc'][0]:.1f}% with {nbytes('memnet_replay'):,}"))
        bwt = 100 * m["bwt"][0]
        out.append(Verdict(f"memnet_replay on {s}: backward transfer >= {REPLAY_BWT_POINTS:g} points", bwt,
                           REPLAY_BWT_POINTS, bwt >= REPLAY_BWT_POINTS))
    return out


def summary_table(result: dict) -> str:
    """The ACC / BWT / forgetting / FWT table of every stream (percent, mean ± 95% t-interval over
    seeds), with the bytes each model stores."""
    blocks = []
    for s, entry in result["streams"].items():
        nbytes = {r["model"]: r.get("memory_bytes") for r in entry["runs"] if r.get("selected", True)}
        rows = [[m] + [mean_ci(d[k], 100) if k in d else "-" for k in METRICS]
                + [f"{nbytes[m]:,}" if nbytes.get(m) is not None else "-", len(d["acc"])]
                for m, d in seed_values(result, s).items()]
        blocks.append(format_table(
            ["model", "ACC", "BWT", "forgetting", "max drop", "FWT", "bytes stored", "seeds"], rows,
            f"{s}: class-incremental, {entry['stream']['n_tasks']} tasks, chance {100 * entry['chance']:.0f}% "
            "(percent, mean ± 95% t-interval over seeds)"))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, PROFILES, "continual")
    ap.add_argument("--streams", action=DistinctList, what="stream", default=None, choices=STREAMS)
    ap.add_argument("--models", action=DistinctList, what="model", default=None,
                    choices=SEQUENTIAL + JOINT + REFERENCES)
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads of a single worker (these models are small: 1 is often faster)")
    ap.add_argument("--workers", type=positive_int, default=None, help="processes running jobs side by side on a "
                    "CPU (default: the profile's), one thread each")
    a = ap.parse_args(argv)
    check_out(ap, a, "continual")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    res = run(a.profile, a.device, a.seeds, a.out, not a.no_save, not a.no_progress, a.amp, a.streams, a.models,
              a.workers)
    print(summary_table(res))
    print()
    print("\n".join(v.line() for v in summarize(res)))
    print(done_line(res, a, "continual"))


if __name__ == "__main__":
    main()
