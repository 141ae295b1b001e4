"""Experiment 3: learned forgetting. Does the memory keep what will be needed and let go of the rest?

MemNet trains on :class:`~memnet.tasks.ForgettingStream`: windows of key-value items, each
useful (queried once, later), expiring (queried within a short horizon) or a distractor
(never queried), with more items per sequence than slots. After training, every content
written on a fixed evaluation batch is followed from its write event to its overwrite or
decay (:mod:`memnet.survival`), attributed to the item whose token wrote it, and the
lifetimes are summarised per item type with Kaplan-Meier.

Ablations, trained in the same run on the same batches and seeds: learned decay gates
(the default), a fixed retention sigmoid(decay_init), no decay; learned decay with "faded"
allocation (a slot's staleness divided by the retained fraction of its content, so what
decay lets go of is reused first); the utilization loss off; a sweep of the
memory-pressure weight; and a fixed write schedule ("forced_*": every item is written, so
decay and allocation alone decide what is kept), with no decay and with learned decay
and faded allocation at a few pressure weights. The table prints medians, their ratio, write
rates and recall per ablation (mean ± 95% t-interval over seeds); the run is stored under
data/forgetting/<profile>/ with its provenance. A result that lacks runs of the stored
results.json (fewer ablations or seeds) does not replace it: it is stored, with its traces, in
``partial/`` of that folder. Worker processes end when the run's process dies.

    python -m memnet.experiments.forgetting --profile laptop
    python -m memnet.experiments.forgetting --profile long   # forced writes, twice the trace and bank
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..baselines import count_params
from ..config import MemNetConfig
from ..model import MemNet
from ..survival import (age_histogram, content_lifetimes, content_sources, counts_to_km, event_label_matrix, median_survival, rmst,
                        read_entropy_per_segment, retained_at_read, write_frequency)
from ..tasks.forgetting import EXPIRING, ITEM_TYPES, USEFUL, ForgettingBatch, ForgettingStream
from ..train import Trainer, TrainConfig, amp_dtype, autocast, resolve_device
from .common import (DATA_DIR, DistinctList, Verdict, check_device, check_names, check_out, check_seeds, done_line,
                     experiment_parser, format_table, mean_ci, positive_int, provenance, result_folder, save_torch,
                     seed_everything, worker_pool, writable_folder, write_json)

# content groups: the three item types, then "other" (written by a filler or query token);
# contents whose writer cannot be identified (see survival.content_sources) get code -1
GROUPS = ITEM_TYPES + ("other",)
OTHER = len(ITEM_TYPES)
# bins of the retained fraction of the slot a query reads most (recall_by_retention); the last edge lets 1 in
RETAINED_BINS = (0.0, 1e-3, 1e-2, 1e-1, 0.5, 1.0 + 1e-9)


@dataclass
class Profile:
    """Everything a profile fixes: model size, task, budget, ablations."""

    d_model: int = 64
    segment_len: int = 16
    # 8 slots for 33 items, about 16 of them useful or expiring: even a memory that writes no
    # distractor must let go of something, so lifetimes end inside the trace
    num_slots: int = 8
    top_k: int = 4
    mem_heads: int = 4
    writes_per_segment: int = 4
    items_per_window: int = 3
    n_windows: int = 12
    p_useful: float = 0.3
    p_expiring: float = 0.2
    horizon: int = 2
    batch_size: int = 32
    steps: int = 240
    lr: float = 3e-3
    # the learning rate stays at lr after warm-up (TrainConfig.min_lr_ratio): the memory path is
    # found late (a jump in recall after 100-250 steps), and a cosine decay to 0.1 x lr over a short
    # run stalled some seeds half-way through that jump
    min_lr_ratio: float = 1.0
    pressure: float = 0.01  # pressure_weight of the main ("learned") configuration
    pressure_sweep: tuple = (0.0, 0.01, 0.1)  # pressure_weight values trained with learned decay
    # a fixed write schedule (MemNetConfig.write_tokens = the value tokens: every item is written, each
    # into a slot of its own, so the write gate cannot refuse a distractor): learned decay with "faded"
    # allocation at these pressure weights, and no decay ("forced_none"); at 1.0 decay also takes most
    # useful content in a trial run, so the sweep brackets the best weight
    forced_pressures: tuple = (0.1, 0.3, 1.0)
    decay_threshold: float = 0.1  # a content has decayed once its retention product falls below this
    probes: int = 10  # read entropy and write events logged this many times during training
    probe_batch: int = 8
    eval_batch: int = 64
    trace_rows: int = 2  # evaluation sequences whose traces are stored
    seeds: tuple = (0, 1, 2)
    workers: int = 2  # processes training jobs side by side on a CPU (one thread each)
    only: tuple | None = None  # the ablations this profile trains (None: all of them)


PROFILES = {
    "smoke": Profile(d_model=16, num_slots=8, segment_len=8, items_per_window=2, n_windows=6, writes_per_segment=2,
                     top_k=2, mem_heads=2, batch_size=4, steps=6, probes=2, probe_batch=2, eval_batch=4,
                     pressure_sweep=(0.0, 0.01), forced_pressures=(0.1,), seeds=(0,), workers=1),
    # d_model 48, batch 18 and 6 probes (rather than the defaults 64, 32 and 10) keep 11 configurations x 3
    # seeds, 360 steps each, within 10 minutes on 2 CPU cores (2 worker processes); 360 steps at a constant
    # learning rate bring every seed of the main configurations past the jump in recall. The gpu profile
    # trains the larger model longer, with as many useful or expiring items per slot
    "laptop": Profile(d_model=48, batch_size=18, probes=6, steps=360),
    # the laptop model and budget on the gpu profile's task shape (twice the trace and the bank, as many
    # items per slot), forced-write configurations only: how far the ratio of median lifetimes moves when
    # useful content has room to stay (4 configurations x 3 seeds of twice the laptop's sequence length)
    "long": Profile(d_model=48, batch_size=18, probes=6, steps=360, n_windows=24, num_slots=16,
                    only=("forced_none", "forced_p=0.1", "forced_p=0.3", "forced_p=1")),
    "gpu": Profile(d_model=128, num_slots=16, segment_len=16, items_per_window=3, n_windows=24, writes_per_segment=4,
                   batch_size=64, steps=1500, eval_batch=256, pressure_sweep=(0.0, 0.003, 0.01, 0.03, 0.1)),
}


def make_task(p: Profile) -> ForgettingStream:
    n_items = p.items_per_window * (p.n_windows - 1)
    return ForgettingStream(n_keys=max(8, n_items), segment_len=p.segment_len, items_per_window=p.items_per_window,
                            n_windows=p.n_windows, p_useful=p.p_useful, p_expiring=p.p_expiring, horizon=p.horizon)


def ablations(p: Profile) -> dict[str, dict]:
    """Ablation name -> MemNetConfig overrides. "learned" is the full model."""
    base = {"decay_mode": "learned", "util_weight": 0.01, "pressure_weight": p.pressure}
    out = {"learned": base, "fixed": {**base, "decay_mode": "fixed"}, "none": {**base, "decay_mode": "none"},
           "faded": {**base, "allocation": "faded"}, "no_util": {**base, "util_weight": 0.0}}
    for w in p.pressure_sweep:
        if w != p.pressure:
            out[f"pressure={w:g}"] = {**base, "pressure_weight": float(w)}
    if p.forced_pressures:
        forced = {**base, "write_tokens": make_task(p).value_tokens}
        out["forced_none"] = {**forced, "decay_mode": "none"}
        for w in p.forced_pressures:
            out[f"forced_p={w:g}"] = {**forced, "allocation": "faded", "pressure_weight": float(w)}
    return out


def make_config(p: Profile, task: ForgettingStream, **overrides) -> MemNetConfig:
    return MemNetConfig(vocab_size=task.vocab_size, d_model=p.d_model, num_slots=p.num_slots, top_k=p.top_k,
                        mem_heads=p.mem_heads, segment_len=p.segment_len, writes_per_segment=p.writes_per_segment,
                        **overrides)


# ---------------------------------------------------------------------------- analysis of one trace
def content_groups(trace, life, batch: ForgettingBatch) -> np.ndarray:
    """(M,) group code of every content: the type of the item whose token wrote it, OTHER for a
    filler or query token, -1 when the writer cannot be identified."""
    src = content_sources(trace, life)
    item_at = batch.item_at.cpu().numpy()
    item_type = batch.item_type.cpu().numpy()
    ok = src >= 0
    item = np.where(ok, item_at[life.batch, np.clip(src, 0, None)], -1)
    return np.where(~ok, -1, np.where(item >= 0, item_type[life.batch, np.clip(item, 0, None)], OTHER))


def lifetime_counts(life, group: np.ndarray) -> dict[str, dict[str, list[int]]]:
    """Per group: deaths and censorings at every duration 0..S (enough to rebuild Kaplan-Meier), and
    deaths by cause."""
    S = life.num_segments
    out = {}
    for c, name in enumerate(GROUPS):
        sel = group == c
        d, o = life.duration[sel], life.observed[sel]
        out[name] = {"deaths": np.bincount(d[o], minlength=S + 1).tolist(),
                     "censored": np.bincount(d[~o], minlength=S + 1).tolist(),
                     "overwrite": int((life.cause[sel] == "overwrite").sum()),
                     "decay": int((life.cause[sel] == "decay").sum())}
    out["unattributed"] = {"count": int((group == -1).sum())}
    return out


def item_lifetimes(trace, life, batch: ForgettingBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How long each *item* stays in memory, counted from the end of the segment that shows it.

    An item that wrote no attributable content never entered the memory: duration 0, observed
    (the write gate forgot it on arrival). An item that did lives as long as its longest-lived
    content (a content created by the item's own tokens, see :func:`~memnet.survival.content_sources`):
    observed once all of them died, censored while one is alive at the end of the trace.
    Returns (type, duration, observed), one entry per item of every row (flattened, row-major).
    """
    src = content_sources(trace, life)
    item_at = batch.item_at.cpu().numpy()  # (B, T)
    item_type = batch.item_type.cpu().numpy()  # (B, M)
    duration = np.zeros(item_type.shape, dtype=np.int64)
    alive = np.zeros(item_type.shape, dtype=bool)
    ok = src >= 0
    items = item_at[life.batch[ok], src[ok]]
    keep = items >= 0
    b, m = life.batch[ok][keep], items[keep]
    np.maximum.at(duration, (b, m), life.duration[ok][keep])
    np.logical_or.at(alive, (b, m), ~life.observed[ok][keep])
    return item_type.ravel(), duration.ravel(), ~alive.ravel()


def _counts_by_type(types: np.ndarray, duration: np.ndarray, observed: np.ndarray, S: int) -> dict:
    return {name: {"deaths": np.bincount(duration[(types == c) & observed], minlength=S + 1).tolist(),
                   "censored": np.bincount(duration[(types == c) & ~observed], minlength=S + 1).tolist()}
            for c, name in enumerate(ITEM_TYPES)}


def item_counts(trace, life, batch: ForgettingBatch) -> dict[str, dict[str, list[int]]]:
    """Per item type: deaths and censorings at every duration 0..S, as :func:`lifetime_counts`."""
    return _counts_by_type(*item_lifetimes(trace, life, batch), life.num_segments)


def recall_by_retention(trace, batch: ForgettingBatch, pred: np.ndarray) -> dict[str, dict[str, list[int]]]:
    """Does a content that has "decayed" still answer its query?

    For every query of a useful or expiring item: the slot its read weighs most (summed over heads
    and the top-k) and that slot's retained fraction at the query's segment
    (:func:`~memnet.survival.retained_at_read`), binned by ``RETAINED_BINS``. Returns, per item
    type, the number of queries ("queries") and of correct predictions ("correct") in every bin.
    pred: (B, T) predicted tokens.
    """
    R = retained_at_read(trace)  # (B, S, N)
    L = trace.valid.shape[2]
    index = trace.read_index.cpu().numpy()  # (B, S, L, H, K)
    weight = trace.read_weight.float().cpu().numpy()
    tgt = batch.targets.cpu().numpy()
    qp = batch.query_pos.cpu().numpy()
    item_type = batch.item_type.cpu().numpy()
    out = {}
    for c in (USEFUL, EXPIRING):
        rows, cols = np.nonzero((qp >= 0) & (item_type == c))
        q = qp[rows, cols]
        s, pos = q // L, q % L
        idx = index[rows, s, pos].reshape(len(q), -1)  # (Q, H*K)
        mass = np.zeros((len(q), R.shape[-1]))
        np.add.at(mass, (np.arange(len(q))[:, None], idx), weight[rows, s, pos].reshape(len(q), -1))
        kept = R[rows, s, mass.argmax(1)] if len(q) else np.zeros(0)
        ok = pred[rows, q] == tgt[rows, q]
        out[ITEM_TYPES[c]] = {"queries": np.histogram(kept, bins=RETAINED_BINS)[0].tolist(),
                              "correct": np.histogram(kept[ok], bins=RETAINED_BINS)[0].tolist()}
    return out


def analyse(trace, batch: ForgettingBatch, logits: torch.Tensor, decay_threshold: float) -> dict:
    """Every number the table and the chapter need, from one evaluation trace."""
    life = content_lifetimes(trace, decay_threshold=decay_threshold)
    group = content_groups(trace, life, batch)
    counts = lifetime_counts(life, group)
    S = life.num_segments
    res: dict = {"contents": len(life), "counts": counts, "median": {}, "rmst": {}}
    for name in GROUPS:
        km = counts_to_km(counts[name])
        res["median"][name] = median_survival(km) if km is not None else float("nan")
        res["rmst"][name] = rmst(km, S)
    types, duration, observed = item_lifetimes(trace, life, batch)
    res["item_counts"] = _counts_by_type(types, duration, observed, S)
    res["item_median"] = {}
    for name in ITEM_TYPES:
        km = counts_to_km(res["item_counts"][name])
        res["item_median"][name] = median_survival(km) if km is not None else float("nan")
    # write rate: share of the items of each type that wrote at least one content (a lifetime >= 1)
    res["write_rate"] = {name: float((duration[types == c] > 0).mean()) if (types == c).any() else float("nan")
                         for c, name in enumerate(ITEM_TYPES)}
    item_type = batch.item_type.cpu().numpy()
    # recall at the queries of useful and of expiring items
    pred = logits.argmax(-1).cpu().numpy()
    tgt = batch.targets.cpu().numpy()
    qp = batch.query_pos.cpu().numpy()
    res["accuracy"] = {}
    for c in (USEFUL, EXPIRING):
        rows, cols = np.nonzero((qp >= 0) & (item_type == c))
        q = qp[rows, cols]
        res["accuracy"][ITEM_TYPES[c]] = float((pred[rows, q] == tgt[rows, q]).mean()) if len(q) else float("nan")
    res["recall_by_retention"] = recall_by_retention(trace, batch, pred)
    res["read_entropy"] = float(np.nanmean(read_entropy_per_segment(trace)))
    res["write_frequency"] = write_frequency(trace).tolist()
    res["events_per_segment"] = float(trace.write_events.float().sum(-1).mean())
    B = trace.write_events.shape[0]
    res["events_per_segment_by_group"] = {g: float((group == c).sum() / (B * S)) for c, g in enumerate(GROUPS)}
    res["age_histogram"] = age_histogram(trace, bins=np.arange(S + 2) - 0.5)[0].astype(int).tolist()
    res["retention_mean"] = float(trace.retention.float().mean())
    return res


def ratio(res: dict) -> float:
    """Median survival of useful contents over that of distractor contents (inf when the useful
    median is beyond the trace, nan when a group has no content)."""
    u, d = res["median"]["useful"], res["median"]["distractor"]
    if not (u == u and d == d) or d == 0:
        return float("nan")
    return u / d


def ratio_lower_bound(res: dict, num_segments: int) -> float:
    """What the trace can vouch for: the median ratio where both medians were observed, and
    ``num_segments / distractor median`` where the useful median lies beyond the trace (the useful
    median exceeds anything the trace can show, so the true ratio is at least that); nan as
    :func:`ratio`."""
    r = ratio(res)
    if r == float("inf"):
        return num_segments / res["median"]["distractor"]
    return r


FACTOR, MIN_SEEDS = 10.0, 3  # the claim's thresholds: useful/distractor median ratio, in every one of this many seeds


def meets_bar(ratios, factor: float = FACTOR, min_seeds: int = MIN_SEEDS) -> bool:
    """The claim on per-seed useful/distractor ratios: at least `min_seeds` seeds, and at least
    `factor` in every one of them (nan fails)."""
    r = np.asarray(ratios, dtype=float)
    return bool(len(r) >= min_seeds and np.all(r >= factor))


def decay_share(res: dict, group: str) -> float:
    """Share of the contents of `group` (an item type or "other") that died by decay, out of all
    its contents (overwritten and still alive included); nan when there is none. With decay
    "none" or "fixed" it is 0 by construction: no retention product falls below the threshold
    (sigmoid(decay_init) ** num_segments stays above it at the profiles' settings)."""
    c = res["counts"][group]
    total = sum(c["deaths"]) + sum(c["censored"])
    return c["decay"] / total if total else float("nan")


def item_ratio(res: dict) -> float:
    """Median time in memory of useful items over that of distractor items (inf when distractors'
    median is 0 and useful items' is not: most distractors were never written)."""
    u, d = res["item_median"]["useful"], res["item_median"]["distractor"]
    if not (u == u and d == d):
        return float("nan")
    return u / d if d > 0 else (float("inf") if u > 0 else float("nan"))


@dataclass
class ForcedView:
    """The forced-write configurations of a run (those with a fixed write schedule, see
    :func:`ablations`): their :func:`ablation_rows` by name, the learned-decay names in run order,
    all names with "forced_none" first, the per-seed lower bounds on the useful/distractor median
    ratio (:func:`ratio_lower_bound`), the pressure that separates the types most (highest mean
    ratio) and the highest pressure trained."""

    rows: dict
    forced: list
    names: list
    ratios: dict
    best: str
    top: str


def forced_view(result: dict) -> ForcedView:
    """:class:`ForcedView` of a run; ValueError when it has no "forced_none" or no "forced_p=w" runs."""
    rows = {r["ablation"]: r for r in ablation_rows(result)}
    forced = [n for n in result["ablations"] if n.startswith("forced_p=") and n in rows]
    if "forced_none" not in rows or not forced:
        raise ValueError(f"result must hold forced_none and forced_p=w runs, got ablations {sorted(rows)}")
    names = ["forced_none"] + forced
    ratios = {n: np.array(rows[n]["ratio_bound"], dtype=float) for n in names}
    best = max(forced, key=lambda n: np.nanmean(ratios[n]) if np.isfinite(ratios[n]).any() else -np.inf)
    top = max(forced, key=lambda n: result["ablations"][n]["pressure_weight"])
    return ForcedView(rows, forced, names, ratios, best, top)


# ---------------------------------------------------------------------------- the run
@torch.no_grad()
def _probe(model: MemNet, batch: ForgettingBatch, device: torch.device, dtype) -> dict:
    model.eval()
    with autocast(device, dtype):
        tr = model(batch.tokens, return_trace=True).trace
    return {"read_entropy": float(np.nanmean(read_entropy_per_segment(tr))),
            "events_per_segment": float(tr.write_events.float().sum(-1).mean()),
            "retention_mean": float(tr.retention.float().mean())}


def _train_one(p: Profile, task: ForgettingStream, seed: int, name: str, over: dict, device: str, amp: str,
               progress: bool, threads: int | None = None) -> tuple[dict, dict, dict | None]:
    """Train and analyse one (ablation, seed): a pure function of its arguments, so jobs can run in
    any order or process. Returns the run record, the stored per-ablation maps, and the trace
    rows to store (for the "learned" ablation) or None."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    dtype = amp_dtype(dev, amp)
    chunk = max(1, p.steps // p.probes)
    probe = task.sample(p.probe_batch, seed=7_000_003 * (seed + 1)).to(dev)
    ev = task.sample(p.eval_batch, seed=9_000_011 * (seed + 1)).to(dev)
    seed_everything(seed)
    cfg = make_config(p, task, **over)
    model = MemNet(cfg)
    tc = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, min_lr_ratio=p.min_lr_ratio, amp=amp,
                     warmup=min(50, p.steps // 10 + 1),
                     log_every=chunk, progress=progress)
    trainer = Trainer(model, tc, dev, name=f"{name}_seed{seed}")

    def batch_fn(step: int):
        b = task.sample(p.batch_size, seed=seed * 1_000_003 + step)
        return b.tokens, b.targets

    t0 = time.perf_counter()
    curve = [{"step": 0, **_probe(trainer.model, probe, dev, dtype)}]
    while trainer.step < p.steps:
        trainer.fit(batch_fn, steps=min(p.steps, trainer.step + chunk))
        curve.append({"step": trainer.step, **_probe(trainer.model, probe, dev, dtype)})
    train_s = time.perf_counter() - t0
    trainer.model.eval()
    with torch.no_grad(), autocast(dev, dtype):
        out = trainer.model(ev.tokens, return_trace=True)
    tr = out.trace.to("cpu")
    ev = ev.to("cpu")
    res = analyse(tr, ev, out.logits.float().cpu(), p.decay_threshold)
    hist = [{k: h[k] for k in ("step", "loss", "acc") if k in h} for h in trainer.history]
    record = {"ablation": name, "seed": seed, "overrides": over, "params": count_params(model),
              "train_s": round(train_s, 1), "history": hist, "probe_curve": curve, **res}
    rows = slice(0, p.trace_rows)
    life = content_lifetimes(tr, decay_threshold=p.decay_threshold)
    grp = content_groups(tr, life, ev)
    labels = torch.stack([torch.from_numpy(event_label_matrix(life, grp, cfg.num_slots, b).astype(np.int8))
                          for b in range(min(p.trace_rows, ev.tokens.shape[0]))])
    maps = {"labels": labels,  # (rows, S, N) group code of each write event
            "write_strength": tr.write_strength[rows].half().clone(),
            "retention": tr.retention[rows].half().clone()}
    trace = {k: v[rows].clone() for k, v in tr.as_dict().items()}  # clone: a saved view carries its whole storage
    return record, maps, trace


def run(profile: str = "laptop", device: str = "auto", seeds: list[int] | None = None, out_dir: Path | None = None,
        save: bool = True, progress: bool = True, amp: str = "auto", only: list[str] | None = None,
        workers: int | None = None) -> dict:
    """Train every ablation of the profile for every seed, analyse the lifetimes; returns (and stores) the results.

    workers: processes that train (ablation, seed) jobs side by side, each on one CPU thread (default: the
    profile's ``workers`` on CPU, 1 on CUDA). Every job seeds itself, so the results do not depend on it.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    seeds = check_seeds(seeds if seeds is not None else p.seeds)
    abl = ablations(p)
    only = only if only is not None else p.only
    if only is not None:
        if isinstance(only, str):
            raise ValueError(f"only must be a list of ablation names among {sorted(abl)}, got {only!r}")
        unknown = set(only) - set(abl)
        if unknown:
            raise ValueError(f"only must name ablations among {sorted(abl)}, got {sorted(unknown)}")
        check_names(only, tuple(abl), "only")
        abl = {k: v for k, v in abl.items() if k in only}
    dev = resolve_device(check_device(device))
    dtype = amp_dtype(dev, amp)
    if workers is None:
        workers = p.workers if dev.type == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    task = make_task(p)
    out_dir = Path(out_dir) if out_dir is not None else DATA_DIR / "forgetting" / profile
    if save:  # fail now, not after the training, when the folder cannot be written
        writable_folder(out_dir, "out_dir")
    t_all = time.perf_counter()
    jobs = [(seed, name, over) for seed in seeds for name, over in abl.items()]
    if workers == 1 or len(jobs) == 1:
        done = [_train_one(p, task, seed, name, over, str(dev), amp, progress) for seed, name, over in jobs]
    else:  # tiny models: one thread per process beats two threads in one process
        with worker_pool(min(workers, len(jobs))) as pool:  # workers end when this process dies
            futures = [pool.submit(_train_one, p, task, seed, name, over, str(dev), amp, False, 1)
                       for seed, name, over in jobs]
            done = [f.result() for f in futures]
    runs, stored = [], {}
    for (seed, name, _), (record, maps, trace) in zip(jobs, done):
        runs.append(record)
        if seed not in stored:
            ev = task.sample(p.eval_batch, seed=9_000_011 * (seed + 1))
            keep = lambda t: t[: p.trace_rows].cpu().clone()
            stored[seed] = {"tokens": keep(ev.tokens), "targets": keep(ev.targets), "item_at": keep(ev.item_at),
                            "item_type": keep(ev.item_type), "query_pos": keep(ev.query_pos), "ablations": {}}
        stored[seed]["ablations"][name] = maps
        if name == "learned" or (name == next(iter(abl)) and "trace" not in stored[seed]):
            stored[seed]["trace"] = trace
            stored[seed]["trace_ablation"] = name
    wall = time.perf_counter() - t_all
    cfg0 = make_config(p, task, **next(iter(abl.values())))
    result = {
        "experiment": "forgetting", "profile": profile, "profile_settings": asdict(p), "config": cfg0.to_dict(),
        "task": asdict(task), "chance": task.chance, "groups": list(GROUPS), "ablations": abl,
        "num_segments": p.n_windows, "pressure": task.pressure(p.num_slots), "runs": runs,
        "provenance": provenance(dev, seeds, wall, amp=str(dtype), workers=workers),
    }
    if save:  # never over a stored result that holds runs this one lacks: those go to partial/
        folder = result_folder(out_dir, result, run_keys)
        for seed, d in stored.items():
            save_torch(d, folder / f"trace_seed{seed}.pt")
        write_json(folder / "results.json", result)
    return result


def run_keys(result: dict) -> list[tuple]:
    """One key per run of a result, (ablation, seed): what a stored result must keep."""
    return [(r["ablation"], r["seed"]) for r in result["runs"]]


def survival_panels(result: dict, names: list[str], groups: tuple = ("useful", "expiring", "distractor"),
                    counts: str = "counts") -> dict[str, dict[int, dict]]:
    """{configuration: {seed: {"kms": {group: KMResult or None}, "recall": accuracy on useful items}}}
    for the configurations `names` of a stored run: the Kaplan-Meier estimate of each group's
    contents ("counts") or items ("item_counts"), per seed (what :func:`memnet.plots.survival_grid` draws)."""
    if counts not in ("counts", "item_counts"):
        raise ValueError(f"counts must be 'counts' or 'item_counts', got {counts!r}")
    return {name: {r["seed"]: {"kms": {g: counts_to_km(r[counts][g]) for g in groups},
                               "recall": r["accuracy"]["useful"]}
                   for r in result["runs"] if r["ablation"] == name}
            for name in names}


# ---------------------------------------------------------------------------- the table
def fmt(values, digits: int = 1) -> str:
    """:func:`~memnet.experiments.common.mean_ci` of per-seed values, or the per-seed values joined
    by '/' when one is inf or nan (their mean would hide the others)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) and not np.isfinite(v).all():
        return "/".join(f"{x:g}" if not np.isfinite(x) or x == round(x) else f"{x:.{digits}f}" for x in v)
    return mean_ci(v, 1.0, digits)


def ablation_rows(result: dict) -> list[dict]:
    """One row per ablation: per-seed values of every table column."""
    rows = []
    for name in result["ablations"]:
        rs = [r for r in result["runs"] if r["ablation"] == name]
        if not rs:
            continue
        pooled = {g: counts_to_km([r["counts"][g] for r in rs]) for g in ("useful", "distractor")}
        rows.append({
            "ablation": name, "n_seeds": len(rs),
            "median_useful": [r["median"]["useful"] for r in rs],
            "median_distractor": [r["median"]["distractor"] for r in rs],
            "median_expiring": [r["median"]["expiring"] for r in rs],
            "decay_share": {g: [decay_share(r, g) for r in rs] for g in ITEM_TYPES},
            "ratio": [ratio(r) for r in rs],
            "ratio_bound": [ratio_lower_bound(r, result["num_segments"]) for r in rs],
            "rmst_ratio": [r["rmst"]["useful"] / r["rmst"]["distractor"] for r in rs],
            "pooled_median": {g: median_survival(km) if km is not None else float("nan") for g, km in pooled.items()},
            "pooled_ratio": (median_survival(pooled["useful"]) / median_survival(pooled["distractor"])
                             if all(pooled.values()) else float("nan")),
            "item_median_useful": [r["item_median"]["useful"] for r in rs],
            "item_median_distractor": [r["item_median"]["distractor"] for r in rs],
            "item_ratio": [item_ratio(r) for r in rs],
            "write_useful": [r["write_rate"]["useful"] for r in rs],
            "write_distractor": [r["write_rate"]["distractor"] for r in rs],
            "acc_useful": [r["accuracy"]["useful"] for r in rs],
            "read_entropy": [r["read_entropy"] for r in rs],
        })
    return rows


def summarize(result: dict) -> list[Verdict]:
    """The claim, per configuration: the useful/distractor median lifetime ratio
    (:func:`ratio_lower_bound`) is at least ``FACTOR`` in every one of at least ``MIN_SEEDS`` seeds
    (:func:`meets_bar`), for learned decay, faded-first allocation and, in a run with forced
    writes, the pressure that separates the types most (:func:`forced_view`). ``measured`` is the
    smallest per-seed ratio (nan when a seed has none)."""
    rows = {r["ablation"]: r for r in ablation_rows(result)}
    names = [n for n in ("learned", "faded") if n in rows]
    if "forced_none" in rows and any(n.startswith("forced_p=") for n in rows):
        names.append(forced_view(result).best)
    out = []
    for n in names:
        r = np.asarray(rows[n]["ratio_bound"], dtype=float)
        out.append(Verdict(f"{n}: useful/distractor median lifetime ratio >= {FACTOR:g} in every one of "
                           f">= {MIN_SEEDS} seeds", float(np.min(r)) if len(r) else float("nan"), FACTOR,
                           meets_bar(r), f"per seed {', '.join(f'{x:.3g}' for x in r)}"))
    return out


def summary_table(result: dict) -> str:
    """Per ablation: median lifetime (segments) of useful and distractor contents, their ratio,
    the RMST ratio, write rates and recall of useful items; then items' median time in memory,
    and the share of contents that died by decay; mean ± 95% t-interval over seeds (:func:`fmt`)."""
    rows = ablation_rows(result)
    n = max((r["n_seeds"] for r in rows), default=0)
    note = (f"lifetimes in segments of {result['profile_settings']['segment_len']} tokens over a trace of "
            f"{result['num_segments']}; {result['pressure']:.1f} items per slot; mean"
            + (f" ± 95% t-interval over {n} seeds" if n > 1 else " (one seed)")
            + "; a/b/c: per-seed values (inf: median beyond the trace; nan: no content of the type)")
    lifetimes = format_table(
        ["ablation", "med useful", "med distr", "ratio", "RMST ratio", "pooled u/d", "wr useful", "wr distr",
         "acc useful", "read H"],
        [[r["ablation"], fmt(r["median_useful"]), fmt(r["median_distractor"]), fmt(r["ratio"]), fmt(r["rmst_ratio"], 2),
          f"{r['pooled_median']['useful']:g}/{r['pooled_median']['distractor']:g}", fmt(r["write_useful"], 2),
          fmt(r["write_distractor"], 2), fmt(r["acc_useful"], 2), fmt(r["read_entropy"], 2)] for r in rows], note)
    items = format_table(
        ["ablation", "useful", "distractor", "ratio"],
        [[r["ablation"], fmt(r["item_median_useful"]), fmt(r["item_median_distractor"]), fmt(r["item_ratio"])]
         for r in rows],
        "items (from the end of their segment; an item never written lives 0 segments): median time in memory")
    decay = format_table(
        ["ablation", "useful", "expiring", "distractor", "med expiring"],
        [[r["ablation"]] + [fmt(r["decay_share"][g], 2) for g in ("useful", "expiring", "distractor")]
         + [fmt(r["median_expiring"])] for r in rows],
        "contents that died by decay (share of the type's contents) and the expiring contents' median lifetime")
    return "\n\n".join([lifetimes, items, decay])


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, PROFILES, "forgetting")
    ap.add_argument("--only", action=DistinctList, what="ablation", default=None, help="train only these ablations")
    ap.add_argument("--workers", type=positive_int, default=None,
                    help="training processes on a CPU (default: the profile's)")
    a = ap.parse_args(argv)
    if a.only is not None:
        known = ablations(PROFILES[a.profile])
        for name in a.only:
            if name not in known:
                ap.error(f"argument --only: expected ablations of profile {a.profile!r} among "
                         f"{', '.join(known)}, got {name!r}")
    check_out(ap, a, "forgetting")
    res = run(a.profile, a.device, a.seeds, a.out, not a.no_save, not a.no_progress, a.amp, a.only, a.workers)
    print(summary_table(res))
    print()
    print("\n".join(v.line() for v in summarize(res)))
    print(done_line(res, a, "forgetting"))


if __name__ == "__main__":
    main()
