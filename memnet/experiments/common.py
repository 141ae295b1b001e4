"""What every experiment shares: seeding, provenance, and writing stored runs under data/."""
from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    """The current commit (with '+dirty' when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def device_name(device: torch.device) -> str:
    """A human-readable name of the device a run used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device, seed: int | list[int], wall_s: float, **extra: Any) -> dict[str, Any]:
    """Where a stored run came from."""
    return {"git_commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
            "python": platform.python_version(), "seed": seed, "wall_s": round(wall_s, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    return path


T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # by degrees of freedom


def t_interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over seeds. The half-width is nan for fewer
    than two values or when a value is not finite (then the mean is not finite either)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean()) if v.size else float("nan")
    if v.size < 2 or not np.isfinite(v).all():
        return m, float("nan")
    return m, float(T_95.get(v.size - 1, 1.96) * v.std(ddof=1) / np.sqrt(v.size))


def experiment_parser(doc: str, profiles: dict, name: str) -> argparse.ArgumentParser:
    """The command line every experiment shares: --profile, --device, --amp, --seeds, --out,
    --no-save and --no-progress (``name``: the experiment's folder under data/)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="laptop", choices=sorted(profiles))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=None, help=f"folder for results (default data/{name}/<profile>)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def done_line(result: dict, args: argparse.Namespace, name: str, procs: str = "") -> str:
    """The last line an experiment prints: wall time, device and where the run was stored."""
    stored = "" if args.no_save else f"; stored in {args.out or DATA_DIR / name / args.profile}"
    return f"\nwall time {result['provenance']['wall_s']:.0f} s on {result['provenance']['device']}{procs}{stored}"
