"""Helpers the book's chapters share: setup, showing package source, notes, and the
"load the stored run or train" pattern.

A chapter's parameters cell sets ``profile``, ``device``, ``seed`` and ``save``; it then
calls :func:`setup` once, and chapters with an experiment call :func:`load_or_train`.
"""
from __future__ import annotations

import html
import inspect
import json
import re
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .experiments.common import DATA_DIR, seed_everything
from .memory import MemoryState, MultiHeadMemoryBank, WriteRequest, stack_requests
from .trace import MemoryTrace
from .train import resolve_device

PROFILES = ("smoke", "laptop", "gpu")
STORED_PREFERENCE = ("gpu", "full", "laptop")  # the stored run a chapter shows, best first


@dataclass(frozen=True)
class Settings:
    """What a chapter resolved from its parameters."""

    profile: str
    device: torch.device
    seed: int
    save: bool = False


def setup(profile: str = "smoke", device: str = "auto", seed: int = 0, save: bool = False,
          threads: int | None = None, quiet: bool = False) -> Settings:
    """Seed everything, resolve the device and print the resolved settings.

    threads: torch's CPU threads. By default 1 for the quick profiles ("smoke", and "stored",
    which trains at smoke when nothing is stored): the models there are so small that a second
    thread mostly spin-waits, and on shared cores it can triple the wall time. Larger profiles
    keep torch's default.
    """
    allowed = ("stored",) + PROFILES
    if profile not in allowed:
        raise ValueError(f"profile must be one of {allowed}, got {profile!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if threads is None and profile in ("smoke", "stored"):
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)
    dev = resolve_device(device)
    s = Settings(profile, dev, seed, bool(save))
    if not quiet:
        amp = "bf16/fp16 autocast (memory kept fp32)" if dev.type == "cuda" else "off (fp32)"
        print(f"profile={profile}  device={dev}  seed={seed}  save={bool(save)}  AMP={amp}  threads={torch.get_num_threads()}  "
              f"torch={torch.__version__}")
    return s


# ---------------------------------------------------------------------------- display
def show_source(obj: Any, dedent: bool = True):
    """Display the package source of `obj` as a highlighted code block (returns the Markdown object)."""
    from IPython.display import Markdown, display

    src = inspect.getsource(obj)
    if dedent:
        src = textwrap.dedent(src)
    mod = inspect.getmodule(obj)
    where = f"`{mod.__name__}`" if mod is not None else ""
    md = Markdown(f"From {where}:\n\n```python\n{src.rstrip()}\n```")
    display(md)
    return None


def join_words(items: list[str]) -> str:
    """Phrases joined as prose: "a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def table_html(header: list, rows: list[list], right: tuple[int, ...] = ()) -> str:
    """An HTML table of ``header`` and ``rows`` (cells shown with str, escaped), the columns numbered
    in ``right`` aligned right; wide tables scroll inside their own box, not the page."""
    def cells(values, tag: str) -> str:
        return "".join(f'<{tag} style="text-align:{"right" if j in right else "left"};padding:2px 8px">'
                       f"{html.escape(str(v))}</{tag}>" for j, v in enumerate(values))
    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return (f'<div style="overflow-x:auto"><table class="table memnet-table"><thead><tr>{cells(header, "th")}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>")


def table(header: list[str], rows: list[list], right: tuple[int, ...] = ()) -> None:
    """Show a table (HTML, so it renders the same in JupyterLab and in the book): ``header`` and
    ``rows`` of cells (any value; shown with str), the columns numbered in ``right`` aligned right."""
    from IPython.display import HTML, display

    display(HTML(table_html(header, rows, right)))


_DASHES = re.compile(r"-+(  -+)*")


def report_blocks(text: str) -> list[tuple]:
    """A text report (what the experiments' command lines print) cut into blocks: ``("table", header,
    rows)`` for every table :func:`memnet.experiments.common.format_table` wrote (found by its line
    of dashes, its columns by the dashes' spans; a blank line or a line wider than the table ends it)
    and ``("text", line)`` for every other non-empty line."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _DASHES.fullmatch(lines[i + 1]):
            spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[i + 1])]
            gaps = [(a[1], b[0]) for a, b in zip(spans, spans[1:])]

            def cut(line: str) -> list[str]:
                starts = [a for a, _ in spans] + [len(line)]
                return [line[starts[k]:starts[k + 1]].strip() for k in range(len(spans))]

            def in_table(line: str) -> bool:  # as wide as the table, with blanks where its columns meet
                return bool(line.strip()) and len(line) <= spans[-1][1] and all(not line[a:b].strip() for a, b in gaps)

            header, j = cut(lines[i]), i + 2
            rows = []
            while j < len(lines) and in_table(lines[j]):
                rows.append(cut(lines[j]))
                j += 1
            out.append(("table", header, rows))
            i = j
            continue
        if lines[i].strip():
            out.append(("text", lines[i].strip()))
        i += 1
    return out


def report_html(text: str) -> str:
    """The HTML of :func:`report_blocks`: tables as tables (the first column left-aligned, the others
    right-aligned, as printed), every other line as a paragraph that wraps to the page."""
    parts = []
    for block in report_blocks(text):
        if block[0] == "table":
            parts.append(table_html(block[1], block[2], right=tuple(range(1, len(block[1])))))
        else:
            parts.append(f'<p style="margin:0.3em 0">{html.escape(block[1])}</p>')
    return f'<div class="memnet-report">{"".join(parts)}</div>'


def _show(text: str, page: str) -> None:
    """Display `page` (HTML) where a notebook renders it, with `text` as its plain-text form; outside
    IPython, print the text."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = lambda: None  # noqa: E731
    if get_ipython() is None:
        print(text)
        return
    display({"text/plain": text, "text/html": page}, raw=True)


def show_report(text: str) -> None:
    """Show a text report in a notebook: as HTML tables and paragraphs (:func:`report_html`) where
    HTML renders, the text itself where only text does (papermill's log, a terminal)."""
    _show(text, report_html(text))


def note(text: str, kind: str = "note", title: str | None = None) -> None:
    """A visible admonition that renders in JupyterLab and in the book (HTML with Sphinx's classes);
    where only text renders (papermill's log) its text shows, once."""
    title = title or kind.capitalize()
    page = (f'<div class="admonition {kind}" style="border-left:4px solid #e6a700;padding:0.4em 0.8em;'
            f'background:#fff8e1"><p class="admonition-title" style="font-weight:bold;margin:0">'
            f'{html.escape(title)}</p><p style="margin:0.3em 0 0 0">{html.escape(text)}</p></div>')
    _show(f"[{title}] {text}", page)


# ---------------------------------------------------------------------------- the bank, driven by hand
def run_bank(bank: MultiHeadMemoryBank, queries: torch.Tensor, requests: list[WriteRequest],
             state: MemoryState | None = None, valid: torch.Tensor | None = None) -> tuple[MemoryState, MemoryTrace]:
    """Drive a bare memory bank through S segments with the step MemNet takes
    (:meth:`MultiHeadMemoryBank.step`: read with the memory as it stands, then write) and trace it.

    queries: (B, S, L, H, D) read queries; requests: S write requests; valid: (B, S, L) bool, the
    real tokens (None: all). Returns the final state and a MemoryTrace with the same fields a
    MemNet forward pass records.
    """
    B, S, L = queries.shape[:3]
    if len(requests) != S:
        raise ValueError(f"requests must hold one WriteRequest per segment ({S}), got {len(requests)}")
    state = bank.initial_state(B, queries.device) if state is None else state
    valid = torch.ones(B, S, L, dtype=torch.bool, device=queries.device) if valid is None else valid
    if valid.shape != (B, S, L) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape (B, S, L) = {(B, S, L)}, got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    req = stack_requests(requests)
    state, seg = bank.scan(state, queries, req, valid)
    return state, MemoryTrace.of_segments(req, valid, seg)


# ---------------------------------------------------------------------------- stored runs
@dataclass
class Run:
    """An experiment's results plus the traces its figures need.

    source: "stored" (loaded from `path`) or "trained" (at `profile`, now);
    traces: seed -> {"tokens", "targets", "distance", "trace": MemoryTrace}.
    """

    result: dict
    traces: dict[int, dict] = field(default_factory=dict)
    source: str = "stored"
    profile: str = "smoke"
    path: Path | None = None

    @property
    def provenance(self) -> dict:
        return self.result.get("provenance", {})

    def describe(self) -> str:
        """One line saying which run made the figures."""
        p = self.provenance
        try:
            path = self.path.relative_to(DATA_DIR.parent) if self.path is not None else None
        except ValueError:
            path = self.path
        where = (f"stored run {path}" if self.source == "stored" else
                 "a run trained just now (not stored)" if path is None else f"a run trained just now, stored in {path}")
        seeds = p.get("seed")
        commit = str(p.get("git_commit", "?"))[:12]
        return (f"profile {self.profile}, {where}; seeds {seeds}; device {p.get('device', '?')}; "
                f"torch {p.get('torch', '?')}; commit {commit}; {p.get('date', '?')}; wall {p.get('wall_s', '?')} s")


def stale_models(result: dict, experiment: str) -> dict[str, list[str] | None]:
    """For a stored run assembled from cached trainings: per model, the files whose code changed
    since the commits that made that model's runs (and the one that assembled them), compared as
    :func:`memnet.experiments.fingerprint.stale_files` compares them; None where a commit's code
    cannot be read."""
    from .experiments import fingerprint as fp

    module = fp.experiment_module(experiment)
    current = fp.code_fingerprint(module)
    changed: dict[str, set[str] | None] = {}

    def since(commit: str) -> set[str] | None:
        if commit not in changed:
            read = None if commit.endswith("+dirty") else fp.git_reader(commit)
            changed[commit] = None if read is None else set(fp.changed_files(fp.code_fingerprint(module, read), current))
        return changed[commit]

    assembled = str(result.get("provenance", {}).get("git_commit", "unknown"))
    out: dict[str, list[str] | None] = {}
    for model in dict.fromkeys(r["model"] for r in result.get("runs", [])):
        commits = {assembled} | {str(r.get("git_commit", "unknown")) for r in result["runs"] if r["model"] == model}
        found = [since(c) for c in sorted(commits)]
        out[model] = None if any(f is None for f in found) else sorted(set().union(*found))
    return out


def note_code_changes(run: "Run", experiment: str) -> list[str] | None:
    """Say whether the code a stored run depends on changed after the run was made
    (:func:`memnet.experiments.fingerprint.stale_files`): one printed line when it did not, a
    visible note naming the files when it did (and, for a run assembled from trainings of several
    commits, which models' runs are on the current code: :func:`stale_models`). Returns those
    files (None: it cannot be told)."""
    from .experiments.fingerprint import stale_files

    p = run.provenance
    made = f"commit {str(p.get('git_commit', '?'))[:7]}, {p.get('date', 'date unknown')}"
    files, how = stale_files(run.result, experiment=experiment)
    if files is None:
        print(f"Stored run made at {made}; whether its code changed since cannot be told here: {how}.")
    elif not files:
        print(f"Stored run made at {made}; the code it depends on is unchanged since (compared with {how}).")
    else:
        by_model = ""
        if run.result.get("run_commits") and run.result.get("runs"):
            labels = getattr(experiment_module(experiment), "LABELS", {})
            per = stale_models(run.result, experiment)
            name = lambda m: labels.get(m, m)
            current = [name(m) for m, f in per.items() if f == []]
            older = [name(m) for m, f in per.items() if f != []]
            listed = lambda xs: ", ".join(xs[:-1]) + " and " + xs[-1] if len(xs) > 1 else xs[0]
            by_model = (f" The runs of {listed(current)} were made by the code as it is now; those of "
                        f"{listed(older)} by code that has changed since." if current and older else "")
        note(f"This stored run was made at {made}. Since then the code it depends on has changed in "
             f"{len(files)} file{'s' if len(files) > 1 else ''} ({', '.join(f.removeprefix('memnet/') for f in files)}; "
             f"compared with {how}, ignoring comments and docstrings).{by_model} The numbers below are those of "
             "the run as stored; whether the change alters them shows once the run is made again "
             f"(scripts/reproduce.py --chapter {EXPERIMENT_CHAPTERS[experiment]} "
             "--profile laptop, or the experiment's module).", title="The stored run and the code")
    return files


def find_stored_run(experiment: str = "long_range", data_dir: Path | str | None = None,
                    preference: tuple[str, ...] = STORED_PREFERENCE) -> Path | None:
    """The folder of the best stored run (gpu, then full, then laptop) that has a results.json, or None."""
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    for prof in preference:
        d = root / experiment / prof
        if (d / "results.json").is_file():
            return d
    return None


def load_run(path: Path | str) -> Run:
    """Load results.json and every trace_seed*.pt of a stored run folder."""
    path = Path(path)
    result = json.loads((path / "results.json").read_text())
    traces = {}
    for f in sorted(path.glob("trace_seed*.pt")):
        seed = int(f.stem.removeprefix("trace_seed"))
        d = torch.load(f, map_location="cpu", weights_only=True)
        if "trace" in d:  # a full per-segment trace (experiments that store only a few fields have none)
            d["trace"] = MemoryTrace(**d["trace"])
        traces[seed] = d
    return Run(result, traces, "stored", result.get("profile", path.name), path)


EXPERIMENT_CHAPTERS = {"long_range": "03_long_range", "continual": "04_continual", "forgetting": "05_forgetting",
                       "bench": "06_cost"}  # the chapter that shows each experiment's stored run


def experiment_module(experiment: str):
    """The module ``memnet.experiments.<experiment>``: it has ``PROFILES`` (name -> profile with
    ``.seeds``) and ``run(profile, device, seeds=, out_dir=, save=, progress=)`` that stores
    results.json (and optionally trace_seed*.pt) in out_dir when save=True."""
    import importlib

    if not isinstance(experiment, str) or experiment not in EXPERIMENT_CHAPTERS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENT_CHAPTERS)}, got {experiment!r}")
    return importlib.import_module(f"memnet.experiments.{experiment}")


def load_or_train(profile: str = "stored", device: str = "auto", seed: int = 0, save: bool = False,
                  experiment: str = "long_range", data_dir: Path | str | None = None, progress: bool = False) -> Run:
    """The chapter's run: the stored one for profile "stored" when there is one; otherwise train.

    - profile "stored": load the best stored run under data/<experiment>/ (gpu, full, laptop);
      with none stored, train at "smoke" and show a visible note saying so.
    - profile "smoke"/"laptop"/"gpu": train now; with save=True store the run under
      data/<experiment>/<profile>/ (refreshing it), else keep it in a temporary folder.
    """
    mod = experiment_module(experiment)
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    if profile == "stored":
        found = find_stored_run(experiment, root)
        if found is not None:
            run = load_run(found)
            note_code_changes(run, experiment)
            return run
        try:
            where = (root / experiment).relative_to(DATA_DIR.parent)
        except ValueError:
            where = root / experiment
        note(f"No stored run under {where}/ (looked for {', '.join(STORED_PREFERENCE)}): "
             "training at the smoke profile now. Figures below show that tiny run, not the effect; "
             f"reproduce a real one with scripts/reproduce.py --chapter {EXPERIMENT_CHAPTERS[experiment]} "
             "--profile laptop.", kind="warning", title="No stored run")
        profile, save = "smoke", False
    if profile not in PROFILES:
        raise ValueError(f"profile must be 'stored' or one of {PROFILES}, got {profile!r}")
    p = mod.PROFILES[profile]
    seeds = [seed] if len(p.seeds) == 1 else None
    if save:
        out = root / experiment / profile
        result = mod.run(profile, device, seeds=seeds, out_dir=out, save=True, progress=progress)
        # a result that lacks runs of the one stored there goes to partial/ and leaves it in place
        from .experiments.common import PARTIAL

        run = load_run(out / PARTIAL if isinstance(result, dict) and result.get("partial_of") else out)
        run.source = "trained"
        return run
    with tempfile.TemporaryDirectory() as tmp:  # runs record traces only when saving
        mod.run(profile, device, seeds=seeds, out_dir=Path(tmp), save=True, progress=progress)
        run = load_run(tmp)
    run.source, run.path = "trained", None
    return run
