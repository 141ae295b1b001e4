"""What a stored run depends on, as a fingerprint of the code: so a run made by code that has since
changed what it computes can be told from one that is still current.

A run of ``memnet.experiments.<name>`` depends on the modules of ``memnet`` that the experiment's
module imports, directly or through others (imports inside functions included), and on the C
sources they compile. :func:`code_fingerprint` hashes each of them; a Python module is hashed from
its syntax tree without docstrings, so editing a comment or a docstring leaves it unchanged, while
any change to the code (a constant, an expression, a renamed variable) changes it. That errs on
the safe side: a refactoring that computes the same numbers still marks the run as made by other
code, and the run is re-made rather than trusted. Dependencies outside ``memnet`` (torch, the
published peers, NumPy) are pinned by ``requirements-dev.txt`` and recorded in the run's
provenance, not fingerprinted here.

The same functions read the code of any commit through git (:func:`git_reader`), so a run that
predates fingerprints is checked against the code of the commit that made it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import io
import subprocess
import tarfile
import sys
from pathlib import Path, PurePosixPath
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
Reader = Callable[[str], "str | bytes | None"]  # repository-relative posix path -> its contents (None: no such file)
C_SOURCES = {"memnet/fused.py": ("memnet/csrc/memory_step.c",)}  # module -> the C files it compiles


def working_tree_reader(root: Path = REPO_ROOT) -> Reader:
    """Read files of the working tree under `root`."""
    def read(path: str):
        f = root / path
        return f.read_bytes() if f.is_file() else None
    return read


def git_reader(commit: str, root: Path = REPO_ROOT) -> Reader | None:
    """Read files of ``memnet/`` as they were at `commit` (one ``git archive`` of the folder), or
    None when git or the commit is not there."""
    sha = str(commit).split("+", 1)[0]
    if not sha or not all(c in "0123456789abcdef" for c in sha.lower()):
        return None
    try:
        out = subprocess.run(["git", "archive", "--format=tar", sha, "memnet"], cwd=root, capture_output=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    files = {}
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                files[m.name] = tar.extractfile(m).read()
    return files.get


def _text(data: str | bytes) -> str:
    return data.decode() if isinstance(data, bytes) else data


def source_hash(source: str | bytes) -> str:
    """sha256 (16 hex digits) of a Python module's syntax tree without docstrings: comments,
    docstrings and layout do not change it, code does."""
    tree = ast.parse(_text(source))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or ([] if isinstance(node, ast.Module) else [ast.Pass()])
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:16]


def _module_path(parts: list[str], read: Reader) -> str | None:
    """The file of module ``memnet/<parts>``: a module file or a package's __init__."""
    for cand in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if read(cand) is not None:
            return cand
    return None


def _imports(path: str, source: str) -> set[str]:
    """The files of ``memnet`` that the module at `path` imports (relative or absolute, at any depth
    of the module, ``from . import x`` of a submodule included)."""
    pkg = list(PurePosixPath(path).parent.parts)  # the module's package, e.g. ["memnet", "experiments"]
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")) for a in node.names if a.name.split(".")[0] == "memnet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
            elif node.module and node.module.split(".")[0] == "memnet":
                base = []
            else:
                continue
            target = base + (node.module.split(".") if node.module else [])
            found.add(tuple(target))
            found |= {tuple(target + [a.name]) for a in node.names}  # a submodule, where the name is one
    return found


def dependencies(module: str, read: Reader | None = None) -> list[str]:
    """Repository-relative paths of every file of ``memnet`` that importing `module` (dotted, e.g.
    ``"memnet.experiments.long_range"``) runs or compiles: the module, the packages around it, what
    they import, transitively, and the C sources of the modules that compile them."""
    read = functools.lru_cache(maxsize=None)(read or working_tree_reader())  # each file is read once
    parts = module.split(".")
    if parts[0] != "memnet":
        raise ValueError(f"module must be a module of memnet, got {module!r}")
    todo = [tuple(parts[:i]) for i in range(1, len(parts) + 1)]  # importing a.b.c runs a and a.b first
    seen: set[str] = set()
    while todo:
        parts_ = list(todo.pop())
        for i in range(1, len(parts_) + 1):  # and every package above a module
            path = _module_path(parts_[:i], read)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(_imports(path, _text(read(path))))
    if not any(p == "/".join(parts) + ".py" or p == "/".join(parts) + "/__init__.py" for p in seen):
        raise ValueError(f"no module {module!r} in this code")
    seen |= {c for m, cs in C_SOURCES.items() if m in seen for c in cs if read(c) is not None}
    return sorted(seen)


def code_fingerprint(module: str, read: Reader | None = None) -> dict[str, str]:
    """{path: hash} of the :func:`dependencies` of `module`: :func:`source_hash` for Python
    modules, sha256 of the bytes for other files."""
    read = functools.lru_cache(maxsize=None)(read or working_tree_reader())  # shared with dependencies()
    out = {}
    for path in dependencies(module, read):
        data = read(path)
        out[path] = source_hash(data) if path.endswith(".py") else hashlib.sha256(
            data if isinstance(data, bytes) else data.encode()).hexdigest()[:16]
    return out


def experiment_module(experiment: str) -> str:
    """The module a stored run of `experiment` (its results.json's "experiment") was made by."""
    return f"memnet.experiments.{experiment}"


def run_commits(result: dict) -> list[str]:
    """The commits whose code made a stored run: the one that assembled it and, for runs assembled
    from cached trainings, each training's (``run_commits``)."""
    commits = [str(result.get("provenance", {}).get("git_commit", "unknown"))]
    commits += [str(c) for c in result.get("run_commits", ())]
    return sorted(set(commits))


def stale_files(result: dict, current: dict[str, str] | None = None, root: Path = REPO_ROOT,
                experiment: str | None = None) -> tuple[list[str] | None, str]:
    """(files whose code changed since a stored run was made, how that was found), or (None, why)
    when the code that made it cannot be read. A run records its fingerprint in its provenance
    (``code_fingerprint``, hashed under its Python's ``ast``); one made before that, under another
    Python version, or assembled from trainings of several commits is compared through git with the
    code of every commit it came from. `experiment`: the run's experiment where its result does not
    name it."""
    experiment = result.get("experiment", experiment)
    if not experiment:
        raise ValueError("the result names no experiment: pass experiment=")
    module = experiment_module(experiment)
    current = current if current is not None else code_fingerprint(module)
    prov = result.get("provenance", {})
    same_python = ".".join(str(prov.get("python", "")).split(".")[:2]) == python_tag()  # ast differs across versions
    if prov.get("code_fingerprint") and not result.get("run_commits") and same_python:
        return changed_files(prov["code_fingerprint"], current), "its recorded fingerprint"
    changed: set[str] = set()
    commits = run_commits(result)
    for commit in commits:
        if commit.endswith("+dirty"):
            return None, f"made from a tree with uncommitted changes at {commit[:7]}"
        read = git_reader(commit, root)
        if read is None:
            return None, f"commit {commit[:7]} is not in this repository's history"
        changed |= set(changed_files(code_fingerprint(module, read), current))
    return sorted(changed), f"the code of {'commit' if len(commits) == 1 else 'commits'} " + \
        ", ".join(c[:7] for c in commits)


def changed_files(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Files whose code differs, or that one side depends on and the other does not."""
    return sorted(p for p in set(recorded) | set(current) if recorded.get(p) != current.get(p))


def python_tag() -> str:
    """The Python version whose ``ast`` the hashes depend on (major.minor)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"
