"""The book's chapters: pairs never drift, each runs through papermill at smoke within its
budget, and nbval (lax mode) reproduces the outputs of the cells tagged nbval-check-output."""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
pytest.importorskip("papermill")
pytest.importorskip("nbval")
from helpers import png_size_and_dpi  # noqa: E402
from memnet import plots  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.py"))
BUDGET_S = float(os.environ.get("MEMNET_CHAPTER_BUDGET_S", "60"))  # smoke profile: < 60 s on 2 CPU cores


def chapter_pngs(outputs: list) -> list[bytes]:
    """Every PNG a chapter shows: image outputs and the views inlined in its players."""
    pngs = []
    for o in outputs:
        data = o.get("data", {})
        if "image/png" in data:
            pngs.append(base64.b64decode(data["image/png"]))
        html = "".join(data.get("text/html", ""))
        pngs += [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]
    return pngs


def _default_profile(src: Path) -> str | None:
    nb = jupytext.read(src)
    for c in nb.cells:
        if "parameters" in c.metadata.get("tags", []):
            ns: dict = {}
            exec(c.source, ns)
            return ns.get("profile")
    return None


# chapters that would load a stored run by default get -p profile smoke, so they train
SMOKE_PARAMS = {src.stem: {"profile": "smoke"} for src in CHAPTERS if _default_profile(src) == "stored"}


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_chapter_is_paired():
    assert CHAPTERS, "no chapters under book/"
    for src in CHAPTERS:
        assert src.with_suffix(".ipynb").is_file(), f"{src.name} has no .ipynb: run scripts/sync_notebooks.py"
    for nb in BOOK.glob("[0-9][0-9]_*.ipynb"):
        assert nb.with_suffix(".py").is_file(), f"{nb.name} has no .py source"


CODE_COLUMNS = 88  # _static/memnet.css sizes the code so that this many characters fit the column


@pytest.mark.parametrize("src", CHAPTERS, ids=lambda p: p.stem)
def test_code_readers_see_fits_the_column(src):
    """Every line of code a reader can see (cells not removed from the page, folded ones included)
    is at most CODE_COLUMNS characters, so it fits the text column without wrapping."""
    long = [(i, line) for i, c in enumerate(jupytext.read(src).cells)
            if c.cell_type == "code" and not {"remove-cell", "remove-input"} & set(c.metadata.get("tags", []))
            for line in c.source.split("\n") if len(line) > CODE_COLUMNS]
    assert not long, f"{src.name}: {len(long)} lines over {CODE_COLUMNS} characters, e.g. cell {long[0]}"


@pytest.mark.parametrize("src", CHAPTERS, ids=lambda p: p.stem)
def test_pair_in_sync(src):
    """jupytext.read of the .py and the .ipynb give the same cells (type, source, tags)."""
    a, b = jupytext.read(src), jupytext.read(src.with_suffix(".ipynb"))
    cells = lambda nb: [(c.cell_type, c.source, sorted(c.metadata.get("tags", []))) for c in nb.cells]
    ca, cb = cells(a), cells(b)
    assert len(ca) == len(cb), f"{src.name}: {len(ca)} cells in .py, {len(cb)} in .ipynb; run scripts/sync_notebooks.py"
    for i, (x, y) in enumerate(zip(ca, cb)):
        assert x == y, f"{src.name}: cell {i} differs between .py and .ipynb; run scripts/sync_notebooks.py"


@pytest.mark.parametrize("src", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_anatomy(src):
    """A label and question on top, a parameters cell with plain literals, hidden checks, glue."""
    nb = jupytext.read(src)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("(") and "**Question.**" in first.source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    ns: dict = {}
    exec(params[0].source, ns)  # plain literals only
    assert {"profile", "device", "seed", "save"} <= set(ns)
    assert any({"remove-cell", "hide-cell"} & set(c.metadata.get("tags", [])) for c in nb.cells), "no checks cell"
    checked = [c for c in nb.cells if c.cell_type == "code" and "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked, "no cell whose output nbval checks (tag nbval-check-output)"
    # nbval's markers are cell tags, not comments a reader would see in the code
    assert not any("NBVAL_" in c.source for c in nb.cells), "an NBVAL_ comment in a chapter's code: use the cell tag"
    assert any("{glue:text}" in c.source for c in nb.cells if c.cell_type == "markdown")
    for c in nb.cells:  # a cell that ends in a figure says what the figure shows (the image's alt text)
        last = c.source.strip().splitlines()[-1] if c.cell_type == "code" and c.source.strip() else ""
        if re.fullmatch(r"(fig\d?|ax\.figure|plots\.\w+\(.*)", last) and "nbval-ignore-output" not in c.metadata.get("tags", []):
            alt = c.metadata.get("mystnb", {}).get("image", {}).get("alt", "")
            assert len(alt) > 30, f"a figure without alt text (mystnb.image.alt): {c.source[:80]!r}"
    for c in nb.cells:  # cells that mostly glue numbers into the prose are folded away on the page
        if c.cell_type == "code" and c.source.count("glue(") > 3:
            assert {"hide-input", "remove-input", "remove-cell"} & set(c.metadata.get("tags", [])), \
                f"a cell with {c.source.count('glue(')} glue calls is shown: tag it hide-input"
    for c in nb.cells:
        if c.cell_type == "code" and "widgets.explorer(" in c.source:
            assert "nbval-ignore-output" in c.metadata.get("tags", []), "explorer cells must be nbval-ignore-output"
    ipynb = json.loads(src.with_suffix(".ipynb").read_text())
    marked = [c for c in ipynb["cells"] if c["cell_type"] == "code" and "nbval-check-output" in c["metadata"].get("tags", [])]
    assert len(marked) == len(checked)
    assert all(c["outputs"] for c in marked), f"{src.name}.ipynb lacks outputs of NBVAL cells: run scripts/sync_notebooks.py"


@pytest.mark.slow
@pytest.mark.parametrize("src", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_at_smoke(src, tmp_path):
    """jupytext --to ipynb -o - ch.py | papermill - out.ipynb [-p profile smoke]: within budget, figures drawn."""
    params = SMOKE_PARAMS.get(src.stem, {})
    out = tmp_path / f"{src.stem}.ipynb"
    conv = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "-o", "-", str(src)], check=True,
                          capture_output=True, cwd=ROOT)
    cmd = [sys.executable, "-m", "papermill", "-", str(out), "--cwd", str(BOOK), "--no-progress-bar",
           "--execution-timeout", str(int(3 * BUDGET_S))]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "MEMNET_CHECK_FIGURES": "1"}  # figure_png refuses a figure with layout problems
    proc = subprocess.run(cmd, input=conv.stdout, capture_output=True, cwd=ROOT, env=env)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)  # papermill and its kernel
    assert proc.returncode == 0, proc.stderr.decode()[-4000:]
    print(f"{src.stem}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    # the budget is wall time on 2 otherwise idle cores; when other jobs share the cores, wall time
    # inflates, so a chapter also passes if its own CPU time (all of it, as if on one core) fits
    assert wall < BUDGET_S or cpu < BUDGET_S, \
        f"{src.stem} took {wall:.0f} s wall, {cpu:.0f} s CPU at smoke (budget {BUDGET_S:.0f} s)"
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"
    assert "figure layout:" not in json.dumps(outputs), "a figure is wider than the column or has a legend over data"
    for png in chapter_pngs(outputs):
        w, _, dpi = png_size_and_dpi(png)
        assert dpi >= 150 and w <= (plots.COLUMN_WIDTH + 2 * plots.PAD) * dpi + 1, (w, dpi)
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "checks passed" in text
    if src.stem in SMOKE_PARAMS:
        assert "(smoke run)" in text
    assert "widgets" in nb["metadata"] or not any("widget-view" in json.dumps(o) for o in outputs)


@pytest.mark.slow
def test_nbval_lax():
    """nbval re-executes the committed notebooks and compares the cells tagged nbval-check-output."""
    nbs = [str(p.with_suffix(".ipynb")) for p in CHAPTERS]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                           "--nbval-cell-timeout", str(int(3 * BUDGET_S)), "-p", "no:cacheprovider", "-o", "addopts=",
                           "--rootdir", str(BOOK), *nbs], capture_output=True, text=True, cwd=BOOK)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
