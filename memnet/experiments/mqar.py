"""Multi-query associative recall (MQAR), where nothing in a token's id says what to store.

Every model of the profile trains on the same MQAR draws (:class:`memnet.tasks.mqar.MQAR`) for
the same wall-clock budget with one plain AdamW loop, at each learning rate of the profile; the
learning rate of each (model, setting, seed) is the one with the best accuracy on a validation
draw, and the table reports that run on a test draw: accuracy over all queries and over the
queries beyond the first window, per (pairs, T) and, for the length-generalisation column,
at a longer T than any seen in training. MemNet also reports where its memory loses
(:func:`diagnose`): which tokens write, whether a pair's slot is still in the bank when its
query comes, and whether the read finds it.

Every trained (setting, model, lr, seed) is cached as one JSON file under the run folder, so a
stored run can be assembled over several sittings; ``--fresh`` retrains. A result that lacks runs
of the stored results.json (fewer models or seeds) does not replace it: it is stored in
``partial/`` of the run folder.

    python -m memnet.experiments.mqar --profile laptop
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..baselines import FullTransformer, LSTMBaseline, WindowedTransformer, count_params
from ..config import MemNetConfig
from ..metrics import IGNORE_INDEX
from ..model import MemNet, segment
from ..tasks.mqar import MQAR
from ..train import resolve_device
from .common import (DATA_DIR, DistinctList, cached_record, check_device, check_names, check_out, check_seeds,
                     done_line, experiment_parser, format_table, git_commit, mean_ci, provenance, result_folder,
                     seed_everything, train_steps, writable_folder, write_json)

MODELS = {"memnet": MemNet, "full": FullTransformer, "windowed": WindowedTransformer, "lstm": LSTMBaseline}


@dataclass
class Profile:
    """What a profile fixes: the model (the MQAR configuration of MemNet, baselines sized from it),
    the training settings (T, pairs), the budget per run, the learning rates tried, the seeds."""

    vocab_size: int = 512
    d_model: int = 64
    num_slots: int = 64
    top_k: int = 4
    mem_heads: int = 4
    segment_len: int = 32
    settings: tuple = ((256, 8),)  # (T, pairs) trained and evaluated
    long_eval: tuple = (4096,)  # longer T at which models trained at T <= 512 are also tested
    budget_s: float = 300.0  # training wall-clock per (model, setting, lr, seed)
    max_steps: int = 1_000_000
    batch_size: int = 32
    lrs: tuple = (1e-3,)
    eval_batch: int = 64
    eval_batches: int = 4
    long_batch: int = 16  # batch of the length-generalisation draws (long sequences; full attention is T^2)
    seeds: tuple = (0, 1, 2)
    models: tuple = ("memnet", "full", "windowed", "lstm")
    threads: int = 0  # torch threads per run (0: leave as is)


PROFILES = {
    "smoke": Profile(vocab_size=64, d_model=32, num_slots=16, segment_len=16, settings=((64, 4),), long_eval=(128,),
                     budget_s=3.0, max_steps=5, batch_size=8, eval_batch=8, eval_batches=1, long_batch=4, seeds=(0,)),
    # the book's run: one seed, two minutes per model
    "laptop": Profile(budget_s=120.0, seeds=(0,)),
    # the stored run: five minutes per model and seed on 2 cores, three seeds, T=256 with 8 pairs and
    # T=1024 with 32 pairs (half the bank); run a setting at a time with --settings
    "full": Profile(settings=((256, 8), (1024, 32)), budget_s=300.0, seeds=(0, 1, 2)),
    "gpu": Profile(settings=((256, 8), (1024, 32)), budget_s=300.0, lrs=(3e-4, 1e-3, 3e-3), batch_size=64,
                   eval_batch=256),
}


def make_config(p: Profile) -> MemNetConfig:
    return MemNetConfig(vocab_size=p.vocab_size, d_model=p.d_model, num_slots=p.num_slots, top_k=p.top_k,
                        mem_heads=p.mem_heads, segment_len=p.segment_len)


def make_task(p: Profile, seq_len: int, n_pairs: int) -> MQAR:
    return MQAR(vocab_size=p.vocab_size, seq_len=seq_len, n_pairs=n_pairs)


def logits_of(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of any model of the comparison."""
    return model(tokens).logits


@torch.no_grad()
def accuracy(model: torch.nn.Module, task: MQAR, split: str, p: Profile, window: int,
             device: torch.device, seed: int = 0, batch: int | None = None) -> dict[str, float]:
    """Accuracy over all queries and over the queries beyond the first window (position >= window),
    on ``eval_batches`` draws of `split` of `batch` sequences (default ``eval_batch``)."""
    model.eval()
    ok = n = ok_b = n_b = 0
    for i in range(p.eval_batches):
        b = task.sample(batch or p.eval_batch, seed=1000 * seed + i, split=split).to(device)
        pred = logits_of(model, b.tokens).argmax(-1)
        m = b.targets != IGNORE_INDEX
        hit = (pred == b.targets) & m
        beyond = m & (torch.arange(b.tokens.shape[1], device=device) >= window)
        ok, n, ok_b, n_b = ok + int(hit.sum()), n + int(m.sum()), ok_b + int((hit & beyond).sum()), n_b + int(beyond.sum())
    model.train()
    return {"all": ok / max(n, 1), "beyond": ok_b / max(n_b, 1) if n_b else float("nan"), "queries": n,
            "queries_beyond": n_b}


@torch.no_grad()
def diagnose(model: MemNet, task: MQAR, batch: int = 32, seed: int = 0, split: str = "test") -> dict[str, float]:
    """Where MemNet's memory wins or loses on a draw of `split` (test by default; a pilot diagnoses
    validation draws), measured from its trace.

    - ``write_gate_pair`` / ``write_gate_filler``: mean write gate of the tokens that bind a pair
      (the value of ``k v`` in the opening block) and of every other token;
    - ``events_per_window``: write events (age resets) per window, and ``pair_events``: the share of
      pair writes that were events;
    - ``pair_alive``: share of queries beyond the first window whose pair's slot (the slot its value
      token was allocated) has had no later write event when the query comes;
    - ``read_hit``: share of those queries whose read (any head, top-k) includes that slot, and
      ``read_hit_weight``: the mean read weight on it (over heads);
    - ``accuracy_alive`` / ``accuracy_dead``: accuracy on queries whose pair slot is alive / overwritten.
    """
    cfg = model.cfg
    model.eval()
    b = task.sample(batch, seed=seed, split=split)
    out = model(b.tokens, return_trace=True)
    tr = out.trace
    L, W = cfg.segment_len, tr.write_pos.shape[-1]
    B, T = b.tokens.shape
    pred = out.logits.argmax(-1)
    # the gate of every token: scatter the writes' gates back to their positions
    gate = torch.zeros(B, tr.write_pos.shape[1], L).scatter(2, tr.write_pos, tr.write_gate).view(B, -1)[:, :T]
    pair_pos = torch.zeros(B, T, dtype=torch.bool)
    pair_pos[:, 1:task.context_len:2] = True  # the value token of each opening pair
    res = {"write_gate_pair": float(gate[pair_pos].mean()), "write_gate_filler": float(gate[~pair_pos].mean()),
           "events_per_window": float(tr.write_events.float().sum(-1).mean())}
    alloc_of = lambda bi, t: int(tr.write_alloc[bi, t // L][(tr.write_pos[bi, t // L] == t % L)].view(-1)[0])
    ev_pair, alive, hit, hw, ok_alive, ok_dead = [], [], [], [], [], []
    for bi in range(B):
        for i in range(task.n_pairs):
            vpos = 2 * i + 1
            if vpos >= T:
                continue
            slot = alloc_of(bi, vpos)
            s_w = vpos // L
            ev_pair.append(bool(tr.write_events[bi, s_w, slot]))
            key = b.tokens[bi, 2 * i]
            qpos = [t for t in range(task.context_len, T) if b.targets[bi, t] != IGNORE_INDEX and b.tokens[bi, t] == key]
            for t in qpos:
                s_q = t // L
                if s_q == s_w:
                    continue
                later = tr.write_events[bi, s_w + 1:s_q, slot].any()
                a = bool(tr.write_events[bi, s_w, slot]) and not bool(later)
                alive.append(a)
                idx, w = tr.read_index[bi, s_q, t % L], tr.read_weight[bi, s_q, t % L]  # (H, K)
                on = idx == slot
                hit.append(bool(on.any()))
                hw.append(float((w * on).sum(-1).mean()))
                (ok_alive if a else ok_dead).append(bool(pred[bi, t] == b.targets[bi, t]))
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")
    res.update(pair_events=mean(ev_pair), pair_alive=mean(alive), read_hit=mean(hit), read_hit_weight=mean(hw),
               accuracy_alive=mean(ok_alive), accuracy_dead=mean(ok_dead), queries_beyond=len(alive))
    model.train()
    return res


def train_one(name: str, cfg: MemNetConfig, task: MQAR, p: Profile, lr: float, seed: int,
              device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Train one model for the profile's wall-clock budget with the shared loop; returns it and its record."""
    seed_everything(seed)
    model = MODELS[name](cfg).to(device)

    def batch(step: int):
        b = task.sample(p.batch_size, seed=1_000_003 * seed + step, split="train")
        return b.tokens.to(device), b.targets.to(device)
    fit = train_steps(model, batch, lr, p.max_steps, budget_s=p.budget_s)
    return model, {"model": name, "lr": lr, "seed": seed, "steps": fit["steps"], "train_s": round(fit["train_s"], 1),
                   "params": count_params(model), "curve": fit["curve"], "git_commit": git_commit(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def train_and_score(name: str, cfg: MemNetConfig, task: MQAR, p: Profile, lr: float, seed: int,
                    dev: torch.device, T: int, P: int, progress: bool) -> dict:
    """One (setting, model, lr, seed): trained, scored on validation and test (and at the longer T),
    and, for MemNet, diagnosed; the record that is cached."""
    model, rec = train_one(name, cfg, task, p, lr, seed, dev)
    rec.update(T=T, pairs=P, validation=accuracy(model, task, "validation", p, cfg.segment_len, dev, seed),
               test=accuracy(model, task, "test", p, cfg.segment_len, dev, seed))
    if T <= 512:
        rec["long"] = {str(Tl): accuracy(model, make_task(p, Tl, P), "test", p, cfg.segment_len, dev, seed,
                                         batch=p.long_batch) for Tl in p.long_eval}
    if isinstance(model, MemNet):
        rec["diagnosis"] = diagnose(model, task, seed=seed)
    if progress:
        print(f"T={T} P={P} {name} lr={lr:g} seed={seed}: {rec['steps']} steps, validation "
              f"{100 * rec['validation']['all']:.1f}%, test {100 * rec['test']['all']:.1f}% "
              f"(beyond the first window {100 * rec['test']['beyond']:.1f}%)", flush=True)
    return rec


def run(profile: str = "laptop", device: str = "auto", seeds: list[int] | None = None,
        models: list[str] | None = None, out_dir: Path | None = None, save: bool = True, fresh: bool = False,
        progress: bool = True, settings: list[tuple[int, int]] | None = None) -> dict:
    """Train and test every (setting, model, lr, seed) of the profile, reusing cached runs; `settings`
    restricts the (T, pairs) settings trained now, and the results hold every cached run of the
    profile's settings, models and seeds."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    for st in settings or []:
        if tuple(st) not in {tuple(x) for x in p.settings}:
            raise ValueError(f"settings must be among the profile's {list(p.settings)}, got {st!r}")
    if settings is not None and not list(settings):
        raise ValueError(f"settings must name at least one of the profile's {list(p.settings)}, got none")
    models = check_names(models, tuple(MODELS), "models") or list(p.models)
    seeds = check_seeds(seeds if seeds is not None else p.seeds)
    dev = resolve_device(check_device(device))
    out_dir = Path(out_dir) if out_dir is not None else DATA_DIR / "mqar" / profile
    if save:  # fail now, not after the training, when the folder cannot be written
        writable_folder(out_dir / "runs", "out_dir")
    if p.threads:
        torch.set_num_threads(p.threads)
    cfg = make_config(p)
    t_all = time.perf_counter()
    runs = []
    for T, P in p.settings:
        task = make_task(p, T, P)
        for seed in seeds:
            for name in models:
                cands = []
                for lr in p.lrs:
                    cache = out_dir / "runs" / f"T{T}_P{P}_{name}_lr{lr:g}_seed{seed}.json" if save else None
                    now = settings is None or (T, P) in {tuple(x) for x in settings}
                    if not now and not (cache is not None and cache.exists()):
                        continue  # not trained now; reported when a later call trains it
                    cands.append(cached_record(cache, lambda: train_and_score(name, cfg, task, p, lr, seed, dev,
                                                                              T, P, progress), fresh and now))
                if not cands:
                    continue
                best = max(cands, key=lambda r: r["validation"]["all"])  # chosen on validation, never on test
                runs.append({**best, "lrs_tried": {f"{r['lr']:g}": r["validation"]["all"] for r in cands}})
    wall = time.perf_counter() - t_all
    result = {"experiment": "mqar", "profile": profile, "profile_settings": asdict(p), "config": cfg.to_dict(),
              "chance": 1.0 / (p.vocab_size - p.vocab_size // 2), "window": p.segment_len, "runs": runs,
              # runs may come from the cache, trained by earlier calls: their own commits and training time
              "run_commits": sorted({str(r.get("git_commit", "not recorded")) for r in runs}),
              "train_s_total": round(sum(r["train_s"] for r in runs), 1),
              "provenance": provenance(dev, seeds, wall, experiment="mqar")}
    if save:  # never over a stored result that holds runs this one lacks: those go to partial/
        write_json(result_folder(out_dir, result, run_keys) / "results.json", result)
    return result


def run_keys(result: dict) -> list[tuple]:
    """One key per run of a result, (T, pairs, model, seed): what a stored result must keep."""
    return [(r["T"], r["pairs"], r["model"], r["seed"]) for r in result["runs"]]


def summary_table(result: dict) -> str:
    """Test accuracy (%) over all queries and beyond the first window, mean ± 95% t-interval over seeds."""
    tried = sorted({lr for r in result["runs"] for lr in r.get("lrs_tried", {})} | {f"{r['lr']:g}" for r in result["runs"]})
    how = (f"learning rate {tried[0]} for every model (one value, not tuned)" if len(tried) == 1 else
           f"learning rate chosen on validation among {', '.join(tried)}")
    pct = lambda xs: mean_ci(xs, 100)
    longs = sorted({k for r in result["runs"] for k in r.get("long", {})}, key=int)
    rows = []
    for T, P, name in dict.fromkeys((r["T"], r["pairs"], r["model"]) for r in result["runs"]):
        rs = [r for r in result["runs"] if (r["T"], r["pairs"], r["model"]) == (T, P, name)]
        cells = [pct([r["test"]["all"] for r in rs]), pct([r["test"]["beyond"] for r in rs])]
        for t in longs:
            have = all(t in r.get("long", {}) for r in rs)
            cells += [pct([r["long"][t][k] for r in rs]) if have else "" for k in ("all", "beyond")]
        rows.append([T, P, name] + cells + [len(rs), sum(r["steps"] for r in rs) // len(rs),
                                            "/".join(sorted({f"{r['lr']:g}" for r in rs}))])
    header = ["T", "pairs", "model", "all", "beyond"] + [f"T={t}, {k}" for t in longs for k in ("all", "beyond")] + \
             ["seeds", "steps", "lr"]
    text = format_table(header, rows, f"MQAR test accuracy (%), mean ± 95% CI over seeds; {how}; 'beyond': queries "
                        f"past the first window ({result['window']} tokens); chance {100 * result['chance']:.2f}%")
    diag = [r for r in result["runs"] if r.get("diagnosis")]
    if diag:
        keys = [("write_gate_pair", "gate pair"), ("write_gate_filler", "gate filler"),
                ("events_per_window", "events/window"), ("pair_alive", "pair alive"), ("read_hit", "read hit"),
                ("read_hit_weight", "hit weight"), ("accuracy_alive", "acc. alive"), ("accuracy_dead", "acc. dead")]
        text += "\n\n" + format_table(
            ["run"] + [k[1] for k in keys],
            [[f"T={r['T']} P={r['pairs']} seed {r['seed']}"] + [f"{r['diagnosis'][k]:.2f}" for k, _ in keys] for r in diag],
            "MemNet's memory on a test draw, per seed: write gate of pair / filler tokens, write events per window, "
            "pair slot alive at its query, read hit on it (and its weight), accuracy on alive / dead pairs")
    return text


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, PROFILES, "mqar")
    ap.add_argument("--models", action=DistinctList, what="model", default=None, choices=sorted(MODELS))
    ap.add_argument("--fresh", action="store_true", help="retrain even where a cached run exists")
    ap.add_argument("--settings", action=DistinctList, what="setting", default=None, metavar="TxP",
                    help="train only these settings of the profile now, e.g. 256x8 (others come from the cache)")
    a = ap.parse_args(argv)
    settings = None
    if a.settings is not None:
        known = [tuple(x) for x in PROFILES[a.profile].settings]
        try:
            settings = [tuple(int(v) for v in x.lower().split("x")) for x in a.settings]
        except ValueError:
            settings = None
        if settings is None or any(len(st) != 2 for st in settings):
            ap.error(f"argument --settings: expected TxP pairs such as 256x8, got {a.settings}")
        for st in settings:
            if st not in known:
                ap.error(f"argument --settings: expected settings of profile {a.profile!r} "
                         f"({', '.join(f'{T}x{P}' for T, P in known)}), got {st[0]}x{st[1]}")
        if len(set(settings)) < len(settings):
            ap.error(f"argument --settings: expected distinct settings, got {a.settings}")
    check_out(ap, a, "mqar")
    res = run(a.profile, a.device, a.seeds, a.models, a.out, not a.no_save, a.fresh, not a.no_progress, settings)
    print(summary_table(res))
    print(done_line(res, a, "mqar"))


if __name__ == "__main__":
    main()
