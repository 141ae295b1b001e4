"""The experiments' command lines and result files lose nothing on a bad call: bad options are
rejected by name before anything is trained or written, an unwritable output folder is found
before the training, results.json is written atomically and never replaced by a result that
lacks its runs, and worker processes end with the process that started them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import assert_unchanged, snapshot
from memnet.experiments import bench as B
from memnet.experiments import common
from memnet.experiments import continual as C
from memnet.experiments import forgetting as FX
from memnet.experiments import long_range as LR
from memnet.experiments import mqar as MQ

REPO = Path(__file__).resolve().parents[1]
MAINS = {"long_range": LR.main, "continual": C.main, "forgetting": FX.main, "mqar": MQ.main, "bench": B.main}
WITH_SEEDS = ("long_range", "continual", "forgetting", "mqar")
# what each experiment trains or measures: replaced by a function that fails the test when called
TRAINING = {"long_range": (LR, "train_and_test"), "continual": (C, "_run_job"), "forgetting": (FX, "_train_one"),
            "mqar": (MQ, "train_and_score"), "bench": (B, "_run")}


@pytest.fixture
def no_training(monkeypatch):
    """Every experiment's training replaced by a function that fails the test when called."""
    def refuse(*args, **kw):
        raise AssertionError("a rejected call started training")
    for mod, name in TRAINING.values():
        monkeypatch.setattr(mod, name, refuse)


def stored_run(folder: Path, experiment: str = "forgetting") -> list[Path]:
    """A stored results.json and a trace file in `folder` (the files a bad call must leave alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"experiment": experiment, "profile": "smoke",
                                                     "runs": [{"model": "m", "seed": 0}]}))
    (folder / "trace_seed0.pt").write_bytes(b"trace")
    return [folder / "results.json", folder / "trace_seed0.pt"]


def reject(argv: list[str], experiment: str, capsys, option: str, out: Path) -> None:
    """`argv` must stop with an argparse error naming `option` (exit status 2), leaving the files
    in `out` as they were and creating nothing."""
    files = stored_run(out, experiment)
    before, listing = snapshot(files=files), sorted(out.rglob("*"))
    with pytest.raises(SystemExit) as e:
        MAINS[experiment](argv + ["--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert option in err, err
    assert_unchanged(before, snapshot(files=files))
    assert sorted(out.rglob("*")) == listing


# ---------------------------------------------------------------------------- bad seeds
BAD_SEEDS = {"empty": [], "negative": ["-1"], "repeated": ["0", "0"], "not an int": ["x"], "one of two negative": ["0", "-3"]}


@pytest.mark.bad_input
@pytest.mark.parametrize("bad", list(BAD_SEEDS))
@pytest.mark.parametrize("experiment", WITH_SEEDS)
def test_bad_seeds_are_rejected_before_anything_is_trained_or_written(experiment, bad, tmp_path, capsys,
                                                                        no_training):
    reject(["--profile", "smoke", "--seeds", *BAD_SEEDS[bad], "--no-progress"], experiment, capsys, "--seeds",
           tmp_path / "run")


@pytest.mark.bad_input
@pytest.mark.parametrize("seeds", [[], [-1], [0, 0], [True]], ids=["empty", "negative", "repeated", "bool"])
@pytest.mark.parametrize("experiment", ["long_range", "continual", "forgetting", "mqar", "bench"])
def test_bad_seeds_of_run_are_a_value_error_naming_them(experiment, seeds, tmp_path, no_training):
    mod = TRAINING[experiment][0]
    files = stored_run(tmp_path, experiment)
    before = snapshot(files=files)
    with pytest.raises(ValueError, match="seeds"):
        mod.run("smoke", "cpu", seeds=seeds, out_dir=tmp_path, progress=False)
    assert_unchanged(before, snapshot(files=files))


# ---------------------------------------------------------------------------- other shared options
BAD_OPTIONS = [
    ("long_range", ["--profile", "huge"], "--profile"),
    ("long_range", ["--device", "gpu"], "--device"),
    ("long_range", ["--device", "cuda:99"], "--device"),
    ("long_range", ["--models"], "--models"),
    ("long_range", ["--models", "gru"], "--models"),
    ("long_range", ["--models", "memnet", "memnet"], "--models"),
    ("long_range", ["--cached-only", "--no-save"], "--cached-only"),
    ("continual", ["--profile", "huge"], "--profile"),
    ("continual", ["--device", "gpu"], "--device"),
    ("continual", ["--models"], "--models"),
    ("continual", ["--models", "gru"], "--models"),
    ("continual", ["--models", "lstm", "lstm"], "--models"),
    ("continual", ["--streams"], "--streams"),
    ("continual", ["--streams", "mnist"], "--streams"),
    ("continual", ["--workers", "0"], "--workers"),
    ("continual", ["--threads", "0"], "--threads"),
    ("forgetting", ["--profile", "huge"], "--profile"),
    ("forgetting", ["--device", "gpu"], "--device"),
    ("forgetting", ["--only"], "--only"),
    ("forgetting", ["--only", "nope"], "--only"),
    ("forgetting", ["--only", "learned", "learned"], "--only"),
    ("forgetting", ["--workers", "0"], "--workers"),
    ("mqar", ["--profile", "huge"], "--profile"),
    ("mqar", ["--device", "gpu"], "--device"),
    ("mqar", ["--models"], "--models"),
    ("mqar", ["--models", "gru"], "--models"),
    ("mqar", ["--settings"], "--settings"),
    ("mqar", ["--settings", "64by4"], "--settings"),
    ("mqar", ["--settings", "1x2"], "--settings"),
    ("mqar", ["--settings", "64x4", "64x4"], "--settings"),
    ("bench", ["--profile", "huge"], "--profile"),
    ("bench", ["--device", "gpu"], "--device"),
    ("bench", ["--parts"], "--parts"),
    ("bench", ["--parts", "everything"], "--parts"),
    ("bench", ["--parts", "read", "read"], "--parts"),
    ("bench", ["--threads", "0"], "--threads"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("experiment, argv, option", BAD_OPTIONS,
                         ids=[f"{e}-{' '.join(a)}" for e, a, _ in BAD_OPTIONS])
def test_bad_options_are_rejected_by_name_before_training(experiment, argv, option, tmp_path, capsys, no_training):
    if "--profile" not in argv:
        argv = ["--profile", "smoke"] + argv
    reject(argv + ["--no-progress"], experiment, capsys, option, tmp_path / "run")


@pytest.mark.bad_input
@pytest.mark.parametrize("experiment, kw, name", [
    ("long_range", {"models": []}, "models"), ("continual", {"models": []}, "models"),
    ("continual", {"streams": []}, "streams"), ("continual", {"device": "gpu"}, "device"),
    ("forgetting", {"only": []}, "only"), ("forgetting", {"only": "learned"}, "only"),
    ("forgetting", {"device": "gpu"}, "device"), ("mqar", {"models": []}, "models"),
    ("mqar", {"settings": []}, "settings"), ("bench", {"parts": ()}, "parts"), ("bench", {"threads": 0}, "threads")])
def test_bad_run_arguments_are_a_value_error_naming_them(experiment, kw, name, tmp_path, no_training):
    mod = TRAINING[experiment][0]
    kw = {"device": "cpu", **kw}
    with pytest.raises(ValueError, match=name):
        mod.run("smoke", out_dir=tmp_path / "run", progress=False, **kw)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- an unwritable output folder
def unwritable(kind: str, tmp_path: Path, request) -> Path:
    """An output folder that cannot be created or written: an existing file, a path under a file,
    or a folder inside a read-only one (for root, which writes anywhere, a folder of /proc)."""
    if kind == "existing file":
        (tmp_path / "taken").write_text("a file")
        return tmp_path / "taken"
    if kind == "under a file":
        (tmp_path / "taken").write_text("a file")
        return tmp_path / "taken" / "out"
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    request.addfinalizer(lambda: ro.chmod(0o755))
    if os.access(ro, os.W_OK):  # root ignores the mode bits
        if not Path("/proc/self").is_dir():
            pytest.skip("no read-only folder to try as root")
        return Path("/proc/self/memnet-out")
    return ro / "out"


UNWRITABLE = ("existing file", "under a file", "read-only folder")


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", UNWRITABLE)
@pytest.mark.parametrize("experiment", list(MAINS))
def test_an_unwritable_out_is_rejected_before_training(experiment, kind, tmp_path, capsys, request, no_training):
    out = unwritable(kind, tmp_path, request)
    before = snapshot(files=[tmp_path / "taken"])
    with pytest.raises(SystemExit) as e:
        MAINS[experiment](["--profile", "smoke", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(out) in err, err
    assert_unchanged(before, snapshot(files=[tmp_path / "taken"]))


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", UNWRITABLE)
@pytest.mark.parametrize("experiment", list(MAINS))
def test_an_unwritable_out_dir_of_run_fails_before_training(experiment, kind, tmp_path, request, no_training):
    out = unwritable(kind, tmp_path, request)
    with pytest.raises(ValueError, match="out_dir"):
        TRAINING[experiment][0].run("smoke", "cpu", out_dir=out, progress=False)


def test_a_writable_out_is_created_and_left_without_a_probe(tmp_path):
    out = common.writable_folder(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


# ---------------------------------------------------------------------------- atomic writing
def _fail(*args, **kw):
    raise OSError(28, "No space left on device")


@pytest.mark.bad_input
@pytest.mark.parametrize("where", ["fsync", "replace", "serialise"])
def test_write_json_leaves_the_old_file_and_no_temporary_on_a_failure(where, tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    common.write_json(path, {"runs": [1, 2, 3]})
    before = snapshot(files=[path])
    obj: object = {"runs": []}
    if where == "serialise":
        obj = {"runs": [object()]}
    else:
        monkeypatch.setattr(common.os, where, _fail)
    with pytest.raises((OSError, TypeError)):
        common.write_json(path, obj)
    monkeypatch.undo()
    assert_unchanged(before, snapshot(files=[path]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"], "no temporary file is left"


def test_write_json_replaces_in_place_keeping_the_mode(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")
    path.chmod(0o640)
    seen = []
    replace = os.replace
    monkeypatch.setattr(common.os, "replace", lambda a, b: (seen.append((Path(a), Path(b))), replace(a, b)))
    common.write_json(path, {"runs": [1]})
    assert json.loads(path.read_text()) == {"runs": [1]} and (path.stat().st_mode & 0o777) == 0o640
    (src, dst), = seen
    assert src.parent == dst.parent == tmp_path and dst == path, "the temporary file is in the same folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# ---------------------------------------------------------------------------- never replace a more complete result
def fake_forgetting(p, task, seed, name, over, device, threads=None):
    return {"config": name, "seed": seed}


def fake_continual(p, sname, seed, m, config, device, amp, progress, threads=None):
    return [{"model": m, "seed": seed}], None


def fake_long_range(name, lr, seed, p, device, trace_path, progress, checkpoint=None):
    if trace_path is not None and name == "memnet":
        torch.save({"seed": seed}, trace_path)
    return {"model": name, "lr": lr, "seed": seed, "validation": 0.5, "train_s": 0.0, "params": 1}


def fake_mqar(name, cfg, task, p, lr, seed, dev, T, P, progress):
    return {"model": name, "lr": lr, "seed": seed, "T": T, "pairs": P, "train_s": 0.0, "steps": 1,
            "validation": {"all": 0.5}, "test": {"all": 0.5, "beyond": 0.5}}


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(FX, "_train_one", fake_forgetting)
    monkeypatch.setattr(C, "_run_job", fake_continual)
    monkeypatch.setattr(LR, "train_and_test", fake_long_range)
    monkeypatch.setattr(LR, "throughput", lambda names, p, dev: {})
    monkeypatch.setattr(MQ, "train_and_score", fake_mqar)


def _run(experiment: str, out: Path, **kw) -> dict:
    return TRAINING[experiment][0].run("smoke", "cpu", out_dir=out, progress=False, **kw)


# (experiment, the complete call, a call whose result lacks some of its runs)
SUBSETS = [
    ("forgetting", {"only": ["learned", "none"]}, {"only": ["learned"]}),
    ("forgetting", {"only": ["learned"], "seeds": [0, 1]}, {"only": ["learned"], "seeds": [1]}),
    ("continual", {"streams": ["shift"], "models": ["windowed", "lstm"]}, {"streams": ["shift"], "models": ["lstm"]}),
    ("continual", {"streams": ["shift", "digits"], "models": ["lstm"]}, {"streams": ["digits"], "models": ["lstm"]}),
    ("long_range", {"models": ["memnet", "lstm"]}, {"models": ["lstm"]}),
    ("long_range", {"models": ["memnet"], "seeds": [0, 1]}, {"models": ["memnet"], "seeds": [0]}),
    ("mqar", {"models": ["memnet", "full"]}, {"models": ["full"]}),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("experiment, complete, subset", SUBSETS,
                         ids=[f"{e}-{sorted(s.items())}" for e, _, s in SUBSETS])
def test_a_partial_result_never_replaces_a_more_complete_one(experiment, complete, subset, tmp_path, fake_training):
    full = _run(experiment, tmp_path, **complete)
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    assert tmp_path / "results.json" in files
    before = snapshot(files=files)
    part = _run(experiment, tmp_path, **subset)
    assert_unchanged(before, snapshot(files=files))
    stored = json.loads((tmp_path / common.PARTIAL / "results.json").read_text())
    assert stored["partial_of"]["n_lacking"] > 0 and stored["partial_of"]["results"] == str(tmp_path / "results.json")
    assert json.loads(json.dumps(part)) == stored
    # the complete call again replaces it (and leaves the partial result where it is)
    again = _run(experiment, tmp_path, **complete)
    assert "partial_of" not in again and "partial_of" not in json.loads((tmp_path / "results.json").read_text())
    assert len(keys_of(experiment, again)) == len(keys_of(experiment, full))


def keys_of(experiment: str, result: dict) -> list:
    return TRAINING[experiment][0].run_keys(result)


@pytest.mark.bad_input
@pytest.mark.parametrize("stored", ["truncated", "other profile", "other experiment"])
def test_a_stored_result_that_cannot_be_compared_is_not_replaced(stored, tmp_path, fake_training):
    path = tmp_path / "results.json"
    if stored == "truncated":
        path.write_text('{"experiment": "forgetting", "runs": [')
    else:
        path.write_text(json.dumps({"experiment": "forgetting" if stored == "other profile" else "mqar",
                                    "profile": "laptop" if stored == "other profile" else "smoke",
                                    "runs": [{"ablation": "learned", "seed": 0}]}))
    before = snapshot(files=[path])
    _run("forgetting", tmp_path, only=["learned"])
    assert_unchanged(before, snapshot(files=[path]))
    assert (tmp_path / common.PARTIAL / "results.json").is_file()


@pytest.mark.bad_input
@pytest.mark.parametrize("missing", ["every cached run", "one cached run"])
def test_cached_only_never_replaces_a_more_complete_result(missing, tmp_path, fake_training):
    _run("long_range", tmp_path, models=["memnet", "lstm"])
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    before = snapshot(files=files)
    cached = sorted((tmp_path / "runs").glob("*.json"))
    for f in cached if missing == "every cached run" else cached[:1]:
        f.unlink()
    res = _run("long_range", tmp_path, models=["memnet", "lstm"], cached_only=True)
    assert res["missing"] and (not res["runs"] if missing == "every cached run" else res["runs"])
    assert_unchanged(before, snapshot(files=files))
    assert json.loads((tmp_path / common.PARTIAL / "results.json").read_text())["missing"] == res["missing"]


def test_cached_only_writes_a_partial_result_where_none_is_stored(tmp_path, fake_training):
    _run("long_range", tmp_path / "a", models=["memnet", "lstm"])
    (tmp_path / "a" / "results.json").unlink()
    next((tmp_path / "a" / "runs").glob("lstm_*.json")).unlink()
    res = _run("long_range", tmp_path / "a", models=["memnet", "lstm"], cached_only=True)
    stored = json.loads((tmp_path / "a" / "results.json").read_text())
    assert stored["missing"] == res["missing"] == ["lstm: learning-rate sweep incomplete"]
    assert "partial_of" not in stored and not (tmp_path / "a" / common.PARTIAL).exists()
    # and assembling again with the run back replaces it: the new result holds every stored run
    _run("long_range", tmp_path / "a", models=["memnet", "lstm"])
    assert not json.loads((tmp_path / "a" / "results.json").read_text())["missing"]


def test_the_command_line_says_where_a_partial_result_went(tmp_path, fake_training, capsys, monkeypatch):
    monkeypatch.setattr(FX, "summary_table", lambda result: "table")  # the fake runs have no lifetimes to show
    monkeypatch.setattr(FX, "summarize", lambda result: [])
    _run("forgetting", tmp_path, only=["learned", "none"])
    FX.main(["--profile", "smoke", "--device", "cpu", "--only", "none", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert f"stored in {tmp_path / common.PARTIAL}" in out.out and "holds 1 run(s)" in out.err


def test_bench_never_replaces_another_profiles_result(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "bench", "profile": "laptop"}))
    result = {"experiment": "bench", "profile": "smoke"}
    assert common.result_folder(tmp_path, result, B.run_keys) == tmp_path / common.PARTIAL
    assert common.result_folder(tmp_path, {"experiment": "bench", "profile": "laptop"}, B.run_keys) == tmp_path


# ---------------------------------------------------------------------------- workers end with their parent
POOL_SCRIPT = '''
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp

from memnet.experiments import common


def work(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(300)  # a long training job


def polling_only(parent_pid):
    sys.platform = "no-prctl"  # this worker only: the portable fallback alone
    common.exit_with_parent(parent_pid, 0.2)


if __name__ == "__main__":
    if sys.argv[2] == "pool":
        pool = common.worker_pool(2)
    else:
        pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=polling_only,
                                   initargs=(os.getpid(),))
    futures = [pool.submit(work, f"{sys.argv[1]}.{i}") for i in range(2)]
    time.sleep(600)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet) has ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("how", ["pool", "polling"])
def test_workers_end_when_their_parent_is_killed(how, tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "pid"), how], cwd=REPO, env=env)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = [int(p.read_text()) for p in tmp_path.glob("pid.[0-9]")]
            assert parent.poll() is None, "the script ended early"
            time.sleep(0.1)
        assert len(pids) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "a worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in pids:  # the test's own workers, should they remain
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("experiment", ["forgetting", "continual"])
def test_experiments_run_their_jobs_in_the_pool_whose_workers_end_with_them(experiment, monkeypatch, tmp_path,
                                                                            fake_training):
    sizes = []

    def pool(n: int):
        sizes.append(n)
        return ThreadPoolExecutor(n)
    mod = TRAINING[experiment][0]
    monkeypatch.setattr(mod, "worker_pool", pool)
    kw = {"only": ["learned", "none"]} if experiment == "forgetting" else {"streams": ["shift"],
                                                                        "models": ["lstm", "windowed"]}
    _run(experiment, tmp_path, workers=2, **kw)
    assert sizes == [2]
