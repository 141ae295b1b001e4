"""What every experiment shares: seeding, provenance, and writing stored runs under data/."""
from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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


# ---------------------------------------------------------------------------- the shared skeleton
@dataclass(frozen=True)
class Verdict:
    """One claim a run is checked against: what was measured, the threshold fixed before the run,
    and whether it holds (``passed``). ``detail`` names where it holds or fails."""

    claim: str
    measured: float
    threshold: float
    passed: bool
    detail: str = ""

    def line(self) -> str:
        return (f"{'holds' if self.passed else 'MISSES'}: {self.claim} (measured {self.measured:.3g}, "
                f"threshold {self.threshold:.3g}){'; ' + self.detail if self.detail else ''}")


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A fixed-width text table: the first column left-aligned, the others right-aligned; cells are
    printed with ``str`` (format numbers before)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = ([title] if title else []) + [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def mean_ci(values, scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± half-width' of the 95% t-interval over seeds (just the mean for one value), times `scale`."""
    m, h = t_interval(values)
    if m != m:
        return "-"
    return f"{scale * m:.{digits}f}" + (f" ± {scale * h:.{digits}f}" if h == h else "")


def cached_record(path: Path | None, make: Callable[[], dict], fresh: bool = False) -> dict:
    """The JSON record cached at `path` (one per trained (model, lr, seed)) or, when there is none,
    the one `make()` returns, written there atomically. `path` None: no cache."""
    if path is not None and path.exists() and not fresh:
        return json.loads(path.read_text())
    rec = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        tmp.replace(path)
    return rec


def train_steps(model: torch.nn.Module, batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]], lr: float,
                steps: int, log_every: int = 50, clip: float = 1.0, budget_s: float | None = None) -> dict:
    """The plain loop every model of a comparison gets: AdamW at `lr` (no schedule), gradient clipping,
    cross-entropy over the targets (IGNORE elsewhere) plus the model's auxiliary losses if it has any,
    for `steps` steps, or fewer when a wall-clock `budget_s` (seconds) runs out first.
    Returns {"steps" (taken), "train_s", "curve": [[step, seconds, loss], ...]}."""
    from ..metrics import IGNORE_INDEX
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    t0, curve, step = time.perf_counter(), [], 0
    for step in range(steps):
        if budget_s is not None and time.perf_counter() - t0 >= budget_s:
            break
        tokens, targets = batch_fn(step)
        out = model(tokens)
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        aux = getattr(out, "aux_losses", None) or {}
        total = loss + sum(aux.values()) if aux else loss
        if not torch.isfinite(total):
            raise FloatingPointError(f"{type(model).__name__}: loss is {float(total)} at step {step} (lr {lr:g})")
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append([step + 1, round(time.perf_counter() - t0, 1), round(float(loss.detach()), 4)])
    else:
        step = steps
    return {"steps": step, "train_s": round(time.perf_counter() - t0, 3), "curve": curve}
