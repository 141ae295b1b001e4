"""Experiment 1 (memnet.experiments.long_range): the smoke run end to end, the per-run cache, the
learning rate chosen on validation only, the task's layout, and the verdicts."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from memnet.experiments import long_range as lr_exp
from memnet.experiments.common import Verdict, format_table, mean_ci
from memnet.metrics import IGNORE_INDEX


def test_smoke_profile_runs_every_model_and_reports(tmp_path):
    res = lr_exp.run("smoke", device="cpu", models=list(lr_exp.MODEL_NAMES), out_dir=tmp_path, progress=False)
    p = lr_exp.PROFILES["smoke"]
    assert [r["model"] for r in res["runs"]] == list(lr_exp.MODEL_NAMES)
    for r in res["runs"]:
        assert r["steps"] == p.steps and r["params"] > 0 and r["state_bytes"] > 0 and r["tokens_per_s"] > 0
        assert set(r["distance"]) == {str(m) for m in p.distances}
        assert set(r["capacity"]) == {f"{P}@{m}" for P in p.capacity_pairs for m in p.capacity_delays}
        for s in list(r["distance"].values()) + list(r["capacity"].values()):
            assert s["n_beyond"] > 0 and 0.0 <= s["beyond"] <= 1.0
        assert 0.0 <= r["validation"] <= 1.0 and 0.0 <= r["test_train_distribution"] <= 1.0
        assert (tmp_path / "runs" / f"{r['model']}_lr{r['lr']:g}_seed0.json").is_file()
    assert set(res["throughput_tokens_per_s"]) == set(lr_exp.MODEL_NAMES)
    assert all(v > 0 for v in res["throughput_tokens_per_s"].values())
    mem = res["runs"][0]
    assert set(mem["memory"]) == {str(p.eval_pairs), str(max(p.capacity_pairs))}
    assert (tmp_path / "results.json").is_file() and (tmp_path / "trace_seed0.pt").is_file()
    stored = torch.load(tmp_path / "trace_seed0.pt", weights_only=True)
    assert stored["tokens"].shape[0] == 4 and stored["n_pairs"] == max(p.capacity_pairs)
    table = lr_exp.summary_table(res)
    for label in lr_exp.LABELS.values():
        assert label in table
    verdicts = lr_exp.summarize(res)
    assert verdicts and all(isinstance(v, Verdict) for v in verdicts)


def test_cached_runs_are_reused_not_retrained(tmp_path, monkeypatch):
    first = lr_exp.run("smoke", device="cpu", models=["windowed"], out_dir=tmp_path, progress=False)

    def no_training(*a, **k):
        raise AssertionError("a cached run was trained again")
    monkeypatch.setattr(lr_exp, "train_and_test", no_training)
    again = lr_exp.run("smoke", device="cpu", models=["windowed"], out_dir=tmp_path, progress=False)
    assert again["runs"] == first["runs"]
    # assembling from the cache trains nothing and lists what is not there
    part = lr_exp.run("smoke", device="cpu", models=["windowed", "lstm"], seeds=[0, 1], out_dir=tmp_path,
                      progress=False, cached_only=True)
    assert [r["model"] for r in part["runs"]] == ["windowed"]
    assert part["missing"] == ["windowed: seed 1", "lstm: learning-rate sweep incomplete"]
    assert "LSTM" not in lr_exp.summary_table(part)
    with pytest.raises(AssertionError, match="trained again"):
        lr_exp.run("smoke", device="cpu", models=["windowed"], out_dir=tmp_path, progress=False, fresh=True)


def test_workers_train_the_runs_one_process_trains_and_choose_the_same(tmp_path, monkeypatch):
    """Two paths to one result: the protocol on two worker processes (in rounds: the sweep, its
    extension past the edge, the other seeds) and in this process, both on one thread."""
    smoke = lr_exp.PROFILES["smoke"]
    monkeypatch.setitem(lr_exp.PROFILES, "two", replace(smoke, lrs=(3e-4, 1e-3), lrs_more=(1e-2,), seeds=(0, 1)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = lr_exp.run("two", device="cpu", models=["windowed", "lstm"], out_dir=tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    both = lr_exp.run("two", device="cpu", models=["windowed", "lstm"], out_dir=tmp_path / "two", progress=False,
                      workers=2)
    assert both["chosen"] == alone["chosen"] and not both["missing"]
    assert sorted(p.name for p in (tmp_path / "two" / "runs").glob("*.json")) == \
        sorted(p.name for p in (tmp_path / "one" / "runs").glob("*.json"))
    keys = ("model", "lr", "seed", "steps", "validation", "test_train_distribution", "distance", "capacity")
    assert [{k: r[k] for k in keys} for r in both["runs"]] == [{k: r[k] for k in keys} for r in alone["runs"]]
    assert [[c[2] for c in r["curve"]] for r in both["runs"]] == [[c[2] for c in r["curve"]] for r in alone["runs"]]
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        lr_exp.run("two", device="cpu", out_dir=tmp_path / "x", progress=False, workers=0)
    with pytest.raises(ValueError, match="workers > 1 needs save=True"):
        lr_exp.run("two", device="cpu", save=False, progress=False, workers=2)


def fake_record(name, lr, seed, validation, test):
    cell = {"beyond": test, "in_window": test, "n_beyond": 10, "n_in_window": 2, "mean_distance_windows": 1.0}
    return {"model": name, "lr": lr, "seed": seed, "params": 1, "state_bytes": 1, "steps": 1, "train_s": 1.0,
            "tokens_per_s": 1, "curve": [], "validation": validation, "test_train_distribution": test,
            "distance": {"0": cell}, "capacity": {}}


def test_learning_rate_is_chosen_on_validation_and_only_swept_on_sweep_seeds(tmp_path, monkeypatch):
    p = lr_exp.Profile(lrs=(1e-4, 1e-3, 1e-2), sweep_seeds=(0,), seeds=(0, 1), models=("lstm",))
    monkeypatch.setitem(lr_exp.PROFILES, "fake", p)
    calls = []
    # validation best at 1e-3; test best at 1e-2: the choice must follow validation
    val = {1e-4: 0.2, 1e-3: 0.6, 1e-2: 0.5}
    test = {1e-4: 0.1, 1e-3: 0.3, 1e-2: 0.9}

    def fake(name, lr, seed, prof, device, trace_path, progress, checkpoint=None):
        calls.append((lr, seed))
        return fake_record(name, lr, seed, val[lr], test[lr])
    monkeypatch.setattr(lr_exp, "train_and_test", fake)
    res = lr_exp.run("fake", device="cpu", out_dir=tmp_path, progress=False)
    assert res["chosen"]["lstm"]["lr"] == 1e-3
    assert sorted(calls) == [(1e-4, 0), (1e-3, 0), (1e-3, 1), (1e-2, 0)]  # seed 1 trains the chosen lr only
    assert [(r["lr"], r["seed"]) for r in res["runs"]] == [(1e-3, 0), (1e-3, 1)]
    assert json.loads((tmp_path / "results.json").read_text())["chosen"]["lstm"]["validation"]["0.001"] == 0.6


def test_the_sweep_goes_past_its_upper_edge_while_the_best_rate_is_there(tmp_path, monkeypatch):
    """Best at the grid's largest rate: the next of lrs_more is tried, and so on while the best stays
    the largest; the first rate that is no better stops it. With cached_only, a missing extension
    leaves the sweep incomplete, never the edge's choice."""
    p = lr_exp.Profile(lrs=(1e-4, 1e-3), lrs_more=(1e-2, 1e-1, 1.0), sweep_seeds=(0,), seeds=(0,), models=("lstm",))
    monkeypatch.setitem(lr_exp.PROFILES, "fake", p)
    val = {1e-4: 0.1, 1e-3: 0.3, 1e-2: 0.5, 1e-1: 0.4, 1.0: 0.9}  # 1.0 would win: it must not be tried
    calls = []

    def fake(name, lr, seed, prof, device, trace_path, progress, checkpoint=None):
        calls.append(lr)
        checkpoint.write_bytes(b"a training part-way")  # what a real run leaves until its record is kept
        return fake_record(name, lr, seed, val[lr], val[lr])
    monkeypatch.setattr(lr_exp, "train_and_test", fake)
    res = lr_exp.run("fake", device="cpu", out_dir=tmp_path, progress=False)
    assert calls == [1e-4, 1e-3, 1e-2, 1e-1]
    assert not list((tmp_path / "runs").glob("*.ckpt"))  # each removed once its run's record was written
    assert res["chosen"]["lstm"]["lr"] == 1e-2
    assert set(res["chosen"]["lstm"]["validation"]) == {"0.0001", "0.001", "0.01", "0.1"}
    (tmp_path / "runs" / "lstm_lr0.1_seed0.json").unlink()
    again = lr_exp.run("fake", device="cpu", out_dir=tmp_path, progress=False, cached_only=True)
    assert "lstm" not in again["chosen"] and again["missing"] == ["lstm: learning-rate sweep incomplete"]
    fixed = replace(p, lr_of=(("lstm", 1e-3),))  # a fixed rate is never extended
    assert lr_exp.sweep_lrs(fixed, "lstm", lambda lr: [fake_record("lstm", lr, 0, val[lr], 0)]).keys() == {1e-3}


def test_task_layout_puts_queries_after_the_delay_and_local_pairs_in_a_window():
    p = lr_exp.PROFILES["full"]
    L = p.segment_len
    for P, m in ((16, 0), (16, 4), (64, 2), (2, 16)):
        task = lr_exp.make_task(p, P, m)
        b = task.sample(4, 0, split="test")
        assert task.delay == m * L and task.local_pairs == p.local_pairs and task.window == L
        q = (b.targets != IGNORE_INDEX).nonzero().tolist()
        keys = set(b.tokens[:, :2 * P:2].flatten().tolist())
        for row, t in q:
            v = t - int(b.distance[row, t])
            if int(b.tokens[row, t]) in set(b.tokens[row, :2 * P:2].tolist()):
                assert t >= 2 * P + m * L, "a query of the opening pairs comes after the delay"
            else:
                assert v // L == t // L, "a local pair is bound and queried inside one window"
        assert len(q) == 4 * (P + p.local_pairs) and keys
    # training draws keep the queries within train_windows windows of the pairs (4 P tokens for large P)
    for P, d in lr_exp.train_settings(p):
        task = lr_exp.make_task(p, P, d, training=True)
        assert task.seq_len - 2 * P == (p.train_windows * L if P <= 32 else 4 * P)
        assert task.delay == d * L
    assert {d for P, d in lr_exp.train_settings(p) if P == 16} == set(p.train_delays)
    assert {d for P, d in lr_exp.train_settings(p) if P == 64} == {0}
    # evaluation: the queries in the rest of the delay's last window and 2 more (more room for large P)
    assert lr_exp.make_task(p, 16, 64).seq_len == 32 + 64 * L + 2 * L
    assert lr_exp.make_task(p, 8, 0).seq_len == 3 * L
    assert lr_exp.make_task(p, 64, 0).seq_len == 128 + 4 * 64


@pytest.mark.parametrize("profile", sorted(lr_exp.PROFILES))
def test_every_draw_of_every_profile_can_be_made(profile):
    """Each training and evaluation task of a profile is valid (room for its queries and local pairs)."""
    p = lr_exp.PROFILES[profile]
    for P, d in lr_exp.train_settings(p):
        lr_exp.make_task(p, P, d, training=True).sample(1, 0)
    for m in p.distances:
        lr_exp.make_task(p, p.eval_pairs, m).sample(1, 0)
    for P in p.capacity_pairs:
        for m in p.capacity_delays + (max(p.capacity_delays),):
            lr_exp.make_task(p, P, m).sample(1, 0)


def result_with(cells: dict, in_window: dict, full: float = 0.95):
    """A result whose 'distance' cell '64' holds the given accuracy per model."""
    p = lr_exp.Profile(distances=(64,), capacity_pairs=(), eval_pairs=16, num_slots=32)
    runs = []
    for name, acc in cells.items():
        r = fake_record(name, 1e-3, 0, 0.5, full if name == "full" else 0.5)
        r["distance"] = {"64": {"beyond": acc, "in_window": in_window.get(name, 0.0), "n_beyond": 10,
                                "n_in_window": 5, "mean_distance_windows": 64.0}}
        runs.append(r)
    from dataclasses import asdict
    return {"profile_settings": asdict(p), "runs": runs, "chance": 0.01,
            "chosen": {n: {"lr": 1e-3, "validation": {"0.001": 0.5}} for n in cells}}


def test_verdicts_hold_or_miss_as_measured():
    good = lr_exp.summarize(result_with({"memnet": 0.95, "full": 0.2, "windowed": 0.0, "rmt": 0.5},
                                        {"windowed": 0.9, "memnet": 0.9, "rmt": 0.8}))
    assert [v.passed for v in good] == [True, True, True, True, True]
    bad = lr_exp.summarize(result_with({"memnet": 0.6, "full": 0.2, "windowed": 0.0, "rmt": 0.7, "dnc": 0.9},
                                       {"windowed": 0.3, "memnet": 0.5, "rmt": 0.5, "dnc": 0.0}, full=0.5))
    assert [v.passed for v in bad] == [False, False, False, False, False]
    assert "DNC" in bad[2].detail and "RMT" not in bad[2].detail, "DNC is at chance in-window"
    assert "RMT" in bad[-1].detail and bad[-1].measured == pytest.approx(-10.0)
    assert "not compared (untrained): DNC" in bad[-1].detail, "an untrained peer's win does not count"
    assert "MISSES" in bad[0].line() and "holds" in good[0].line()


def test_table_formatting_and_intervals():
    t = format_table(["model", "a"], [["x", "1.0"], ["longer", "22.5"]], "title")
    lines = t.splitlines()
    assert lines[0] == "title" and lines[1].startswith("model ") and lines[-1].endswith("22.5")
    assert len({len(x) for x in lines[1:]}) == 1, "columns are aligned"
    assert mean_ci([0.5], 100) == "50.0" and mean_ci([], 100) == "-"
    assert mean_ci([0.4, 0.6], 100).startswith("50.0 ± ")


def test_bad_arguments_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        lr_exp.run("huge", save=False)
    with pytest.raises(ValueError, match="models"):
        lr_exp.run("smoke", models=["gru"], save=False)
    with pytest.raises(ValueError, match="seeds"):
        lr_exp.run("smoke", seeds=[], save=False)
    with pytest.raises(SystemExit):
        lr_exp.main(["--profile", "smoke", "--seeds", "--out", str(tmp_path)])


def test_non_finite_logits_are_an_error_not_a_score():
    p = lr_exp.PROFILES["smoke"]

    class Broken(torch.nn.Module):
        def forward(self, tokens):
            return type("Out", (), {"logits": torch.full(tokens.shape + (p.vocab_size,), float("nan"))})()
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        lr_exp.score(Broken(), lr_exp.make_task(p, 4), p, "test", 0, torch.device("cpu"))


def test_no_trained_peer_leaves_the_comparison_undecided_not_won():
    """Every other model at chance in-window: the claim 'MemNet at or above every other model' is
    neither won nor lost; it misses, says why, and prints no nan."""
    res = result_with({"memnet": 0.9, "full": 0.2, "windowed": 0.0, "lstm": 0.05, "titans": 0.0},
                      {"windowed": 0.9, "memnet": 0.9, "lstm": 0.0, "titans": 0.0})
    last = lr_exp.summarize(res)[-1]
    assert not last.passed and "undecided" in last.detail
    assert "LSTM" in last.detail and "Titans" in last.detail and "DNC, RMT" in last.detail
    assert "nan" not in last.line() and "not measured" in last.line()
    assert lr_exp.untrained(res) == ["lstm", "titans"]


def test_plateau_exit_is_the_first_logged_loss_below_the_threshold():
    res = result_with({"memnet": 0.9, "lstm": 0.0}, {"memnet": 0.9})
    guess = float(np.log(1 / res["chance"]))  # 4.6
    for r in res["runs"]:
        r["curve"] = ([[50, 1.0, guess], [100, 2.0, 0.81 * guess], [150, 3.0, 0.79 * guess], [200, 4.0, 0.1]]
                      if r["model"] == "memnet" else [[50, 1.0, guess], [100, 2.0, 0.85 * guess]])
    assert lr_exp.plateau_exit(res, "memnet") == [150]
    assert lr_exp.plateau_exit(res, "lstm") == [None]
    table = lr_exp.plateau_table(res)
    assert "never" in table and "150" in table and "MemNet" in table


def test_loss_curves_are_seed_means_over_the_loss_of_guessing_smoothed_over_trailing_logs():
    res = result_with({"memnet": 0.9, "lstm": 0.0}, {"memnet": 0.9})
    guess = float(np.log(1 / res["chance"]))
    res["runs"].append({**res["runs"][0], "seed": 1})
    losses = {0: [1.0, 1.0, 0.5, 0.2], 1: [1.0, 0.8, 0.3, 0.2]}
    for r in res["runs"]:
        ys = losses[r["seed"]] if r["model"] == "memnet" else [1.0, 1.0]
        r["curve"] = [[50 * (i + 1), float(i), y * guess] for i, y in enumerate(ys)]
    curves = lr_exp.loss_curves(res, smooth=2)
    assert curves["memnet"]["x"] == [50, 100, 150, 200] and curves["lstm"]["x"] == [50, 100]
    mean = [1.0, 0.9, 0.4, 0.2]
    assert np.allclose(curves["memnet"]["y"], [mean[0], (mean[0] + mean[1]) / 2, (mean[1] + mean[2]) / 2,
                                               (mean[2] + mean[3]) / 2])
    assert np.allclose(lr_exp.loss_curves(res, smooth=1)["memnet"]["y"], mean)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="smooth"):
            lr_exp.loss_curves(res, smooth=bad)


def test_a_cached_run_made_under_other_settings_is_not_reused(tmp_path):
    """A cached record carries the settings it was made under; other settings are an error naming
    them, the same settings reuse it, and a record without settings (older) is taken as is."""
    from memnet.experiments.common import cached_record

    p = lr_exp.PROFILES["smoke"]
    path = tmp_path / "runs" / "m.json"
    made = []
    rec = cached_record(path, lambda: made.append(1) or {"acc": 0.5}, settings=lr_exp.run_settings(p))
    assert rec["settings"] == lr_exp.run_settings(p) and made == [1]
    assert cached_record(path, lambda: made.append(1) or {}, settings=lr_exp.run_settings(p))["acc"] == 0.5
    assert made == [1], "the same settings reuse the cached run"

    other = lr_exp.run_settings(replace(p, local_pairs=p.local_pairs + 1, steps=p.steps + 1))
    with pytest.raises(ValueError, match="local_pairs, steps"):
        cached_record(path, lambda: {}, settings=other)
    assert json.loads(path.read_text())["acc"] == 0.5, "the cached run is left as it was"
    assert lr_exp.run_settings(replace(p, seeds=(5,), lrs=(1.0,))) == lr_exp.run_settings(p)
    legacy = tmp_path / "runs" / "old.json"
    legacy.write_text(json.dumps({"acc": 0.25}))
    assert cached_record(legacy, lambda: {}, settings=other)["acc"] == 0.25


def test_a_peer_run_from_an_older_adapter_is_not_reused(tmp_path, monkeypatch):
    """A peer's settings carry its adapter's revision: a record made under another revision (or
    before revisions were recorded, even with "config" legacy) is an error, not a silent reuse."""
    import memnet.peers as peers
    from memnet.experiments.common import cached_record

    p = lr_exp.PROFILES["smoke"]
    now = lr_exp.run_settings(p, "titans")
    assert now["adapter"] == peers.ADAPTER_REVISION and "adapter" not in lr_exp.run_settings(p, "windowed")
    path = tmp_path / "titans.json"
    cached_record(path, lambda: {"acc": 0.5}, settings=now, legacy=("config",))
    assert cached_record(path, lambda: {}, settings=now, legacy=("config",))["acc"] == 0.5
    monkeypatch.setattr(peers, "ADAPTER_REVISION", peers.ADAPTER_REVISION + 1)
    with pytest.raises(ValueError, match="adapter"):
        cached_record(path, lambda: {}, settings=lr_exp.run_settings(p, "titans"), legacy=("config",))
    old = tmp_path / "old.json"  # a peer run from before configs and revisions were recorded
    old.write_text(json.dumps({"acc": 0.25, "settings": lr_exp.run_settings(p)}))
    with pytest.raises(ValueError, match="adapter"):
        cached_record(old, lambda: {}, settings=now, legacy=("config",))


def test_a_model_change_invalidates_only_that_models_cached_runs(tmp_path, monkeypatch):
    """A model's settings carry what it is built from: MemNet's whole config, the sizes for the
    others. A MemNet change (here its allocation) makes its cached run an error and leaves the
    windowed model's valid; a record from before configs were recorded is accepted only where the
    caller names "config" as legacy."""

    from memnet.experiments.common import cached_record

    p = lr_exp.PROFILES["smoke"]
    mem, win = lr_exp.run_settings(p, "memnet"), lr_exp.run_settings(p, "windowed")
    assert mem["config"]["allocation"] == lr_exp.make_config(p).allocation
    assert set(win["config"]) == set(lr_exp.SIZE_FIELDS)
    paths = {n: tmp_path / f"{n}.json" for n in ("memnet", "windowed")}
    for n, path in paths.items():
        cached_record(path, lambda: {"acc": 0.5}, settings=lr_exp.run_settings(p, n))
    make = lr_exp.make_config
    monkeypatch.setattr(lr_exp, "make_config", lambda q: replace(make(q), allocation="faded"))
    with pytest.raises(ValueError, match="config"):
        cached_record(paths["memnet"], lambda: {}, settings=lr_exp.run_settings(p, "memnet"))
    assert cached_record(paths["windowed"], lambda: {}, settings=lr_exp.run_settings(p, "windowed"))["acc"] == 0.5
    old = tmp_path / "old.json"  # settings recorded before the config was
    old.write_text(json.dumps({"acc": 0.25, "settings": lr_exp.run_settings(p)}))
    assert cached_record(old, lambda: {}, settings=win, legacy=("config",))["acc"] == 0.25
    with pytest.raises(ValueError, match="config"):
        cached_record(old, lambda: {}, settings=mem)


def test_a_longer_budget_trains_only_its_model_and_is_cached_beside_the_shared_one(tmp_path, monkeypatch):
    """``steps_of`` gives one model more steps: its run trains that many, its settings and file name
    say so (a run at the shared budget is neither reused for it nor overwritten), the other models'
    settings are unchanged, and the tables show each model's steps."""
    p = replace(lr_exp.PROFILES["smoke"], steps=3, steps_of=(("lstm", 5),))
    monkeypatch.setitem(lr_exp.PROFILES, "longer", p)
    shared = replace(p, steps_of=())
    assert lr_exp.run_settings(p, "windowed") == lr_exp.run_settings(shared, "windowed")
    assert lr_exp.run_settings(p, "lstm")["steps"] == 5 != lr_exp.run_settings(shared, "lstm")["steps"]
    monkeypatch.setitem(lr_exp.PROFILES, "shared", shared)
    first = lr_exp.run("shared", device="cpu", models=["lstm"], out_dir=tmp_path, progress=False)
    res = lr_exp.run("longer", device="cpu", models=["windowed", "lstm"], out_dir=tmp_path, progress=False)
    steps = {r["model"]: r["steps"] for r in res["runs"]}
    assert steps == {"windowed": 3, "lstm": 5}
    assert max(s for s, _, _ in next(r for r in res["runs"] if r["model"] == "lstm")["curve"]) <= 5
    runs = tmp_path / "runs"
    assert (runs / "lstm_lr0.001_seed0_steps5.json").is_file() and (runs / "windowed_lr0.001_seed0.json").is_file()
    kept = json.loads((runs / "lstm_lr0.001_seed0.json").read_text())
    assert kept["steps"] == 3 and kept["curve"] == first["runs"][0]["curve"], "the shared budget's run is kept"
    assert lr_exp.longer_budgets(res) == {"lstm": 5}
    assert "5" in lr_exp.plateau_table(res).split("LSTM")[1].split("\n")[0]
    mixed = {**res, "runs": res["runs"] + [{**first["runs"][0]}]}
    with pytest.raises(ValueError, match="one step budget"):
        lr_exp.budget(mixed, "lstm")


def test_train_steps_resumes_from_its_checkpoint_to_the_uninterrupted_weights(tmp_path):
    """A run killed after its checkpoint at step 4 of 6 and started again ends with the weights,
    curve and step count of the run that was never interrupted; a checkpoint of another run is refused."""
    from helpers import V, rand_tokens, tiny_model
    from memnet.experiments.common import train_steps

    def batch(step: int):
        x = rand_tokens(2, 12, seed=step)
        return x, torch.roll(x, -1, dims=1)

    whole = tiny_model(0, dropout=0.1)  # dropout: the random state must resume too
    want = train_steps(whole, batch, 3e-3, 6, log_every=1)

    def dies_at_5(step: int):
        if step == 5:
            raise KeyboardInterrupt("killed")
        return batch(step)

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_steps(tiny_model(0, dropout=0.1), dies_at_5, 3e-3, 6, log_every=1, checkpoint=ckpt, checkpoint_every=2)
    assert ckpt.exists()
    resumed = tiny_model(1, dropout=0.1)  # other initial weights: the checkpoint's replace them
    got = train_steps(resumed, batch, 3e-3, 6, log_every=1, checkpoint=ckpt, checkpoint_every=2)
    assert got["steps"] == want["steps"] == 6
    assert [c[::2] for c in got["curve"]] == [c[::2] for c in want["curve"]]  # step and loss (times differ)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="another run"):
        train_steps(tiny_model(0), batch, 1e-3, 6, checkpoint=ckpt)
    with pytest.raises(ValueError, match="other settings"):
        train_steps(tiny_model(0), batch, 3e-3, 6, checkpoint=ckpt, checkpoint_tag={"seed": 1})
