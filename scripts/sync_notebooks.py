#!/usr/bin/env python
"""Regenerate book/NN_*.ipynb from their jupytext sources (book/NN_*.py, the source of truth).

    python scripts/sync_notebooks.py            # every chapter
    python scripts/sync_notebooks.py book/02_memnet.py

Each notebook is executed once at its default parameters; the outputs of the cells tagged
``nbval-check-output`` are kept (nbval compares them, in lax mode, on every test run) and all
other outputs are dropped, so the committed .ipynb stays small and its diffs readable. The
book build re-executes everything anyway.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
MARK = "nbval-check-output"  # the cell tag whose outputs nbval compares


def keep_cell_ids(nb, old_path: Path) -> None:
    """Give every cell of `nb` the id of the cell with the same type and source in the notebook
    at `old_path` (if any, each old id used once), so re-syncing an edited chapter changes only
    the cells that changed."""
    if not old_path.exists():
        return
    old = nbformat.read(old_path, as_version=4)
    free: dict[tuple[str, str], list[str]] = {}
    for c in old.cells:
        if "id" in c:
            free.setdefault((c.cell_type, c.source), []).append(c.id)
    for c in nb.cells:
        ids = free.get((c.cell_type, c.source))
        if ids:
            c.id = ids.pop(0)


def sync(src: Path, timeout: int = 600) -> Path:
    nb = jupytext.read(src)
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}})
    client.execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if MARK not in cell.metadata.get("tags", []):
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    out = src.with_suffix(".ipynb")
    keep_cell_ids(nb, out)
    jupytext.write(nb, out, fmt="ipynb")
    nbformat.validate(nbformat.read(out, as_version=4))
    return out


def main(argv: list[str]) -> int:
    srcs = [Path(a).resolve() for a in argv] or sorted((ROOT / "book").glob("[0-9][0-9]_*.py"))
    for src in srcs:
        print(f"sync {src.relative_to(ROOT)} -> {src.with_suffix('.ipynb').name}", flush=True)
        sync(src)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
