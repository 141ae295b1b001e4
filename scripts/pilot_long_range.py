#!/usr/bin/env python
"""A pilot of experiment 1 on validation draws only: train one model with some profile settings
changed, and print its training curve, its validation accuracy on the training distribution and
its validation accuracy (beyond the window, in-window) at P = 16 and delays 0, 16 and 64 windows,
scored on the stored run's evaluation draws (4 local pairs). Nothing is stored; test draws are
never touched.

    python scripts/pilot_long_range.py memnet --lr 1e-3 --set local_pairs=8 steps=1500
"""
from __future__ import annotations

import argparse
import ast
import json
from dataclasses import fields, replace

import torch

from memnet.experiments import long_range as E
from memnet.experiments.common import train_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=E.MODEL_NAMES)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--profile", default="full", choices=sorted(E.PROFILES))
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="profile fields to change")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    known = {f.name for f in fields(E.Profile)}
    over = {}
    for item in a.set:
        k, _, v = item.partition("=")
        if k not in known or not v:
            ap.error(f"--set takes FIELD=VALUE with FIELD among the profile's fields, got {item!r}")
        over[k] = ast.literal_eval(v)
    p = replace(E.PROFILES[a.profile], **over)
    dev = torch.device("cpu")
    torch.manual_seed(a.seed)
    model = E.build(a.model, E.make_config(p))
    fit = train_steps(model, E.batch_fn(p, a.seed, dev), a.lr, p.steps)
    out = {"model": a.model, "lr": a.lr, "settings": over, "train_s": fit["train_s"],
           "curve": [c[2] for c in fit["curve"]],
           "validation": round(E.training_accuracy(model, p, "validation", a.seed, dev), 4)}
    scored = replace(p, local_pairs=E.PROFILES[a.profile].local_pairs)
    for d in (0, 16, 64):
        s = E.score(model, E.make_task(scored, 16, d), scored, "validation", a.seed, dev)
        out[f"{d}x (beyond, in-window)"] = [round(s["beyond"] or 0, 3), round(s["in_window"] or 0, 3)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
