"""Experiment 3: learned forgetting. Can a memory learn what to keep from evidence that arrives after the write?

MemNet trains on :class:`~memnet.tasks.ReuseStream`: every window opens with key-value items
drawn from one shared vocabulary, so nothing about an item at write time tells whether it will
be needed. A useful item is asked for once (the *cue*) one or two windows after its write, and
again (the *recall*) several windows later; a distractor is never asked for. Every item is
written (``write_tokens`` = the value tokens), each into a slot of its own, and there are more
items per sequence than slots: what is kept is decided by forgetting alone.

Configurations, all declared in the profile before the run:

* ``none``: no decay, and faded-first allocation: with nothing fading, the oldest content goes
  (age order);
* ``fixed@x``: a type-agnostic retention sigmoid(x) for every slot; x is chosen among
  ``fixed_logits`` by recall on a validation draw of the ``select_seeds``, and the choice is
  trained for every seed;
* ``learned``: the slot-wise learned retention gate (no read evidence);
* ``evidence``: the retention logit also learns from read evidence (``decay_mode="evidence"``:
  the strongest read hit of the slot since its write, and its age), at memory-pressure weight
  ``pressure`` (and ``evidence@w`` for each weight of ``pressure_sweep``);
* ``evidence_faded``: evidence decay with faded-first allocation (trained only where a profile or
  ``--only`` names it).

The decaying configurations reuse the slot that holds least (``allocation="weakest"``: the
strength of its last write times the retention since), so what decay lets go of is what a new
write takes; with a retention that treats all slots alike that is the oldest slot, as with
faded-first allocation. Faded-first allocation divides a slot's age by its retained fraction, so
age dominates unless retention falls far, and a gate that has learned to keep read slots a
little longer barely changes which slot goes (``evidence_faded`` measures it).
* replayed eviction rules (:mod:`memnet.eviction`, no network): what any model could hold under
  age order, under "re-use predicts re-use", and with an oracle that lets distractors go first.

Measured on a test draw per seed: accuracy at cues and recalls; which items are still held at
each recall; each item's lifetime in memory (:mod:`memnet.lifetimes`), summarised per type with
Kaplan-Meier, the restricted mean survival time (RMST) with a bootstrap interval over sequences
and seeds, and the hazard by age; and behavioural probes that ask for every item at several ages
(can a content that is still held, or one that is gone, be read?). The run is stored under
data/forgetting/<profile>/ with its provenance; a result that lacks runs of the stored one goes
to ``partial/``.

    python -m memnet.experiments.forgetting --profile laptop
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..baselines import count_params
from ..config import IGNORE_INDEX, MemNetConfig
from ..eviction import held_at_queries, held_fraction, replay_lifetimes
from ..lifetimes import ItemLifetimes, bootstrap_rmst_ratio, hazard, item_lifetimes, probe_sequences, survival_steps
from ..model import MemNet
from ..survival import counts_to_km, rmst
from ..tasks.reuse import DISTRACTOR, REUSE_TYPES, USEFUL, ReuseBatch, ReuseStream
from ..train import resolve_device
from .common import (DATA_DIR, DistinctList, Verdict, check_device, check_names, check_out, check_seeds, done_line,
                     experiment_parser, format_table, mean_ci, positive_int, provenance, result_folder, seed_everything,
                     train_steps, worker_pool, writable_folder, write_json)

POLICIES = ("lru", "evidence", "distractors_first")  # replayed eviction rules stored with every seed
NAMED_ONLY = ("evidence_faded",)  # configurations trained only where a profile's `only` or run(only=) names them
KINDS = ("cue", "recall")


@dataclass
class Profile:
    """Everything a profile fixes: task, model, budget, configurations, measurements."""

    # the task: 11 item windows of 3 items (33 items per sequence) for 12 slots
    n_keys: int = 64
    n_values: int = 32
    n_filler: int = 32
    segment_len: int = 16
    items_per_window: int = 3
    n_windows: int = 16
    p_useful: float = 0.3
    cue_gap: tuple = (1, 2)
    min_gap: int = 3
    # the model
    d_model: int = 48
    num_slots: int = 12
    top_k: int = 4
    mem_heads: int = 4
    writes_per_segment: int = 4
    util_weight: float = 0.01
    # the budget (the plain loop of memnet.experiments.common.train_steps: AdamW, constant lr)
    batch_size: int = 32
    steps: int = 400
    lr: float = 3e-3
    # the configurations
    allocation: str = "weakest"  # allocation of the decaying configurations ("none" uses "faded")
    fixed_logits: tuple = (5.0, 2.0, 0.0)  # candidate decay_init of the fixed decay
    select_seeds: tuple = (0,)  # seeds whose validation recall chooses among fixed_logits
    pressure: float = 0.3  # pressure_weight of "learned" and "evidence"
    pressure_sweep: tuple = ()  # further pressure weights of the evidence decay ("evidence@w")
    grace: int = 2  # windows the replayed evidence rule waits for a first query
    # the measurements
    val_batch: int = 128
    test_batch: int = 128
    probe_rows: int = 16  # test sequences whose items are probed at every age
    probe_ages: tuple = (1, 2, 3, 4, 6, 8)
    horizon: int = 8  # windows: the restricted mean survival time is the area under S(t) on [0, horizon]
    n_boot: int = 1000
    seeds: tuple = (0, 1, 2)
    workers: int = 2  # processes training side by side on a CPU (one thread each)
    only: tuple | None = None  # the configurations this profile trains (None: all of them)


PROFILES = {
    "smoke": Profile(n_keys=16, n_values=8, n_filler=8, segment_len=8, items_per_window=2, n_windows=7, min_gap=2,
                     d_model=16, num_slots=4, top_k=2, mem_heads=2, writes_per_segment=2, batch_size=4, steps=4,
                     fixed_logits=(5.0, 0.0), val_batch=4, test_batch=4, probe_rows=2, probe_ages=(1, 2), horizon=4,
                     n_boot=20, seeds=(0,), workers=1),
    # 15 trainings of 400 steps (3 candidate fixed rates on seed 0, then the chosen rate, no decay, learned and
    # evidence decay for 3 seeds, evidence decay with faded-first allocation for one): about 10 minutes on 2 CPU cores
    "laptop": Profile(),
    # evidence decay at two more memory-pressure weights and with faded-first allocation, on the laptop's task,
    # model, budget and draws (9 trainings: about 6 minutes on 2 CPU cores); the chapter merges it with the
    # laptop run (merge_runs)
    "sweep": Profile(pressure_sweep=(0.1, 1.0), only=("evidence@0.1", "evidence@1", "evidence_faded")),
    "gpu": Profile(d_model=128, batch_size=64, steps=1500, select_seeds=(0, 1, 2), pressure_sweep=(0.1, 1.0),
                   test_batch=256, probe_rows=32, workers=1),
}


def make_task(p: Profile) -> ReuseStream:
    return ReuseStream(n_keys=p.n_keys, n_values=p.n_values, n_filler=p.n_filler, segment_len=p.segment_len,
                       items_per_window=p.items_per_window, n_windows=p.n_windows, p_useful=p.p_useful,
                       cue_gap=tuple(p.cue_gap), min_gap=p.min_gap)


def fixed_name(logit: float) -> str:
    return f"fixed@{logit:g}"


def configurations(p: Profile) -> dict[str, dict]:
    """Configuration name -> MemNetConfig overrides (on top of :func:`make_config`'s shared settings)."""
    a = p.allocation
    out: dict[str, dict] = {"none": {"decay_mode": "none", "allocation": "faded"}}
    for x in p.fixed_logits:
        out[fixed_name(x)] = {"decay_mode": "fixed", "decay_init": float(x), "allocation": a}
    out["learned"] = {"decay_mode": "learned", "pressure_weight": float(p.pressure), "allocation": a}
    out["evidence"] = {"decay_mode": "evidence", "pressure_weight": float(p.pressure), "allocation": a}
    for w in p.pressure_sweep:
        out[f"evidence@{w:g}"] = {"decay_mode": "evidence", "pressure_weight": float(w), "allocation": a}
    out["evidence_faded"] = {"decay_mode": "evidence", "pressure_weight": float(p.pressure), "allocation": "faded"}
    return out


def make_config(p: Profile, task: ReuseStream, **overrides) -> MemNetConfig:
    """Shared settings: every item written into a slot of its own (write_tokens = the value tokens), and the
    profile's allocation unless `overrides` name one."""
    over = {"allocation": p.allocation, **overrides}
    return MemNetConfig(vocab_size=task.vocab_size, d_model=p.d_model, num_slots=p.num_slots, top_k=p.top_k,
                        mem_heads=p.mem_heads, segment_len=p.segment_len, writes_per_segment=p.writes_per_segment,
                        util_weight=p.util_weight, write_tokens=task.value_tokens, **over)


def draws(seed: int) -> dict[str, int]:
    """The seeds of a run's draws: training batch i is drawn with ``train + i``."""
    return {"train": 1_000_003 * seed, "val": 5_000_011 * (seed + 1), "test": 9_000_011 * (seed + 1),
            "probe": 13_000_027 * (seed + 1)}


# ---------------------------------------------------------------------------- measuring one trained model
def query_accuracy(pred: torch.Tensor, batch: ReuseBatch) -> dict[str, float]:
    """Accuracy at the cues and at the recalls."""
    ok = pred == batch.targets
    return {k: float(ok[batch.kind == c].float().mean()) for c, k in enumerate(KINDS, start=1)}


def held_at_recalls(life: ItemLifetimes, batch: ReuseBatch, segment_len: int) -> np.ndarray:
    """(B, M) bool: whether each recalled item is still held when its recall reads (False elsewhere)."""
    rp = batch.recall_pos.numpy()
    B, M = rp.shape
    age = rp // segment_len - life.window.reshape(B, M)
    return (rp >= 0) & life.held_at(age.ravel()).reshape(B, M)


@torch.no_grad()
def _forward(model: MemNet, tokens: torch.Tensor, trace: bool = False, chunk: int = 64):
    outs = [model(tokens[i:i + chunk], return_trace=trace) for i in range(0, len(tokens), chunk)]
    logits = torch.cat([o.logits.float() for o in outs])
    return logits, ([o.trace for o in outs] if trace else None)


def probe_counts(model: MemNet, batch: ReuseBatch, life: ItemLifetimes, p: Profile, seed: int) -> dict:
    """Per item type and age: probes asked, answered, asked of a held item, answered by a held item."""
    rows = min(p.probe_rows, len(batch.tokens))
    sub = ReuseBatch(*(t[:rows] for t in (batch.tokens, batch.targets, batch.kind, batch.item_at, batch.item_type,
                                           batch.item_pos, batch.cue_pos, batch.recall_pos)))
    M = batch.item_type.shape[1]
    out = {t: {str(a): {"n": 0, "correct": 0, "held": 0, "held_correct": 0} for a in p.probe_ages}
           for t in REUSE_TYPES}
    for probes in probe_sequences(sub, p.segment_len, p.probe_ages, IGNORE_INDEX, seed=draws(seed)["probe"]).values():
        logits, _ = _forward(model, probes.tokens)
        n = torch.arange(len(probes.row))
        ok = (logits[n, probes.pos].argmax(-1) == probes.targets[n, probes.pos]).numpy()
        r, i, a = probes.row.numpy(), probes.item.numpy(), probes.age.numpy()
        types = batch.item_type.numpy()[r, i]
        held = life.select(r * M + i).held_at(a)  # lifetimes are row-major (B, M)
        for t, name in enumerate(REUSE_TYPES):
            for age in p.probe_ages:
                sel = (types == t) & (a == age)
                c = out[name][str(age)]
                c["n"] += int(sel.sum())
                c["correct"] += int(ok[sel].sum())
                c["held"] += int((sel & held).sum())
                c["held_correct"] += int((ok & sel & held).sum())
    return {t: v for t, v in out.items() if any(c["n"] for c in v.values())}


def _train_one(p: Profile, task: ReuseStream, seed: int, name: str, over: dict, device: str,
               threads: int | None = None) -> dict:
    """Train and measure one (configuration, seed): a pure function of its arguments, so jobs can run in
    any order or process."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    d = draws(seed)
    seed_everything(seed)
    model = MemNet(make_config(p, task, **over)).to(dev)

    def batch_fn(step: int):
        b = task.sample(p.batch_size, seed=d["train"] + step)
        return b.tokens.to(dev), b.targets.to(dev)

    fit = train_steps(model, batch_fn, p.lr, p.steps, log_every=max(1, p.steps // 8))
    model.eval()
    model.to("cpu")
    val = task.sample(p.val_batch, seed=d["val"])
    test = task.sample(p.test_batch, seed=d["test"])
    val_logits, _ = _forward(model, val.tokens)
    with torch.no_grad():
        out = model(test.tokens, return_trace=True)  # one pass: the trace covers every test sequence
    logits = out.logits.float()
    life = item_lifetimes(out.trace, test)
    pred = logits.argmax(-1)
    held = held_at_recalls(life, test, p.segment_len)
    recalled = test.recall_pos.numpy() >= 0
    rows_r, items_r = np.nonzero(recalled)
    ok_recall = (pred == test.targets).numpy()[rows_r, test.recall_pos.numpy()[rows_r, items_r]]
    held_r = held[rows_r, items_r]
    mem = model.memory
    weight = lambda n: float(getattr(mem, n).detach()) if hasattr(mem, n) else None
    return {"config": name, "seed": seed, "overrides": over, "params": count_params(model),
            "train_s": fit["train_s"], "curve": fit["curve"],
            "val": query_accuracy(val_logits.argmax(-1), val), "test": query_accuracy(pred, test),
            "held_recall": float(held_r.mean()),
            "recall_if_held": {"held": [int(held_r.sum()), int(ok_recall[held_r].sum())],
                               "gone": [int((~held_r).sum()), int(ok_recall[~held_r].sum())]},
            "weights": {"evidence": weight("evidence_weight"), "age": weight("age_weight"),
                        "decay_logit": float(mem.decay_logit.detach().float().mean())},
            "lifetimes": life.to_dict(), "probes": probe_counts(model, test, life, p, seed)}


def lifetime_counts(duration: np.ndarray, observed: np.ndarray, types: np.ndarray, horizon: int) -> dict:
    """Per item type (useful, distractor): items let go ("deaths") and still held ("censored") at each
    duration 0..horizon, durations beyond the horizon counted at the horizon as censored (all that
    Kaplan-Meier needs up to the horizon)."""
    out = {}
    for code, t in ((USEFUL, "useful"), (DISTRACTOR, "distractor")):
        d, o = duration[types == code], observed[types == code]
        late = d > horizon
        out[t] = {"deaths": np.bincount(d[o & ~late], minlength=horizon + 1).tolist(),
                  "censored": np.bincount(np.where(late, horizon, d)[~o | late], minlength=horizon + 1).tolist()}
    return out


def replay_ceilings(p: Profile, task: ReuseStream, seed: int) -> dict[str, dict]:
    """Per replayed rule, on the test draw of `seed`: the fraction of cues and recalls whose item a memory of
    ``num_slots`` slots still holds (:func:`memnet.eviction.held_at_queries`), and the lifetimes of useful and
    distractor items as :func:`lifetime_counts` (:func:`memnet.eviction.replay_lifetimes`)."""
    test = task.sample(p.test_batch, seed=draws(seed)["test"])
    out = {}
    for pol in POLICIES:
        d, o = replay_lifetimes(test, p.segment_len, p.num_slots, pol, p.grace)
        out[pol] = {**held_fraction(test, held_at_queries(test, p.segment_len, p.num_slots, pol, p.grace)),
                    "lifetimes": lifetime_counts(d.ravel(), o.ravel(), test.item_type.numpy().ravel(), p.horizon)}
    return out


# ---------------------------------------------------------------------------- the run
def choose_fixed(runs: list[dict], p: Profile, select: list[int] | None = None) -> str:
    """The fixed-decay configuration with the highest mean validation recall over the selection seeds
    (`select`, default ``select_seeds``) among the candidates that have runs there (ties: the first of
    ``fixed_logits``); ValueError when none has."""
    select = list(p.select_seeds) if select is None else select
    names = [fixed_name(x) for x in p.fixed_logits]
    score = {n: [r["val"]["recall"] for r in runs if r["config"] == n and r["seed"] in select] for n in names}
    have = [n for n in names if score[n]]
    if not have:
        raise ValueError(f"runs must hold a fixed-decay run ({', '.join(names)}) on a selection seed {select}")
    return max(have, key=lambda n: (float(np.mean(score[n])), -names.index(n)))


def run(profile: str = "laptop", device: str = "auto", seeds: list[int] | None = None, out_dir: Path | None = None,
        save: bool = True, progress: bool = True, amp: str = "auto", only: list[str] | None = None,
        workers: int | None = None) -> dict:
    """Train every configuration of the profile for every seed and measure it; returns (and stores) the results.

    The fixed decay trains its candidate rates on ``select_seeds`` first; the rate with the best validation
    recall is then trained for the other seeds. only: train only these configurations (default: the profile's
    ``only``, else all; a fixed rate among them skips the choice). workers: processes training side by side on a CPU, one thread each (default: the
    profile's; 1 on CUDA). The loop trains in float32 (``amp`` is recorded, not used)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    seeds = check_seeds(seeds if seeds is not None else p.seeds)
    conf = configurations(p)
    if only is None and p.only is not None:
        only = list(p.only)
    if only is not None:
        if isinstance(only, str):
            raise ValueError(f"only must be a list of configuration names among {sorted(conf)}, got {only!r}")
        check_names(only, tuple(conf), "only")
    dev = resolve_device(check_device(device))
    if workers is None:
        workers = p.workers if dev.type == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    task = make_task(p)
    out_dir = Path(out_dir) if out_dir is not None else DATA_DIR / "forgetting" / profile
    if save:  # fail now, not after the training, when the folder cannot be written
        writable_folder(out_dir, "out_dir")
    fixed_all = [fixed_name(x) for x in p.fixed_logits]
    wanted = [n for n in conf if n not in NAMED_ONLY] if only is None else [n for n in conf if n in only]
    choose = only is None
    # the seeds whose validation chooses the fixed rate: the profile's, or the first seed asked for when
    # none of them is
    select = [s for s in seeds if s in p.select_seeds] or seeds[:1]
    first = [(s, n) for s in seeds for n in wanted if n not in fixed_all or not choose or s in select]
    t_all = time.perf_counter()
    pool = worker_pool(min(workers, max(1, len(first)))) if workers > 1 else None

    def launch(jobs):
        if pool is None:
            return [_train_one(p, task, s, n, conf[n], str(dev)) for s, n in jobs]
        return [pool.submit(_train_one, p, task, s, n, conf[n], str(dev), 1) for s, n in jobs]

    try:
        futures = launch(first)
        sel_idx = [i for i, (s, n) in enumerate(first) if n in fixed_all]
        get = (lambda f: f) if pool is None else (lambda f: f.result())
        chosen = None
        later = []
        if choose and sel_idx:
            chosen = choose_fixed([get(futures[i]) for i in sel_idx], p, select)
            later = [(s, chosen) for s in seeds if s not in select]
            futures += launch(later)
        runs = [get(f) for f in futures]
    finally:
        if pool is not None:
            pool.shutdown()
    jobs = first + later
    runs = [runs[i] for i in sorted(range(len(jobs)), key=lambda i: (jobs[i][0], list(conf).index(jobs[i][1])))]
    wall = time.perf_counter() - t_all
    result = {
        "experiment": "forgetting", "profile": profile, "profile_settings": asdict(p),
        "config": make_config(p, task).to_dict(), "task": asdict(task), "chance": task.chance,
        "item_types": list(REUSE_TYPES), "configurations": {n: conf[n] for n in wanted},
        "fixed_choice": chosen, "fixed_selected_on": select if chosen else None,
        "pressure": task.pressure(p.num_slots), "num_segments": p.n_windows,
        "ceilings": {str(s): replay_ceilings(p, task, s) for s in seeds}, "runs": runs,
        "provenance": provenance(dev, seeds, wall, experiment="forgetting", amp="off (float32 loop)", workers=workers),
    }
    if save:  # never over a stored result that holds runs this one lacks: those go to partial/
        write_json(result_folder(out_dir, result, run_keys) / "results.json", result)
    return result


SHARED = ("n_keys", "n_values", "n_filler", "segment_len", "items_per_window", "n_windows", "p_useful", "cue_gap",
          "min_gap", "d_model", "num_slots", "top_k", "mem_heads", "writes_per_segment", "util_weight", "batch_size",
          "steps", "lr", "allocation", "pressure", "grace", "val_batch", "test_batch", "probe_rows", "probe_ages",
          "horizon", "n_boot")  # profile settings two runs must share to be read as one (merge_runs)


def merge_runs(main: dict, extra: dict) -> dict:
    """One result holding the runs of two stored runs made with the same task, model, budget, draws and
    measurements (every ``SHARED`` profile setting equal), e.g. the laptop run and the sweep: `main` with
    `extra`'s configurations and runs added and its provenance kept under ``merged``. ValueError when a
    shared setting differs or a (configuration, seed) is in both."""
    a, b = main["profile_settings"], extra["profile_settings"]
    differ = [k for k in SHARED if a.get(k) != b.get(k)]
    if main.get("experiment") != "forgetting" or extra.get("experiment") != "forgetting" or differ:
        raise ValueError(f"extra must be a forgetting run with the same settings as main, differing in {differ}")
    both = set(run_keys(main)) & set(run_keys(extra))
    if both:
        raise ValueError(f"extra must not repeat runs of main, got {sorted(both)}")
    out = dict(main)
    out["configurations"] = {**main["configurations"], **extra["configurations"]}
    out["runs"] = main["runs"] + extra["runs"]
    out["merged"] = {"profile": extra["profile"], "provenance": extra["provenance"]}
    return out


def run_keys(result: dict) -> list[tuple]:
    """One key per run of a result, (configuration, seed): what a stored result must keep."""
    return [(r["config"], r["seed"]) for r in result["runs"]]


# ---------------------------------------------------------------------------- reading a stored run
def runs_of(result: dict, name: str) -> list[dict]:
    """The runs of a configuration, by seed; ``"fixed"`` names the chosen fixed rate."""
    if name == "fixed":
        name = result.get("fixed_choice") or ""
    return sorted((r for r in result["runs"] if r["config"] == name), key=lambda r: r["seed"])


def shown(result: dict) -> list[str]:
    """The configurations the chapter compares, in order: no decay, the chosen fixed decay, learned
    decay, evidence decay (its pressure sweep, then with faded-first allocation), those the run holds."""
    names = (["none", "fixed", "learned", "evidence"] + [n for n in result["configurations"] if n.startswith("evidence@")]
             + ["evidence_faded"])
    return [n for n in names if runs_of(result, n)]


def lifetimes_of(run_record: dict) -> ItemLifetimes:
    return ItemLifetimes.from_dict(run_record["lifetimes"])


def _by_type(result: dict, name: str, fn) -> dict:
    """``fn(duration, observed, horizon)`` of useful and of distractor items, pooled over the seeds of `name`."""
    h = result["profile_settings"]["horizon"]
    life = [lifetimes_of(r) for r in runs_of(result, name)]
    return {t: fn(np.concatenate([x.duration[x.type == code] for x in life]),
                  np.concatenate([x.observed[x.type == code] for x in life]), h)
            for code, t in ((USEFUL, "useful"), (DISTRACTOR, "distractor"))}


def survival_by_type(result: dict, name: str) -> dict[str, np.ndarray]:
    """Kaplan-Meier S(t), t = 0..horizon, of useful and distractor items pooled over seeds."""
    return _by_type(result, name, survival_steps)


def hazard_by_type(result: dict, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Hazard at ages 1..horizon of useful and distractor items pooled over seeds, with the items held."""
    return _by_type(result, name, hazard)


def rmst_ratio(result: dict, name: str) -> dict[str, float]:
    """Useful over distractor restricted mean survival, pooled over seeds, with its bootstrap interval
    (:func:`memnet.lifetimes.bootstrap_rmst_ratio`; seed 0 of the bootstrap, so the interval is a
    function of the stored run)."""
    p = result["profile_settings"]
    return bootstrap_rmst_ratio([lifetimes_of(r) for r in runs_of(result, name)], USEFUL, DISTRACTOR, p["horizon"],
                                n_boot=p["n_boot"], seed=0)


def replay_rmst(result: dict, policy: str) -> dict[str, float]:
    """Restricted mean survival of useful and distractor items under a replayed rule, pooled over the
    run's seeds, and their ratio: what the rule itself would give on the same test draws."""
    h = result["profile_settings"]["horizon"]
    out = {t: rmst(counts_to_km([c[policy]["lifetimes"][t] for c in result["ceilings"].values()]), h)
           for t in ("useful", "distractor")}
    out["ratio"] = out["useful"] / out["distractor"] if out["distractor"] > 0 else float("nan")
    return out


def probe_accuracy(result: dict, name: str, item_type: str, held: str = "all") -> dict[int, tuple[int, int]]:
    """{age: (probes, correct)} of one item type pooled over seeds: all probes (``held="all"``), those of
    items still held (``"held"``), or of items already let go (``"gone"``)."""
    out = {}
    for r in runs_of(result, name):
        for age, c in r["probes"].get(item_type, {}).items():
            n, k = {"all": (c["n"], c["correct"]), "held": (c["held"], c["held_correct"]),
                    "gone": (c["n"] - c["held"], c["correct"] - c["held_correct"])}[held]
            a, b = out.get(int(age), (0, 0))
            out[int(age)] = (a + n, b + k)
    return out


def probe_totals(result: dict, name: str, item_type: str, held: str = "all") -> tuple[int, int]:
    """(probes, correct) of one item type over all ages and seeds, as :func:`probe_accuracy` splits them."""
    cells = probe_accuracy(result, name, item_type, held).values()
    return sum(c[0] for c in cells), sum(c[1] for c in cells)


def ceiling(result: dict, policy: str, kind: str = "recall") -> list[float]:
    """Per seed: the share of `kind` queries whose item a replayed rule still holds."""
    return [result["ceilings"][s][policy][kind] for s in sorted(result["ceilings"], key=int)]


def recall(result: dict, name: str, kind: str = "recall") -> list[float]:
    """Per seed: test accuracy at `kind` queries."""
    return [r["test"][kind] for r in runs_of(result, name)]


def config_rows(result: dict) -> list[dict]:
    """One row per shown configuration: per-seed recall, cue accuracy, share of recalls held, and the pooled
    RMST of each type with the ratio's bootstrap interval."""
    rows = []
    for n in shown(result):
        rs = runs_of(result, n)
        ratio = rmst_ratio(result, n)
        rows.append({"config": n, "seeds": [r["seed"] for r in rs], "recall": recall(result, n),
                     "cue": recall(result, n, "cue"), "held_recall": [r["held_recall"] for r in rs],
                     "rmst_useful": ratio["numerator"], "rmst_distractor": ratio["denominator"], "ratio": ratio})
    return rows


MARGIN = 0.05  # recall of useful items: evidence decay over the fixed decay, in every seed
RATIO = 5.0  # RMST of useful over distractor items under evidence decay
NEAR_ONE = 0.25  # without decay the RMST ratio is within this of 1


def summarize(result: dict, rows: list[dict] | None = None) -> list[Verdict]:
    """The claims, with thresholds fixed before the run: evidence decay recalls useful items at least
    ``MARGIN`` better than the chosen fixed decay in every seed; its useful/distractor RMST ratio is at
    least ``RATIO`` with a bootstrap interval above 1; without decay the ratio is within ``NEAR_ONE`` of 1.
    rows: the result's :func:`config_rows`, when already computed (their bootstrap is not redone)."""
    ratios = {r["config"]: r["ratio"] for r in rows} if rows is not None else {}
    ratio_of = lambda n: ratios[n] if n in ratios else rmst_ratio(result, n)
    out = []
    ev, fx = runs_of(result, "evidence"), runs_of(result, "fixed")
    by_seed = {r["seed"]: r["test"]["recall"] for r in fx}
    gaps = [r["test"]["recall"] - by_seed[r["seed"]] for r in ev if r["seed"] in by_seed]  # paired by seed
    if gaps:
        out.append(Verdict(f"evidence decay recalls useful items >= {100 * MARGIN:g} points better than the fixed "
                           f"decay ({result['fixed_choice']}) in every seed", min(gaps), MARGIN, min(gaps) >= MARGIN,
                           "per seed " + ", ".join(f"{100 * g:+.1f}" for g in gaps)))
    if ev:
        r = ratio_of("evidence")
        rules = "; ".join(f"replayed {pol}: {replay_rmst(result, pol)['ratio']:.2f}" for pol in POLICIES)
        out.append(Verdict(f"evidence decay: RMST useful / distractor >= {RATIO:g}, 95% bootstrap interval above 1",
                           r["ratio"], RATIO, r["ratio"] >= RATIO and r["lo"] > 1.0,
                           f"interval [{r['lo']:.2f}, {r['hi']:.2f}]; {rules}"))
    if runs_of(result, "none"):
        r = ratio_of("none")
        out.append(Verdict(f"no decay: RMST useful / distractor within {NEAR_ONE:g} of 1", r["ratio"], 1.0,
                           abs(r["ratio"] - 1.0) <= NEAR_ONE, f"interval [{r['lo']:.2f}, {r['hi']:.2f}]"))
    return out


LABELS = {"none": "no decay", "fixed": "fixed decay", "learned": "learned decay", "evidence": "evidence decay",
          "evidence_faded": "evidence decay, faded-first"}


def label(result: dict, name: str) -> str:
    """A reader's name for a configuration."""
    if name == "fixed" and result.get("fixed_choice"):
        return f"fixed decay, logit {result['fixed_choice'].split('@')[1]}"
    if name.startswith("evidence@"):
        return f"evidence decay, pressure {name.split('@')[1]}"
    return LABELS.get(name, name)


def summary_table(result: dict, rows: list[dict] | None = None) -> str:
    """Per configuration: recall and cue accuracy, share of recalls whose item is still held, and the RMST of
    useful and distractor items with the ratio's bootstrap interval; then the replayed rules.
    rows: the result's :func:`config_rows`, when already computed."""
    h = result["profile_settings"]["horizon"]
    rows = config_rows(result) if rows is None else rows
    n = max((len(r["seeds"]) for r in rows), default=0)
    main = format_table(
        ["configuration", "recall %", "cue %", "held at recall %", f"RMST useful (<= {h})", "RMST distractor",
         "ratio [95% CI]"],
        [[label(result, r["config"]), mean_ci(r["recall"], 100), mean_ci(r["cue"], 100), mean_ci(r["held_recall"], 100),
          f"{r['rmst_useful']:.2f}", f"{r['rmst_distractor']:.2f}",
          f"{r['ratio']['ratio']:.2f} [{r['ratio']['lo']:.2f}, {r['ratio']['hi']:.2f}]"] for r in rows],
        f"test draws; mean ± 95% t-interval over {n} seeds; lifetimes in windows, pooled over seeds")
    ceil = format_table(["replayed rule", "recalls held %", "RMST useful", "RMST distractor", "ratio"],
                        [[pol, mean_ci(ceiling(result, pol), 100)] + [f"{replay_rmst(result, pol)[k]:.2f}" for k in (
                            "useful", "distractor", "ratio")] for pol in POLICIES],
                        f"what a memory of {result['profile_settings']['num_slots']} slots could hold (no network)")
    return main + "\n\n" + ceil


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, PROFILES, "forgetting")
    ap.add_argument("--only", action=DistinctList, what="configuration", default=None,
                    help="train only these configurations")
    ap.add_argument("--workers", type=positive_int, default=None,
                    help="training processes on a CPU (default: the profile's)")
    a = ap.parse_args(argv)
    if a.only is not None:
        known = configurations(PROFILES[a.profile])
        for name in a.only:
            if name not in known:
                ap.error(f"argument --only: expected configurations of profile {a.profile!r} among "
                         f"{', '.join(known)}, got {name!r}")
    check_out(ap, a, "forgetting")
    res = run(a.profile, a.device, a.seeds, a.out, not a.no_save, not a.no_progress, a.amp, a.only, a.workers)
    print(summary_table(res))
    print()
    print("\n".join(v.line() for v in summarize(res)))
    print(done_line(res, a, "forgetting"))


if __name__ == "__main__":
    main()
