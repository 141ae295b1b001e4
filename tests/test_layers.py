"""The package's layers (imports point down only): every relative import of every module,
top-level or inside a function, checked against the layer table."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "memnet"

# lowest first; a module may import its own layer and the layers below it
ORDER = ("core", "analysis", "training", "tasks", "peers", "experiments", "presentation", "package")
LAYER = {
    **{m: "core" for m in ("config", "addressing", "memory", "fused", "native", "encoder", "controller", "bottleneck",
                           "losses", "model", "trace", "baselines", "distributed")},
    **{m: "analysis" for m in ("metrics", "survival", "continual", "eviction", "lifetimes")},
    **{m: "training" for m in ("train", "replay")},
    "tasks": "tasks",
    "peers": "peers",
    "experiments": "experiments",
    **{m: "presentation" for m in ("plots", "widgets", "book", "bench")},
    "__init__": "package",
}
ONLY = {"tasks": {"config", "tasks"},  # generators: nothing of memnet but the config
        "plots": {"config", "trace", "metrics", "survival", "continual"}}  # draws what analysis computed


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, first component below the package) of every relative import in the module at `path`
    (its text, or `source` in its place)."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = list(rel[:-1])[: len(rel) - node.level]
        target = base + (node.module.split(".") if node.module else [])
        out.extend((node.lineno, n) for n in ([target[0]] if target else [a.name for a in node.names]))
    return out


def layer_of(path: Path) -> tuple[str, str]:
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    return rel[0], LAYER[rel[0]]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_point_down(path):
    name, layer = layer_of(path)
    for line, target in imports_of(path):
        assert target in LAYER, f"{path.name}:{line} imports {target!r}, which has no layer in this table"
        if name in ONLY or layer in ONLY:
            allowed = ONLY.get(name, ONLY.get(layer))
            assert target in allowed, f"{path.name}:{line}: {name} may import only {sorted(allowed)}, not {target}"
        assert ORDER.index(LAYER[target]) <= ORDER.index(layer), (
            f"{path.name}:{line}: {name} ({layer}) imports {target} ({LAYER[target]}), a layer above it")


def test_the_checker_sees_imports_inside_functions_and_subpackages():
    src = "import numpy\nfrom . import plots\n\n\ndef f():\n    from .experiments.forgetting import counts_to_km\n"
    assert imports_of(PACKAGE / "plots.py", src) == [(2, "plots"), (6, "experiments")]
    # two levels up from a subpackage's module, and a sibling within it
    src = "from ..metrics import IGNORE_INDEX\nfrom .recall import KeyValueRecall\n"
    assert imports_of(PACKAGE / "tasks" / "mqar.py", src) == [(1, "metrics"), (2, "tasks")]
