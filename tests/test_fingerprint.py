"""The code fingerprint of stored runs (memnet.experiments.fingerprint): what it hashes, what it
follows, and which stored runs under data/ were made by code that has changed since."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from memnet.experiments import fingerprint as fp
from memnet.experiments.common import provenance

ROOT = Path(__file__).resolve().parents[1]
STORED = sorted((ROOT / "data").glob("*/*/results.json"))

# Stored runs made by code that has changed since (or whose code cannot be read back), as found
# by test_stored_runs_match_the_code. They are to be re-made on the current code; until then each
# chapter that shows one says so above its figures (memnet.book.note_code_changes). A run that is
# re-made leaves this list, and a run that goes stale must be added here knowingly: the test
# fails on any difference.
KNOWN_STALE = {
    "long_range/full",
}

PACKAGE = {  # a small package, read through a dict
    "memnet/__init__.py": "from .a import f\n",
    "memnet/a.py": '"""doc"""\nfrom .b import g\n\ndef f():\n    from .sub import deep\n    return g()\n',
    "memnet/b.py": "X = 1\n",
    "memnet/c.py": "Y = 2\n",  # imported by nobody
    "memnet/sub/__init__.py": "",
    "memnet/sub/deep.py": "from .. import c\n",
    "memnet/fused.py": "",
    "memnet/csrc/memory_step.c": "int f(void) { return 0; }\n",
}


def test_source_hash_ignores_docstrings_comments_and_layout_but_not_code():
    a = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    b = 'def f(x):\n\n    # another comment\n    return (x +\n            1)\n'
    assert fp.source_hash(a) == fp.source_hash(b)
    assert fp.source_hash(a) != fp.source_hash(a.replace("x + 1", "x + 2"))
    assert fp.source_hash(a) != fp.source_hash(a.replace("def f(x)", "def f(y)").replace("x + 1", "y + 1"))
    assert fp.source_hash('"""only a docstring"""\n') == fp.source_hash("")


def test_dependencies_follow_imports_at_any_depth():
    read = PACKAGE.get
    assert fp.dependencies("memnet.a", read) == ["memnet/__init__.py", "memnet/a.py", "memnet/b.py", "memnet/c.py",
                                                 "memnet/sub/__init__.py", "memnet/sub/deep.py"]
    assert fp.dependencies("memnet.b", read) == ["memnet/__init__.py", "memnet/a.py", "memnet/b.py", "memnet/c.py",
                                                 "memnet/sub/__init__.py", "memnet/sub/deep.py"]  # via the package
    alone = {k: v for k, v in PACKAGE.items() if k != "memnet/__init__.py"}
    assert fp.dependencies("memnet.b", alone.get) == ["memnet/b.py"]
    assert fp.dependencies("memnet.fused", alone.get) == ["memnet/csrc/memory_step.c", "memnet/fused.py"]
    with pytest.raises(ValueError, match="module of memnet"):
        fp.dependencies("numpy.linalg", read)
    with pytest.raises(ValueError, match="no module"):
        fp.dependencies("memnet.nothing", read)


def test_fingerprint_changes_only_with_the_code_a_module_depends_on():
    read = PACKAGE.get
    before = fp.code_fingerprint("memnet.sub.deep", {**PACKAGE, "memnet/__init__.py": ""}.get)
    edited = {**PACKAGE, "memnet/__init__.py": "", "memnet/c.py": "Y = 2  # a comment\n"}
    assert fp.code_fingerprint("memnet.sub.deep", edited.get) == before
    changed = {**PACKAGE, "memnet/__init__.py": "", "memnet/c.py": "Y = 3\n"}
    assert fp.changed_files(before, fp.code_fingerprint("memnet.sub.deep", changed.get)) == ["memnet/c.py"]
    assert fp.code_fingerprint("memnet.a", read)["memnet/b.py"] == fp.source_hash("X = 1\n")


def test_the_real_experiments_depend_on_their_model_code():
    deps = fp.dependencies("memnet.experiments.long_range")
    assert {"memnet/experiments/long_range.py", "memnet/memory.py", "memnet/model.py", "memnet/peers.py",
            "memnet/tasks/mqar.py", "memnet/csrc/memory_step.c"} <= set(deps)
    assert not {"memnet/plots.py", "memnet/widgets.py", "memnet/book.py"} & set(deps)  # they only draw
    assert "memnet/replay.py" in fp.dependencies("memnet.experiments.continual")


def test_git_reader_agrees_with_the_working_tree():
    """Two paths to the same code: HEAD's files through git archive, and the files on disk."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
    head = git("rev-parse", "HEAD").stdout.strip()
    if not head:
        pytest.skip("needs a git checkout")
    if git("status", "--porcelain", "--", "memnet").stdout.strip():
        pytest.skip("memnet/ has uncommitted changes")
    read = fp.git_reader(head)
    assert read is not None
    module = "memnet.experiments.continual"
    assert fp.code_fingerprint(module, read) == fp.code_fingerprint(module)
    assert fp.git_reader("0" * 40) is None and fp.git_reader("not-a-commit") is None


def test_provenance_records_the_fingerprint():
    import torch

    p = provenance(torch.device("cpu"), 0, 1.0, experiment="forgetting")
    assert p["code_fingerprint"] == fp.code_fingerprint("memnet.experiments.forgetting")
    result = {"experiment": "forgetting", "provenance": p}
    assert fp.stale_files(result) == ([], "its recorded fingerprint")
    other = dict(p["code_fingerprint"], **{"memnet/memory.py": "0" * 16})
    assert fp.stale_files({"experiment": "forgetting", "provenance": {**p, "code_fingerprint": other}})[0] == \
        ["memnet/memory.py"]
    assert "code_fingerprint" not in provenance(torch.device("cpu"), 0, 1.0)
    # hashed under another Python's ast: not trusted, the commit's code is read back instead (none here)
    files, how = fp.stale_files({"experiment": "forgetting", "provenance": {**p, "python": "3.99.0",
                                                                             "git_commit": "unknown"}})
    assert files is None and "not in this repository's history" in how
    with pytest.raises(ValueError, match="names no experiment"):
        fp.stale_files({"provenance": p})
    assert fp.stale_files({"provenance": p}, experiment="forgetting") == ([], "its recorded fingerprint")


def test_a_run_of_several_commits_tells_which_models_runs_are_on_the_current_code():
    """memnet.book.stale_models, per model, agrees with stale_files over the same commits."""
    from memnet.book import stale_models

    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
    head = git("rev-parse", "HEAD").stdout.strip()
    if not head or git("status", "--porcelain", "--", "memnet").stdout.strip():
        pytest.skip("needs a git checkout whose memnet/ has no uncommitted changes")
    old = "234a15c3b8406e12bd4fd27da4e13fe099c3448e"  # trained experiment 1's MemNet runs before the fused step
    if fp.git_reader(old) is None:
        pytest.skip(f"commit {old[:7]} is not in this clone's history")
    runs = [{"model": "memnet", "git_commit": head}, {"model": "dnc", "git_commit": old},
            {"model": "dnc", "git_commit": head}, {"model": "lstm", "git_commit": f"{head}+dirty"}]
    result = {"experiment": "long_range", "provenance": {"git_commit": head}, "runs": runs}
    per = stale_models(result, "long_range")
    assert per["memnet"] == [] and per["lstm"] is None
    files, _ = fp.stale_files({**result, "run_commits": [old, head]})
    assert per["dnc"] == files and "memnet/csrc/memory_step.c" in files


def test_stored_runs_match_the_code():
    """Every stored run whose code is unchanged is current; the others are exactly KNOWN_STALE."""
    if not STORED:
        pytest.skip("no stored runs")
    current: dict[str, dict] = {}
    stale, report = set(), []
    for path in STORED:
        result = json.loads(path.read_text())
        module = fp.experiment_module(result["experiment"])
        current.setdefault(module, fp.code_fingerprint(module))
        files, how = fp.stale_files(result, current[module])
        name = f"{path.parent.parent.name}/{path.parent.name}"
        if files is None and "not in this repository's history" in how:
            git = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip()
            if git != "false":
                pytest.skip(f"{name}: {how} (a shallow clone or no git)")
        if files is None or files:
            stale.add(name)
            report.append(f"{name}: {how}: {files}")
    assert stale == KNOWN_STALE, "\n".join(report)
