"""Experiment 1: recall far beyond the window.

MemNet, WindowedTransformer and LSTMBaseline (optionally FullTransformer, as a reference)
train on the same key-value recall batches for the same steps; each is then evaluated
at fixed distances from half the window to 16x it (training covers up to about 9x). The
table prints accuracy per distance, MemNet's slot reuse and read sparsity; the run is
stored under data/long_range/<profile>/ with its provenance.

    python -m memnet.experiments.long_range --profile laptop
    torchrun --nproc_per_node 2 -m memnet.experiments.long_range --profile laptop  # DDP, rank 0 writes
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import distributed as ddp
from ..baselines import FullTransformer, LSTMBaseline, WindowedTransformer, count_params
from ..config import MemNetConfig
from ..metrics import accuracy_by_distance, read_sparsity, slot_reuse
from ..model import MemNet
from ..tasks import KeyValueRecall
from ..train import Trainer, TrainConfig, amp_dtype, autocast, resolve_device
from .common import DATA_DIR, done_line, experiment_parser, provenance, seed_everything, write_json

MODELS = {"memnet": MemNet, "windowed": WindowedTransformer, "lstm": LSTMBaseline, "full": FullTransformer}


@dataclass
class Profile:
    """Everything a profile fixes: model size, task, budget."""

    d_model: int = 64
    segment_len: int = 16
    num_slots: int = 64
    top_k: int = 4
    mem_heads: int = 4
    n_pairs: int = 4
    train_windows: int = 10  # training sequences span this many windows
    batch_size: int = 32
    steps: int = 250  # the same for every model
    lr: float = 2e-3
    multiples: tuple = (0.5, 1, 2, 4, 8, 16)  # eval distances, in windows
    eval_batch: int = 64
    eval_batches: int = 2
    seeds: tuple = (0, 1, 2)
    models: tuple = ("memnet", "windowed", "lstm")


PROFILES = {
    "smoke": Profile(d_model=32, segment_len=8, num_slots=32, n_pairs=2, train_windows=5, batch_size=8,
                     steps=15, multiples=(0.5, 1, 2, 4, 8), seeds=(0,),
                     eval_batch=8, eval_batches=1),
    "laptop": Profile(),
    "gpu": Profile(d_model=128, segment_len=32, num_slots=128, n_pairs=6, train_windows=10, batch_size=64,
                   steps=2000, eval_batch=256,
                   seeds=(0, 1, 2), models=("memnet", "windowed", "lstm", "full")),
}


def make_task(p: Profile) -> KeyValueRecall:
    return KeyValueRecall(n_pairs=p.n_pairs, segment_len=p.segment_len)


def make_config(p: Profile, task: KeyValueRecall) -> MemNetConfig:
    return MemNetConfig(vocab_size=task.vocab_size, d_model=p.d_model, num_slots=p.num_slots, top_k=p.top_k,
                        mem_heads=p.mem_heads, segment_len=p.segment_len)


def eval_distances(p: Profile, task: KeyValueRecall) -> list[int]:
    return [max(task.min_distance(), int(m * p.segment_len)) for m in p.multiples]


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: KeyValueRecall, p: Profile, device: torch.device, amp: str,
             seed: int) -> dict:
    """Accuracy per distance; for MemNet also slot reuse and read sparsity at every distance."""
    model.eval()
    dtype = amp_dtype(device, amp)
    res: dict = {"accuracy": {}, "slot_reuse": {}, "read_sparsity": {}}
    for d in eval_distances(p, task):
        ok = tot = 0
        traces = []
        for i in range(p.eval_batches):
            b = task.sample_at_distance(p.eval_batch, d, seed=10_000_019 * (seed + 1) + 7919 * d + i).to(device)
            with autocast(device, dtype):
                out = model(b.tokens, return_trace=True) if isinstance(model, MemNet) else model(b.tokens)
            for c, t in accuracy_by_distance(out.logits, b.targets, b.distance).values():
                ok, tot = ok + c, tot + t
            if isinstance(model, MemNet):
                traces.append(out.trace)
        res["accuracy"][d] = ok / max(tot, 1)
        if traces:
            res["slot_reuse"][d] = slot_reuse(traces[0])
            res["read_sparsity"][d] = read_sparsity(traces[0])
    return res


def run(profile: str = "laptop", device: str = "auto", amp: str = "auto", seeds: list[int] | None = None,
        models: list[str] | None = None, out_dir: Path | None = None, save: bool = True,
        progress: bool = True) -> dict:
    """Train and evaluate every model of the profile; returns (and stores) the results."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    models = list(models or p.models)
    for m in models:
        if m not in MODELS:
            raise ValueError(f"models must be among {sorted(MODELS)}, got {m!r}")
    seeds = list(seeds if seeds is not None else p.seeds)
    dev = resolve_device(device)
    ddp.init_from_env(dev)  # under torchrun: every model trains data-parallel; rank 0 alone writes
    main = ddp.is_main()
    task = make_task(p)
    cfg = make_config(p, task)
    out_dir = Path(out_dir) if out_dir is not None else DATA_DIR / "long_range" / profile
    seq_len = p.train_windows * p.segment_len
    t_all = time.perf_counter()
    runs = []
    for seed in seeds:
        for name in models:
            seed_everything(seed)
            model = MODELS[name](cfg)
            tc = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, amp=amp,
                             log_every=max(1, p.steps // 20), progress=progress)
            trainer = Trainer(model, tc, dev, out_dir=out_dir if save else None, name=f"{name}_seed{seed}")

            def batch_fn(step: int, seed=seed):
                b = task.sample(p.batch_size, seq_len, seed=seed * 1_000_003 + step)
                return b.tokens, b.targets

            t0 = time.perf_counter()
            history = trainer.fit(batch_fn)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ev = evaluate(trainer.model, task, p, dev, amp, seed)
            runs.append({"model": name, "seed": seed, "params": count_params(model), "train_s": round(train_s, 1),
                         "eval_s": round(time.perf_counter() - t0, 1), "steps": tc.steps, "history": history, **ev})
            if isinstance(model, MemNet) and save and main:
                b = task.sample_at_distance(4, eval_distances(p, task)[-2], seed=123).to(dev)
                with torch.no_grad(), autocast(dev, amp_dtype(dev, amp)):
                    tr = trainer.model(b.tokens, return_trace=True).trace
                out_dir.mkdir(parents=True, exist_ok=True)
                torch.save({"tokens": b.tokens.cpu(), "targets": b.targets.cpu(), "distance": b.distance.cpu(),
                            "trace": {k: v.cpu() for k, v in tr.as_dict().items()}},
                           out_dir / f"trace_seed{seed}.pt")
    wall = time.perf_counter() - t_all
    result = {
        "experiment": "long_range", "profile": profile, "profile_settings": asdict(p),
        "config": cfg.to_dict(), "task": asdict(task), "chance": task.chance,
        "distances": eval_distances(p, task), "window": p.segment_len, "train_seq_len": seq_len,
        "runs": runs, "provenance": provenance(dev, seeds, wall, amp=str(amp_dtype(dev, amp)),
                                               **({"processes": ddp.world_size()} if ddp.is_distributed() else {})),
    }
    if save and main:
        write_json(out_dir / "results.json", result)
    return result


def summary_table(result: dict) -> str:
    """Accuracy (%) per distance (mean over seeds), then MemNet's memory metrics."""
    L = result["window"]
    dists = result["distances"]
    head = f"{'model':<10}" + "".join(f"{f'{d / L:g}x ({d})':>12}" for d in dists) + f"{'train s':>9}"
    n_seeds = len({r["seed"] for r in result["runs"]})
    lines = [f"accuracy (%) vs distance in windows of {L} tokens, mean" + ("±sd over %d seeds" % n_seeds if n_seeds > 1
             else " (one seed)") + f"; chance {100 * result['chance']:.1f}%", head]
    names = list(dict.fromkeys(r["model"] for r in result["runs"]))
    for name in names:
        rs = [r for r in result["runs"] if r["model"] == name]
        acc = torch.tensor([[r["accuracy"][d] if d in r["accuracy"] else r["accuracy"][str(d)] for d in dists]
                            for r in rs]) * 100  # (seeds, distances)
        cells = [f"{m:.1f}" + (f"±{s:.1f}" if len(rs) > 1 else "") for m, s in
                 zip(acc.mean(0).tolist(), acc.std(0, unbiased=len(rs) > 1).tolist())]
        lines.append(f"{name:<10}" + "".join(f"{c:>12}" for c in cells)
                     + f"{sum(r['train_s'] for r in rs) / len(rs):>9.0f}")
    mem = [r for r in result["runs"] if r["model"] == "memnet"]
    if mem:
        lines.append("")
        lines.append(f"{'memnet at':<10}{'events/seg':>12}{'distinct':>10}{'reuse':>8}{'read H':>8}{'eff. slots':>11}{'top1':>7}")
        for d in dists:
            g = lambda k, key: sum((r[k].get(d) or r[k].get(str(d)))[key] for r in mem) / len(mem)
            lines.append(f"{f'{d / L:g}x':<10}{g('slot_reuse', 'events_per_segment'):>12.2f}"
                         f"{g('slot_reuse', 'distinct_slots'):>10.1f}{g('slot_reuse', 'reuse_rate'):>8.2f}"
                         f"{g('read_sparsity', 'entropy'):>8.2f}{g('read_sparsity', 'effective_slots'):>11.2f}"
                         f"{g('read_sparsity', 'top1_mass'):>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = experiment_parser(__doc__, PROFILES, "long_range")
    ap.add_argument("--models", nargs="*", default=None, choices=sorted(MODELS))
    a = ap.parse_args(argv)
    try:
        res = run(a.profile, a.device, a.amp, a.seeds, a.models, a.out, not a.no_save, not a.no_progress)
        if ddp.is_main():
            procs = f" x {ddp.world_size()} processes" if ddp.is_distributed() else ""
            print(summary_table(res))
            print(done_line(res, a, "long_range", procs))
    finally:
        ddp.cleanup()


if __name__ == "__main__":
    main()
