"""What every experiment shares: seeding, provenance, the command line, and writing stored runs under data/.

A command line is checked in full before anything is trained or written: a bad value (no seeds, a
negative or repeated seed, an unknown profile, device or model, an output folder that cannot be
created and written) stops it with an argparse error naming the option (exit status 2).

Stored results are written atomically (:func:`write_json`: a temporary file in the same folder,
then ``os.replace``), and a result never replaces a stored ``results.json`` that holds runs it
lacks (:func:`result_folder`): such a result (an empty or partial one, a subset of the seeds or
models, another profile's) is stored in the subfolder ``partial/`` of the output folder instead,
with its traces, and names the stored result it did not replace under ``partial_of``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

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


def provenance(device: torch.device, seed: int | list[int], wall_s: float, experiment: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """Where a stored run came from; for a run of ``memnet.experiments.<experiment>``, also the
    fingerprint of the code it depends on (:func:`memnet.experiments.fingerprint.code_fingerprint`)."""
    out = {"git_commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
           "python": platform.python_version(), "seed": seed, "wall_s": round(wall_s, 1),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    if experiment is not None:
        from .fingerprint import code_fingerprint, experiment_module

        out["code_fingerprint"] = code_fingerprint(experiment_module(experiment))
    return out


def write_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file through ``write(f)`` (f: a binary file) so that `path` is either what it was
    or the complete new file, never a part of it: the bytes go to a temporary file in the same
    folder (creating folders), are flushed to disk, and ``os.replace`` puts the file in place.
    On any failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode a plain open() would give
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # keep the mode of the file it replaces
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (creating folders), atomically (:func:`write_atomically`): a
    crash or a full disk leaves the file as it was, never a part of the new one."""
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()
    return write_atomically(path, lambda f: f.write(data))


def save_torch(obj: Any, path: Path) -> Path:
    """``torch.save(obj, path)``, atomically (:func:`write_atomically`)."""
    return write_atomically(path, lambda f: torch.save(obj, f))


def writable_folder(path: Path, name: str = "out_dir") -> Path:
    """Create the folder `path` (with its parents) and write and remove a probe file in it, so a
    run learns before it trains that it cannot store its results. ValueError naming `name` (the
    argument) when the folder cannot be created or written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{name} must be a folder this process can create and write, got {str(path)!r} "
                         f"({e.strerror or e})") from e
    return path


# ---------------------------------------------------------------------------- stored results
PARTIAL = "partial"  # the subfolder of the output folder that takes a result that may not replace results.json


def _keyed(result: dict, run_keys: Callable[[dict], Iterable]) -> set:
    """The runs of `result` as keys that name its experiment and profile too."""
    head = (result.get("experiment"), result.get("profile"))
    return {head + tuple(k if isinstance(k, tuple) else (k,)) for k in run_keys(result)}


def lost_runs(path: Path, result: dict, run_keys: Callable[[dict], Iterable]) -> list[str]:
    """The runs of the stored result at `path` (a results.json) that `result` lacks, by
    ``run_keys(result)`` (hashable keys, one per run) with the experiment and profile: [] when
    there is no stored result or `result` holds every one of its runs. A stored file that cannot
    be read as a result is one lost entry (it is not replaced either)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        old = _keyed(json.loads(path.read_text()), run_keys)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"unreadable stored result ({type(e).__name__}: {e})"]
    return sorted(" ".join(map(str, k)) for k in old - _keyed(result, run_keys))


def result_folder(out_dir: Path, result: dict, run_keys: Callable[[dict], Iterable]) -> Path:
    """Where to store `result` (its results.json and traces): `out_dir`, unless its results.json
    holds runs that `result` lacks (:func:`lost_runs`), then ``out_dir/partial`` (a result there is
    replaced by the next one that goes there). In that case ``result["partial_of"]`` names the stored
    result it did not replace and the runs it lacks, and a line on stderr says so."""
    out_dir = Path(out_dir)
    lost = lost_runs(out_dir / "results.json", result, run_keys)
    if not lost:
        return out_dir
    dest = out_dir / PARTIAL
    result["partial_of"] = {"results": str(out_dir / "results.json"), "lacks": lost[:20], "n_lacking": len(lost)}
    print(f"{out_dir / 'results.json'} holds {len(lost)} run(s) this result lacks ({', '.join(lost[:5])}"
          f"{', ...' if len(lost) > 5 else ''}): it is kept, and this result is stored in {dest}", file=sys.stderr)
    return dest


T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # by degrees of freedom


def t_interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over seeds. The half-width is nan for fewer
    than two values or when a value is not finite (then the mean is not finite either)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean()) if v.size else float("nan")
    if v.size < 2 or not np.isfinite(v).all():
        return m, float("nan")
    return m, float(T_95.get(v.size - 1, 1.96) * v.std(ddof=1) / np.sqrt(v.size))


# ---------------------------------------------------------------------------- the command line
def check_seeds(seeds: Sequence[int], name: str = "seeds") -> list[int]:
    """`seeds` as a list, checked: at least one, each an int >= 0, no seed twice (ValueError naming `name`)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"{name} must name at least one seed (an int >= 0), got none")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"{name} must be ints >= 0, got {s!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"{name} must be distinct, got {twice[0]} more than once")
    return seeds


def check_names(values: Sequence[str] | None, allowed: Sequence[str], name: str) -> list[str] | None:
    """`values` (None: the default, passed through) checked against `allowed`: at least one, each
    among `allowed`, none twice (ValueError naming `name`)."""
    if values is None:
        return None
    values = list(values)
    if not values:
        raise ValueError(f"{name} must name at least one of {tuple(allowed)}, got none")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name} must be among {tuple(allowed)}, got {v!r}")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{name} must be distinct, got {twice[0]!r} more than once")
    return values


def check_device(device: str | torch.device) -> str:
    """`device` ("auto", "cpu", "cuda", "cuda:N" or "mps") checked to exist on this machine;
    returned as a string. ValueError naming ``device`` otherwise."""
    text = str(device)
    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {text!r}") from e
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device must be one this machine has ('auto' or 'cpu': CUDA is not available), "
                             f"got {text!r}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device must name a CUDA device 0..{torch.cuda.device_count() - 1}, got {text!r}")
        return text
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device must be one this machine has ('auto' or 'cpu': MPS is not available), "
                             f"got {text!r}")
        return text
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {text!r}")


def _argparse_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a check that raises ValueError (its message becomes argparse's)."""
    def convert(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    convert.__name__ = check.__name__
    return convert


def _int_at_least(minimum: int, expected: str) -> Callable[[str], int]:
    """A check that parses an int >= `minimum` (ValueError saying what was `expected` otherwise)."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f"expected {expected}, got {text!r}")
        return value
    return check


_seed = _int_at_least(0, "seeds that are ints >= 0")
_positive = _int_at_least(1, "an int >= 1")


seed_arg = _argparse_type(_seed)
positive_int = _argparse_type(_positive)
device_arg = _argparse_type(check_device)


class DistinctList(argparse.Action):
    """``nargs="*"`` option whose values must be at least one and distinct (the values' own
    ``type`` and ``choices`` are checked by argparse): ``--seeds`` with no value is an error, not
    an empty run. ``what`` names a value in the error ("seed", "model")."""

    def __init__(self, option_strings, dest, what: str = "value", **kw):
        kw.setdefault("nargs", "*")
        super().__init__(option_strings, dest, **kw)
        self.what = what

    def __call__(self, parser, namespace, values, option_string=None):
        values = list(values or [])
        if not values:
            among = f" among {', '.join(map(str, self.choices))}" if self.choices else ""
            raise argparse.ArgumentError(self, f"expected at least one {self.what}{among}, got none")
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:
            raise argparse.ArgumentError(self, f"expected distinct {self.what}s, got {twice[0]} more than once")
        setattr(namespace, self.dest, values)


def experiment_parser(doc: str, profiles: dict, name: str) -> argparse.ArgumentParser:
    """The command line every experiment shares: --profile, --device, --amp, --seeds, --out,
    --no-save and --no-progress (``name``: the experiment's folder under data/). Seeds must be at
    least one, ints >= 0 and distinct, and the device one this machine has; after its own checks,
    an experiment calls :func:`check_out` before it trains."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="laptop", choices=sorted(profiles))
    ap.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    ap.add_argument("--seeds", type=seed_arg, action=DistinctList, what="seed", default=None,
                    help="seeds to run (ints >= 0, distinct; default: the profile's)")
    ap.add_argument("--out", type=Path, default=None, help=f"folder for results (default data/{name}/<profile>)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def out_folder(args: argparse.Namespace, name: str) -> Path:
    """The folder a command line stores its run in: ``--out``, or data/<name>/<profile>."""
    return args.out if args.out is not None else DATA_DIR / name / args.profile


def check_out(ap: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """Unless ``--no-save``: create the output folder and write a probe file in it
    (:func:`writable_folder`), or stop with an argparse error naming ``--out`` (exit status 2),
    before anything is trained."""
    if getattr(args, "no_save", False):
        return
    try:
        writable_folder(out_folder(args, name), "--out")
    except ValueError as e:
        ap.error(str(e))


def done_line(result: dict, args: argparse.Namespace, name: str, procs: str = "") -> str:
    """The last line an experiment prints: wall time, device and where the run was stored."""
    stored = ""
    if not args.no_save:
        folder = out_folder(args, name)
        if result.get("partial_of"):
            stored = (f"; stored in {folder / PARTIAL} ({folder / 'results.json'} holds "
                      f"{result['partial_of']['n_lacking']} run(s) this result lacks and is kept)")
        else:
            stored = f"; stored in {folder}"
    return f"\nwall time {result['provenance']['wall_s']:.0f} s on {result['provenance']['device']}{procs}{stored}"


# ---------------------------------------------------------------------------- worker processes
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(poll_s)


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this (worker) process end when the process `parent_pid` that started it dies, even by
    SIGKILL: on Linux the kernel sends SIGTERM then (``prctl(PR_SET_PDEATHSIG)``); everywhere, a
    daemon thread checks every `poll_s` seconds that ``os.getppid()`` is still `parent_pid` and
    ends the process (``os._exit``) once it is not. The initializer of :func:`worker_pool`."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGTERM), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0))
        except (OSError, AttributeError):
            pass  # the thread below still ends the process
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), name="exit-with-parent", daemon=True).start()


def worker_pool(max_workers: int):
    """A ``ProcessPoolExecutor`` of `max_workers` spawned processes that end when this process
    dies (:func:`exit_with_parent`), so a killed run leaves no worker training on. Submit from the
    thread that lives as long as the pool (on Linux a worker also ends when the thread that started
    it does)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=max_workers, mp_context=mp.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


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
        measured = f"measured {self.measured:.3g}" if self.measured == self.measured else "not measured"
        return (f"{'holds' if self.passed else 'MISSES'}: {self.claim} ({measured}, "
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


def cached_record(path: Path | None, make: Callable[[], dict], fresh: bool = False,
                  settings: dict | None = None, legacy: tuple = ()) -> dict:
    """The JSON record cached at `path` (one per trained (model, lr, seed)) or, when there is none,
    the one `make()` returns, written there atomically. `path` None: no cache.

    settings: what the record depends on (e.g. the profile's training and evaluation settings),
    stored in a new record under "settings"; a cached record made under other settings is an error
    (ValueError naming the differing fields), never silently reused. A record without "settings"
    (written before they were recorded) is taken as made under the current ones, and so is one
    whose settings lack only keys named in `legacy` (settings recorded since, which the caller
    knows the old record was made under)."""
    if path is not None and path.exists() and not fresh:
        rec = json.loads(path.read_text())
        old = rec.get("settings")
        if settings is not None and old is not None:
            old = {**{k: settings[k] for k in legacy if k in settings}, **old}  # what `old` lacks of legacy: as now
        if settings is not None and old is not None and old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"the cached run {path} was made under other settings ({', '.join(diff[:8])}): "
                             "retrain it (fresh) or use another output folder")
        return rec
    rec = make()
    if settings is not None:
        rec["settings"] = settings
    if path is not None:
        write_json(path, rec)
    return rec


def train_steps(model: torch.nn.Module, batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]], lr: float,
                steps: int, log_every: int = 50, clip: float = 1.0, budget_s: float | None = None,
                checkpoint: Path | None = None, checkpoint_every: int = 50, checkpoint_tag: dict | None = None) -> dict:
    """The plain loop every model of a comparison gets: AdamW at `lr` (no schedule), gradient clipping,
    cross-entropy over the targets (IGNORE elsewhere) plus the model's auxiliary losses if it has any,
    for `steps` steps, or fewer when a wall-clock `budget_s` (seconds) runs out first.

    checkpoint: a file the loop saves itself to every `checkpoint_every` steps (model, optimizer,
    torch's random state, step, time and curve; atomically) and resumes from when it exists, so a
    run killed part-way goes on where its last checkpoint left it, with the same batches (`batch_fn`
    is a function of the step), to the weights of the uninterrupted run. A checkpoint of another lr,
    number of steps or `checkpoint_tag` (what else the run depends on, JSON-ready: settings, seed) is
    an error. The caller removes it once the run's record is kept.
    Returns {"steps" (taken), "train_s" (over every part of the run), "curve": [[step, seconds, loss], ...]}."""
    from ..metrics import IGNORE_INDEX
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    t0, curve, start = time.perf_counter(), [], 0
    if checkpoint is not None and Path(checkpoint).exists():
        ck = torch.load(checkpoint, weights_only=True)
        tag = json.dumps(checkpoint_tag, sort_keys=True)
        if (ck["lr"], ck["steps"], ck["tag"]) != (lr, steps, tag):
            raise ValueError(f"the checkpoint {checkpoint} is of another run (lr {ck['lr']:g}, {ck['steps']} steps"
                             f"{'' if ck['tag'] == tag else ', other settings'}; this one: lr {lr:g}, {steps} steps): "
                             "remove it or train elsewhere")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        start, curve = ck["step"], ck["curve"]
        t0 -= ck["train_s"]  # the time already spent counts towards train_s and budget_s
    step = start
    for step in range(start, steps):
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
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_torch({"lr": lr, "steps": steps, "tag": json.dumps(checkpoint_tag, sort_keys=True),
                        "step": step + 1, "model": model.state_dict(),
                        "opt": opt.state_dict(), "rng": torch.get_rng_state(), "curve": curve,
                        "train_s": time.perf_counter() - t0}, Path(checkpoint))
    else:
        step = steps
    return {"steps": step, "train_s": round(time.perf_counter() - t0, 3), "curve": curve}
