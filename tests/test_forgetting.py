"""Experiment 3, learned forgetting on ReuseStream (memnet.experiments.forgetting): the smoke run end to
end, the choice of the fixed decay, the claims on hand-made results, and argument checks."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from memnet.experiments import forgetting as fx
from memnet.experiments.common import Verdict
from memnet.lifetimes import ItemLifetimes
from memnet.tasks.reuse import REUSE_TYPES

SMOKE = fx.PROFILES["smoke"]
SEEDS = [0, 1]  # seed 1 is not among the smoke profile's select_seeds: the chosen fixed rate is trained for it
FIXED = [fx.fixed_name(x) for x in SMOKE.fixed_logits]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run for the whole module (about 2 s), stored under a temporary folder."""
    out = tmp_path_factory.mktemp("forgetting")
    res = fx.run("smoke", "cpu", seeds=SEEDS, out_dir=out, progress=False)
    return out, res


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True)  # NaN-safe comparison of JSON-ready results


# ---------------------------------------------------------------------------- the smoke run
def test_smoke_run_result(smoke):
    out, res = smoke
    assert set(res) == {"experiment", "profile", "profile_settings", "config", "task", "chance", "item_types",
                        "configurations", "fixed_choice", "fixed_selected_on", "pressure", "num_segments",
                        "ceilings", "runs", "provenance"}
    assert res["fixed_selected_on"] == [0]
    assert res["experiment"] == "forgetting" and res["profile"] == "smoke"
    assert res["profile_settings"] == dataclasses.asdict(SMOKE)
    conf = fx.configurations(SMOKE)
    assert list(conf) == ["none", *FIXED, "learned", "evidence", "evidence_faded"]
    assert res["configurations"] == {n: c for n, c in conf.items() if n not in fx.NAMED_ONLY}
    assert conf["none"]["allocation"] == "faded" and conf["evidence_faded"]["allocation"] == "faded"
    assert all(conf[n]["allocation"] == SMOKE.allocation == "weakest" for n in (*FIXED, "learned", "evidence"))
    assert res["fixed_choice"] in FIXED
    assert res["pressure"] > 1 and res["num_segments"] == SMOKE.n_windows and res["item_types"] == list(REUSE_TYPES)
    assert res["provenance"]["seed"] == SEEDS and res["provenance"]["workers"] == 1
    # every configuration for every seed; the candidate fixed rates on the select seeds, the chosen one elsewhere,
    # the faded-first ablation on the ablation seeds
    expect = [(n, s) for s in SEEDS for n in conf
              if (n not in FIXED or s in SMOKE.select_seeds or n == res["fixed_choice"]) and n not in fx.NAMED_ONLY]
    assert [(r["config"], r["seed"]) for r in res["runs"]] == expect
    assert {s for n, s in expect if n == res["fixed_choice"]} == set(SEEDS)
    assert res["fixed_choice"] == fx.choose_fixed(res["runs"], SMOKE)
    assert set(res["ceilings"]) == {str(s) for s in SEEDS}
    stored = json.loads((out / "results.json").read_text())
    assert canonical(stored) == canonical(json.loads(json.dumps(res)))
    assert not (out / "partial").exists()


def test_smoke_runs_measure_the_test_draw(smoke):
    """Each run's lifetimes cover every item of its seed's test draw; its probes and recall counts add up;
    without decay (and with one fixed rate for every slot) the share of recalls held is the age-order
    replay's ceiling."""
    _, res = smoke
    task = fx.make_task(SMOKE)
    for r in res["runs"]:
        test = task.sample(SMOKE.test_batch, seed=fx.draws(r["seed"])["test"])
        life = fx.lifetimes_of(r)
        assert isinstance(life, ItemLifetimes) and len(life) == SMOKE.test_batch * task.n_items
        np.testing.assert_array_equal(life.type, test.item_type.numpy().ravel())
        np.testing.assert_array_equal(life.window, (test.item_pos.numpy() // SMOKE.segment_len).ravel())
        assert (life.duration > 0).all()  # every item is written
        assert (life.window + life.duration <= SMOKE.n_windows).all()
        n_recalls = int((test.recall_pos >= 0).sum())
        (held, held_ok), (gone, gone_ok) = r["recall_if_held"]["held"], r["recall_if_held"]["gone"]
        assert held + gone == n_recalls and 0 <= held_ok <= held and 0 <= gone_ok <= gone
        assert r["held_recall"] == pytest.approx(held / n_recalls)
        assert r["test"]["recall"] == pytest.approx((held_ok + gone_ok) / n_recalls)
        for kind in ("cue", "recall"):
            assert 0.0 <= r["val"][kind] <= 1.0 and 0.0 <= r["test"][kind] <= 1.0
        assert set(r["probes"]) <= set(REUSE_TYPES) and r["probes"]
        for per_age in r["probes"].values():
            assert set(per_age) == {str(a) for a in SMOKE.probe_ages}
            for c in per_age.values():
                assert 0 <= c["held_correct"] <= min(c["held"], c["correct"]) and max(c["held"], c["correct"]) <= c["n"]
        if r["config"] == "none" or r["config"] in FIXED:
            assert r["held_recall"] == pytest.approx(res["ceilings"][str(r["seed"])]["lru"]["recall"], abs=1e-6)
    assert len({r["weights"]["decay_logit"] for r in res["runs"] if r["config"] in FIXED}) == len(FIXED)


def test_smoke_table_and_claims(smoke):
    _, res = smoke
    table = fx.summary_table(res)
    assert "nan" not in table.lower() and "inf" not in table.lower()
    for label in ("no decay", f"fixed decay, logit {res['fixed_choice'].split('@')[1]}", "learned decay",
                  "evidence decay", "lru", "distractors_first"):
        assert label in table
    rows = fx.config_rows(res)
    assert [r["config"] for r in rows] == ["none", "fixed", "learned", "evidence"]
    assert all(r["seeds"] == SEEDS for r in rows)
    verdicts = fx.summarize(res)
    assert len(verdicts) == 3 and all(isinstance(v, Verdict) for v in verdicts)
    assert [v.threshold for v in verdicts] == [fx.MARGIN, fx.RATIO, 1.0]
    assert all(isinstance(v.passed, bool) and np.isfinite(v.measured) for v in verdicts)
    assert fx.ceiling(res, "distractors_first") == [res["ceilings"][str(s)]["distractors_first"]["recall"]
                                                    for s in SEEDS]


def test_held_at_recalls_by_hand():
    """Windows of 4 tokens; item 0 is written in window 0 and replaced by the write of window 3 (duration 3),
    item 1 is written in window 1 and never replaced (censored after 5 windows), item 2 is never written.
    Reads of window 3 still see item 0; reads of window 4 no longer do."""
    life = ItemLifetimes(row=np.repeat([0, 1], 3), item=np.tile(np.arange(3), 2), type=np.zeros(6, dtype=np.int64),
                         window=np.array([0, 1, 1] * 2), duration=np.array([3, 5, 0] * 2),
                         observed=np.array([True, False, True] * 2))
    batch = SimpleNamespace(recall_pos=torch.tensor([[13, 23, 10], [17, -1, 22]]))  # windows 3 5 2 and 4 - 5
    held = fx.held_at_recalls(life, batch, 4)
    assert held.tolist() == [[True, True, False], [False, False, False]]


# ---------------------------------------------------------------------------- choosing the fixed decay
def val_run(config: str, seed: int, recall: float) -> dict:
    return {"config": config, "seed": seed, "val": {"cue": 0.0, "recall": recall}}


def test_choose_fixed():
    p = dataclasses.replace(SMOKE, fixed_logits=(5.0, 2.0, 0.0), select_seeds=(0, 1))
    runs = [val_run("fixed@5", 0, 0.25), val_run("fixed@5", 1, 0.75),  # mean 0.5
            val_run("fixed@2", 0, 0.5), val_run("fixed@2", 1, 0.625),  # mean 0.5625: the best
            val_run("fixed@0", 0, 0.5), val_run("fixed@0", 1, 0.5),
            val_run("fixed@0", 2, 1.0),  # not a select seed: left out
            val_run("none", 0, 1.0), val_run("evidence", 1, 1.0)]  # not fixed rates
    assert fx.choose_fixed(runs, p) == "fixed@2"
    runs[3] = val_run("fixed@2", 1, 0.5)  # now all three tie at 0.5: the first of fixed_logits
    assert fx.choose_fixed(runs, p) == "fixed@5"
    runs[0] = val_run("fixed@5", 0, 0.0)  # fixed@2 and fixed@0 tie: the first of them
    assert fx.choose_fixed(runs, p) == "fixed@2"
    assert fx.choose_fixed(runs, dataclasses.replace(p, fixed_logits=(0.0, 2.0, 5.0))) == "fixed@0"
    runs.append(val_run("fixed@0", 1, 0.75))  # a better draw of seed 1 (two runs of a seed are averaged)
    assert fx.choose_fixed(runs, p) == "fixed@0"


# ---------------------------------------------------------------------------- which jobs a run trains
@pytest.fixture
def fake_training(monkeypatch):
    """_train_one replaced by a stub that records its jobs (the measurements are not trained); fixed@0
    gets the best validation recall."""
    jobs = []

    def stub(p, task, seed, name, over, device, threads=None):
        jobs.append((name, seed))
        return {"config": name, "seed": seed, "overrides": over, "val": {"recall": 0.9 if name == "fixed@0" else 0.1}}

    monkeypatch.setattr(fx, "_train_one", stub)
    return jobs


def test_run_chooses_then_trains_the_choice(fake_training):
    res = fx.run("smoke", "cpu", seeds=[2, 0, 1], save=False, progress=False)
    assert res["fixed_choice"] == "fixed@0"
    candidates = [("none", 2), ("learned", 2), ("evidence", 2), ("none", 0), ("fixed@5", 0), ("fixed@0", 0),
                  ("learned", 0), ("evidence", 0), ("none", 1), ("learned", 1), ("evidence", 1)]
    assert fake_training == candidates + [("fixed@0", 2), ("fixed@0", 1)]  # the ablation: seed 0 only
    # stored by seed, then in the order of the configurations
    assert [(r["config"], r["seed"]) for r in res["runs"]] == [
        (n, s) for s in (0, 1, 2) for n in ("none", "fixed@5", "fixed@0", "learned", "evidence") if n != "fixed@5" or s == 0]
    assert [r["seed"] for r in fx.runs_of(res, "fixed")] == [0, 1, 2]
    assert all(r["config"] == "fixed@0" for r in fx.runs_of(res, "fixed"))


def test_run_without_a_selection_seed_chooses_on_the_first_seed_asked_for(fake_training):
    res = fx.run("smoke", "cpu", seeds=[2, 1], save=False, progress=False)
    assert res["fixed_selected_on"] == [2] and res["fixed_choice"] == "fixed@0"
    assert ("fixed@5", 2) in fake_training and ("fixed@5", 1) not in fake_training
    assert fake_training[-1] == ("fixed@0", 1)
    assert [r["seed"] for r in fx.runs_of(res, "fixed")] == [1, 2]


def test_choose_fixed_ignores_rates_without_runs_and_refuses_when_none_has_one():
    p = dataclasses.replace(SMOKE, fixed_logits=(5.0, 0.0), select_seeds=(0,))
    assert fx.choose_fixed([val_run("fixed@0", 0, 0.1)], p) == "fixed@0"  # fixed@5 has no run: it cannot win
    with pytest.raises(ValueError, match="runs must hold a fixed-decay run"):
        fx.choose_fixed([val_run("fixed@0", 1, 0.9), val_run("none", 0, 0.9)], p)


def test_a_profile_that_names_its_configurations_trains_only_those(fake_training):
    res = fx.run("sweep", "cpu", seeds=[0, 1], save=False, progress=False, workers=1)
    names = ["evidence@0.1", "evidence@1", "evidence_faded"]
    assert sorted(fake_training) == sorted((n, s) for n in names for s in (0, 1))
    assert list(res["configurations"]) == names and res["fixed_choice"] is None
    assert all(c["decay_mode"] == "evidence" for c in res["configurations"].values())
    assert res["configurations"]["evidence_faded"]["allocation"] == "faded"


def test_merge_runs_reads_two_runs_of_the_same_settings_as_one(smoke, tmp_path):
    _, main = smoke
    extra = fx.run("smoke", "cpu", seeds=[0], out_dir=tmp_path, progress=False, only=["evidence_faded"])
    merged = fx.merge_runs(main, extra)
    assert [r["config"] for r in fx.runs_of(merged, "evidence_faded")] == ["evidence_faded"]
    assert len(merged["runs"]) == len(main["runs"]) + 1 and merged["merged"]["profile"] == "smoke"
    assert fx.runs_of(merged, "fixed") == fx.runs_of(main, "fixed") and "evidence_faded" in fx.shown(merged)
    with pytest.raises(ValueError, match="must not repeat runs"):
        fx.merge_runs(main, main)
    other = {**extra, "profile_settings": {**extra["profile_settings"], "steps": 1}}
    with pytest.raises(ValueError, match=r"differing in \['steps'\]"):
        fx.merge_runs(main, other)


@pytest.mark.parametrize("only", [["none", "fixed@5"], ["evidence"], ["fixed@0", "fixed@5", "learned"]])
def test_only_trains_only_those(fake_training, only):
    res = fx.run("smoke", "cpu", seeds=[0, 1], save=False, progress=False, only=only)
    conf = list(fx.configurations(SMOKE))
    wanted = [n for n in conf if n in only]
    assert sorted(fake_training) == sorted((n, s) for n in wanted for s in (0, 1))  # a fixed rate named: no choice
    assert list(res["configurations"]) == wanted and res["fixed_choice"] is None
    assert {r["config"] for r in res["runs"]} == set(only)
    assert fx.runs_of(res, "fixed") == []


def test_only_really_trains_only_those(tmp_path):
    res = fx.run("smoke", "cpu", seeds=[1], out_dir=tmp_path, progress=False, only=["none"])
    assert [(r["config"], r["seed"]) for r in res["runs"]] == [("none", 1)]
    assert json.loads((tmp_path / "results.json").read_text())["configurations"] == {
        "none": {"decay_mode": "none", "allocation": "faded"}}


@pytest.mark.parametrize("kw, match", [
    (dict(profile="huge"), "profile must be one of"),
    (dict(only="none"), "only must be a list"),
    (dict(only=[]), "only must name at least one"),
    (dict(only=["nope"]), "only must be among"),
    (dict(only=["fixed@2"]), "only must be among"),  # not a rate of the smoke profile
    (dict(only=["none", "none"]), "only must be distinct"),
    (dict(workers=0), "workers must be an int >= 1"),
    (dict(workers=True), "workers must be an int >= 1"),
    (dict(workers=1.5), "workers must be an int >= 1"),
    (dict(workers="2"), "workers must be an int >= 1"),
    (dict(seeds=[-1]), "seeds must be ints >= 0"),
    (dict(seeds=[0, 0]), "seeds must be distinct"),
])
def test_bad_arguments_leave_the_stored_run(smoke, kw, match):
    out, _ = smoke
    stored = out / "results.json"
    before, stamp = stored.read_bytes(), stored.stat().st_mtime_ns
    args = {"profile": "smoke", "device": "cpu", "out_dir": out, "progress": False, **kw}
    with pytest.raises(ValueError, match=match):
        fx.run(**args)
    assert stored.read_bytes() == before and stored.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_main(smoke, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        fx.main(["--profile", "smoke", "--only", "nope", "--no-save"])
    assert e.value.code == 2 and "--only" in capsys.readouterr().err
    _, res = smoke
    got = {}
    monkeypatch.setattr(fx, "run", lambda *a: got.setdefault("args", a) and res)
    fx.main(["--profile", "smoke", "--device", "cpu", "--seeds", "0", "1", "--only", "none", "evidence",
             "--workers", "1", "--no-save", "--no-progress"])
    printed = capsys.readouterr().out
    assert got["args"] == ("smoke", "cpu", [0, 1], None, False, False, "auto", ["none", "evidence"], 1)
    assert fx.summary_table(res) in printed
    assert sum(line.startswith(("holds: ", "MISSES: ")) for line in printed.splitlines()) == 3


# ---------------------------------------------------------------------------- the claims on hand-made results
def lifetimes(rows: list[list[tuple[int, int, bool]]]) -> dict:
    """A stored lifetimes record from rows of (type, duration, observed) items."""
    flat = [(r, i, t, i, d, int(o)) for r, row in enumerate(rows) for i, (t, d, o) in enumerate(row)]
    return dict(zip(("row", "item", "type", "window", "duration", "observed"), map(list, zip(*flat))))


U, D = 0, 1  # type codes: useful, distractor
LONG = [[(U, 9, False), (U, 9, False), (D, 1, True), (D, 1, True)]] * 3  # useful 8 windows, distractors 1: ratio 8
ALIKE = [[(U, 3, True), (U, 9, False), (D, 3, True), (D, 9, False)]] * 3  # ratio 1
SHORT = [[(U, 4, True), (D, 1, True)]] * 3  # ratio 4


def record(config: str, seed: int, recall: float, rows) -> dict:
    return {"config": config, "seed": seed, "test": {"cue": 1.0, "recall": recall}, "held_recall": 0.5,
            "lifetimes": lifetimes(rows),
            "probes": {"useful": {"1": {"n": 4, "correct": 3, "held": 3, "held_correct": 3},
                                  "2": {"n": 2, "correct": 0, "held": 0, "held_correct": 0}}}}


# replayed lifetimes as stored (counts per duration 0..8): useful items held 8 windows (censored at the
# horizon), distractors let go after 2: ratio 4
REPLAYED = {"useful": {"deaths": [0] * 9, "censored": [0] * 8 + [3]},
            "distractor": {"deaths": [0, 0, 3] + [0] * 6, "censored": [0] * 9}}


def hand_result(runs: list[dict]) -> dict:
    return {"profile_settings": {"horizon": 8, "n_boot": 200, "num_slots": 4}, "fixed_choice": "fixed@2",
            "configurations": {"none": {}, "fixed@2": {}, "learned": {}, "evidence": {}},
            "ceilings": {s: {pol: {"cue": 1.0, "recall": 0.25 * int(s), "lifetimes": REPLAYED}
                             for pol in fx.POLICIES} for s in ("10", "2")},
            "runs": runs}


def test_summarize_holds():
    res = hand_result([record("fixed@2", 0, 0.5, ALIKE), record("evidence", 0, 0.625, LONG),
                       record("fixed@2", 1, 0.25, ALIKE), record("evidence", 1, 0.5, LONG),
                       record("none", 0, 0.25, ALIKE), record("none", 1, 0.25, ALIKE),
                       record("fixed@5", 0, 0.0, SHORT)])  # a candidate not chosen: never compared
    v = fx.summarize(res)
    assert [x.passed for x in v] == [True, True, True]
    assert v[0].measured == pytest.approx(0.125) and "fixed@2" in v[0].claim and "+12.5, +25.0" in v[0].detail
    assert v[1].measured == pytest.approx(8.0) and "[8.00, 8.00]" in v[1].detail
    assert v[2].measured == pytest.approx(1.0)
    rows = fx.config_rows(res)
    assert [r["config"] for r in rows] == ["none", "fixed", "evidence"]
    ev = rows[2]
    assert ev["recall"] == [0.625, 0.5] and ev["rmst_useful"] == pytest.approx(8.0) and ev["rmst_distractor"] == 1.0
    assert rows[1]["seeds"] == [0, 1] and rows[1]["recall"] == [0.5, 0.25]
    table = fx.summary_table(res)
    assert "fixed decay, logit 2" in table and "8.00 [8.00, 8.00]" in table
    assert fx.ceiling(res, "lru") == [0.5, 2.5]  # seeds in numeric order: 2, then 10


def test_summarize_misses():
    res = hand_result([record("fixed@2", 0, 0.5, ALIKE), record("evidence", 0, 0.75, SHORT),
                       record("fixed@2", 1, 0.5, ALIKE), record("evidence", 1, 0.53, SHORT),  # +3 points in seed 1
                       record("none", 0, 0.25, LONG), record("none", 1, 0.25, ALIKE)])
    v = fx.summarize(res)
    assert [x.passed for x in v] == [False, False, False]
    assert v[0].measured == pytest.approx(0.03)
    assert v[1].measured == pytest.approx(4.0)  # a ratio under 5
    # no decay: pooled useful 0.5 * 8 + 0.5 * (3 + 5 * 0.5) = 6.75 windows, distractors 0.5 * 1 + 0.5 * 5.5 = 3.25
    assert v[2].measured == pytest.approx(6.75 / 3.25)
    assert all("MISSES" in x.line() for x in v)
    # a ratio of 5 or more is not enough when the bootstrap interval reaches 1: pooled, useful items live
    # 1 + 7 * 2/3 windows and distractors 1; a replicate that draws seed 1 twice gives 1, seed 0 twice 8
    brief = [[(U, 1, True), (D, 1, True)]] * 3
    res = hand_result([record("evidence", 0, 0.5, LONG), record("evidence", 1, 0.5, brief)])
    (v,) = fx.summarize(res)  # no fixed decay and no run without decay: one claim
    assert v.measured == pytest.approx(1 + 7 * 2 / 3) and v.measured >= fx.RATIO
    assert not v.passed and "[1.00, 8.00]" in v.detail


def test_probe_accuracy_and_runs_of():
    res = hand_result([record("evidence", 1, 0.5, LONG), record("evidence", 0, 0.5, LONG),
                       record("none", 0, 0.5, ALIKE)])
    assert [r["seed"] for r in fx.runs_of(res, "evidence")] == [0, 1]
    assert fx.runs_of(res, "fixed") == []  # fixed@2 chosen but not run
    assert fx.runs_of({**res, "fixed_choice": None}, "fixed") == []
    assert fx.probe_accuracy(res, "evidence", "useful") == {1: (8, 6), 2: (4, 0)}
    assert fx.probe_accuracy(res, "evidence", "useful", "held") == {1: (6, 6), 2: (0, 0)}
    assert fx.probe_accuracy(res, "evidence", "useful", "gone") == {1: (2, 0), 2: (4, 0)}
    assert fx.probe_accuracy(res, "evidence", "distractor") == {}
    assert fx.probe_accuracy(res, "none", "useful") == {1: (4, 3), 2: (2, 0)}
