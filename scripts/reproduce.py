#!/usr/bin/env python
"""Run one chapter, or all, through papermill at a chosen profile.

    python scripts/reproduce.py --chapter 3 --profile laptop     # retrain, refresh data/long_range/laptop
    python scripts/reproduce.py --all --profile smoke            # every chapter, quickly
    python scripts/reproduce.py --chapter 03_long_range --profile gpu --device cuda

For each chapter this runs the equivalent of

    jupytext --to ipynb -o - book/03_long_range.py | papermill - <out>/03_long_range.ipynb \
        -p profile laptop -p save True [-p device ...] [-p seed ...]

so chapters with an experiment store their run under data/ (use --no-save to keep data/ as is).
The executed notebooks go to --out (default _build/reproduce/<profile>/).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
PROFILES = ("smoke", "laptop", "gpu", "stored")


def chapters() -> list[Path]:
    """The chapters' jupytext sources, in order (book/NN_*.py)."""
    return sorted(p for p in BOOK.glob("[0-9][0-9]_*.py"))


def find_chapter(spec: str) -> Path:
    """'3', '03', '03_long_range' or 'book/03_long_range.py' -> the chapter's .py."""
    all_ = chapters()
    name = Path(spec).stem
    for p in all_:
        if name == p.stem or (name.isdigit() and int(p.stem.split("_")[0]) == int(name)):
            return p
    raise SystemExit(f"no chapter {spec!r}; chapters: {', '.join(p.stem for p in all_)}")


def tool(name: str) -> str:
    """A console script next to this Python (the venv's), else the bare name on PATH."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def run_chapter(src: Path, profile: str, out_dir: Path, save: bool, device: str | None, seed: int | None,
                timeout: float | None = None) -> tuple[Path, float]:
    """Execute one chapter with papermill; returns the executed notebook's path and the wall time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{src.stem}.ipynb"
    params = ["-p", "profile", profile, "-p", "save", str(bool(save))]
    if device is not None:
        params += ["-p", "device", device]
    if seed is not None:
        params += ["-p", "seed", str(seed)]
    t0 = time.perf_counter()
    conv = subprocess.run([tool("jupytext"), "--to", "ipynb", "-o", "-", str(src)], cwd=ROOT, check=True,
                          capture_output=True)
    subprocess.run([tool("papermill"), "-", str(out), *params, "--cwd", str(BOOK), "--no-progress-bar"]
                   + (["--execution-timeout", str(int(timeout))] if timeout else []),
                   input=conv.stdout, cwd=ROOT, check=True)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--chapter", action="append", help="chapter number or name (repeatable)")
    which.add_argument("--all", action="store_true", help="every chapter")
    ap.add_argument("--profile", default="laptop", choices=PROFILES)
    ap.add_argument("--device", default=None, help="auto (default), cpu, cuda, ...")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-save", action="store_true", help="do not refresh the stored runs under data/")
    ap.add_argument("--out", type=Path, default=None, help="folder for executed notebooks")
    a = ap.parse_args(argv)
    srcs = chapters() if a.all else [find_chapter(c) for c in a.chapter]
    out_dir = a.out or ROOT / "_build" / "reproduce" / a.profile
    for src in srcs:
        print(f"== {src.name}: profile={a.profile} save={not a.no_save}", flush=True)
        out, wall = run_chapter(src, a.profile, out_dir, not a.no_save, a.device, a.seed)
        print(f"== {src.name}: done in {wall:.0f} s -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
