#!/usr/bin/env python
"""A pilot of experiment 1 on validation draws only: train one model with some profile settings
changed, and print its training curve, its validation accuracy on the training distribution and
its validation accuracy (beyond the window, in-window) at P = 16 and delays 0, 16 and 64 windows,
scored on the stored run's evaluation draws (4 local pairs). For MemNet, ``--config`` changes
fields of its config (:func:`memnet.experiments.long_range.make_config`), and the pilot also
prints where its memory wins or loses at 64 windows (:func:`memnet.experiments.mqar.diagnose`:
write events per window, the share of pairs whose slot no later write event took). Nothing is
stored; test draws are never touched. ``--no-shift`` zeroes and freezes the token shift of the
model's input (:class:`memnet.encoder.Encoder` or a peer's
:class:`memnet.encoder.ShiftedEmbedding`), to see what the shift does for a model.

    python scripts/pilot_long_range.py memnet --lr 1e-3 --set local_pairs=8 steps=1500
    python scripts/pilot_long_range.py memnet --lr 1e-3 --config allocation=lru write_budget=0.0 decay_init=5.0
    python scripts/pilot_long_range.py titans --lr 3e-3 --set "train_pairs=(2,)" train_windows=2 "train_delays=(0,)" steps=1000 --no-shift
"""
from __future__ import annotations

import argparse
import ast
import json
from dataclasses import fields, replace

import torch

from memnet.experiments import long_range as E
from memnet.config import MemNetConfig
from memnet.encoder import Encoder, ShiftedEmbedding
from memnet.experiments.common import train_steps
from memnet.experiments.mqar import diagnose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=E.MODEL_NAMES)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--profile", default="full", choices=sorted(E.PROFILES))
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="profile fields to change")
    ap.add_argument("--config", nargs="*", default=[], metavar="FIELD=VALUE", help="MemNet config fields to change")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-shift", action="store_true", help="zero and freeze the token shift of the model's input")
    a = ap.parse_args()

    def changes(items: list[str], cls: type, flag: str) -> dict:
        known, out = {f.name for f in fields(cls)}, {}
        for item in items:
            k, _, v = item.partition("=")
            if k not in known or not v:
                ap.error(f"{flag} takes FIELD=VALUE with FIELD among the fields of {cls.__name__}, got {item!r}")
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                out[k] = v  # a bare word: a string (allocation=lru)
        return out

    over, cfg_over = changes(a.set, E.Profile, "--set"), changes(a.config, MemNetConfig, "--config")
    if cfg_over and a.model != "memnet":
        ap.error("--config changes MemNet's config; the other models are sized by the profile")
    p = replace(E.PROFILES[a.profile], **over)
    dev = torch.device("cpu")
    torch.manual_seed(a.seed)
    model = E.build(a.model, replace(E.make_config(p), **cfg_over))
    if a.no_shift:
        inputs = [m for m in model.modules() if isinstance(m, (Encoder, ShiftedEmbedding))]
        if not inputs:
            ap.error(f"--no-shift: {a.model} has no token shift")
        for m in inputs:
            m.shift.weight.data.zero_()
            m.shift.requires_grad_(False)
    fit = train_steps(model, E.batch_fn(p, a.seed, dev), a.lr, p.steps)
    out = {"model": a.model, "lr": a.lr, "settings": over, "config": cfg_over, "shift": not a.no_shift,
           "train_s": fit["train_s"],
           "curve": [c[2] for c in fit["curve"]],
           "validation": round(E.training_accuracy(model, p, "validation", a.seed, dev), 4)}
    scored = replace(p, local_pairs=E.PROFILES[a.profile].local_pairs)
    for d in (0, 16, 64):
        s = E.score(model, E.make_task(scored, 16, d), scored, "validation", a.seed, dev)
        out[f"{d}x (beyond, in-window)"] = [round(s["beyond"] or 0, 3), round(s["in_window"] or 0, 3)]
    if a.model == "memnet" and model.cfg.writes_per_segment is None:  # diagnose follows every token's write
        with torch.no_grad():
            d = diagnose(model, E.make_task(scored, 16, 64), batch=16, seed=7, split="validation")
        out["64x memory"] = {k: round(d[k], 3) if d[k] == d[k] else None  # None: no such query (NaN)
                             for k in ("events_per_window", "pair_alive", "accuracy_alive")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
