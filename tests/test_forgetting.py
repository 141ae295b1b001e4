"""The forgetting task (items of known future value), the attribution of contents to items, and the
experiment's analysis, table and stored run (smoke profile)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memnet import MemoryTrace
from memnet.book import load_run
from memnet.experiments import forgetting as fx
from memnet.metrics import IGNORE_INDEX
from memnet.survival import content_lifetimes
from memnet.tasks import ITEM_TYPES, ForgettingBatch, ForgettingStream



@st.composite
def streams(draw):
    L = draw(st.integers(5, 12))
    ipw = draw(st.integers(1, (L - 1) // 2))
    S = draw(st.integers(2, 6))
    pu = draw(st.floats(0, 1))
    pe = draw(st.floats(0, 1 - pu))
    return ForgettingStream(n_keys=ipw * (S - 1) + draw(st.integers(0, 3)), n_values=draw(st.integers(1, 6)),
                            n_filler=draw(st.integers(1, 4)), segment_len=L, items_per_window=ipw, n_windows=S,
                            p_useful=pu, p_expiring=pe, horizon=draw(st.integers(1, 3)), min_gap=draw(st.integers(1, 2)))


def check_batch(t: ForgettingStream, b: ForgettingBatch) -> None:
    B, T = b.tokens.shape
    L, I, K = t.segment_len, t.items_per_window, t.n_keys
    assert T == t.seq_len and b.item_type.shape == (B, t.n_items)
    assert int(b.tokens.min()) >= 0 and int(b.tokens.max()) < t.vocab_size
    for r in range(B):
        tok, tgt, at = b.tokens[r].tolist(), b.targets[r].tolist(), b.item_at[r].tolist()
        for i in range(t.n_items):
            w, kind = i // I, int(b.item_type[r, i])
            vp = int(b.item_pos[r, i])
            assert vp == w * L + 2 * (i % I) + 1 and at[vp] == at[vp - 1] == i
            key, value = tok[vp - 1], tok[vp]
            assert key // K == kind and 3 * K <= value < 3 * K + t.n_values  # the key says the type
            q = int(b.query_pos[r, i])
            if kind == 1:
                assert q == -1  # distractors are never queried
            if q >= 0:
                assert tok[q] == key and tgt[q] == value and at[q] == -1
                qw = q // L
                assert q % L >= 2 * I  # queries sit after the item block
                if kind == 0:
                    assert qw >= w + t.min_gap
                else:
                    assert w + 1 <= qw <= w + t.horizon
        # keys of a type are distinct within the sequence, so a query is unambiguous
        keys = [tok[int(p) - 1] for p in b.item_pos[r]]
        assert len(set(keys)) == len(keys)
        # every target is a query of an item, and nothing else
        assert sorted(i for i, v in enumerate(tgt) if v != IGNORE_INDEX) == sorted(
            int(q) for q in b.query_pos[r] if q >= 0)
        # the last window holds no items
        assert all(a == -1 for a in at[(t.n_windows - 1) * L:])


@given(streams(), st.integers(1, 3), st.integers(0, 10_000))
def test_stream_structure(task, B, seed):
    check_batch(task, task.sample(B, seed))


def test_stream_determinism_rates_and_queries():
    t = ForgettingStream(n_windows=12)
    a, b = t.sample(8, seed=3), t.sample(8, seed=3)
    for f in ("tokens", "targets", "item_at", "item_type", "item_pos", "query_pos"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(t.sample(8, seed=4).tokens, a.tokens)
    big = t.sample(64, seed=0)
    share = [(big.item_type == c).float().mean().item() for c in range(3)]
    assert share[0] == pytest.approx(t.p_useful, abs=0.05) and share[2] == pytest.approx(t.p_expiring, abs=0.05)
    queried = big.query_pos[big.item_type != 1] >= 0
    assert queried.float().mean() > 0.95  # the query positions rarely run out
    assert t.pressure(16) == t.n_items / 16 and t.chance == 1 / t.n_values
    assert t.key_type(torch.tensor([0, t.n_keys, 2 * t.n_keys, 3 * t.n_keys])).tolist() == [0, 1, 2, -1]
    assert ITEM_TYPES == ("useful", "distractor", "expiring")


@pytest.mark.parametrize("kw, match", [
    (dict(n_keys=0), "n_keys"), (dict(n_windows=1), "n_windows"), (dict(items_per_window=8), "items_per_window"),
    (dict(p_useful=1.5), "p_useful"), (dict(p_useful=0.7, p_expiring=0.5), "p_expiring"),
    (dict(n_keys=4), "n_keys"), (dict(horizon=True), "horizon"), (dict(p_expiring="a"), "p_expiring")])
def test_stream_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ForgettingStream(**kw)


def test_stream_bad_sample_arguments():
    t = ForgettingStream()
    with pytest.raises(ValueError, match="batch"):
        t.sample(0, 1)
    with pytest.raises(TypeError, match="seed"):
        t.sample(2, 1.5)


# ---------------------------------------------------------------------------- analysis
def _hand_trace():
    """Items 0..3 of types useful, distractor, expiring, distractor (items 0, 1 in segment 0, items
    2, 3 in segment 1); contents written by item 0's value and item 1's key at segment 0, by a
    filler token at segment 1, and an unattributable one at segment 2."""
    t = ForgettingStream(n_keys=8, segment_len=6, items_per_window=2, n_windows=3)
    b = t.sample(1, seed=0)
    types = torch.tensor([[0, 1, 2, 1]])
    b = ForgettingBatch(b.tokens, b.targets, b.item_at, types, b.item_pos, b.query_pos)
    S, N, W, L = 3, 4, 2, 6
    ev = torch.zeros(1, S, N, dtype=torch.bool)
    ev[0, 0, 0] = ev[0, 0, 1] = ev[0, 1, 2] = ev[0, 2, 3] = True
    strength = ev.float()
    tr = MemoryTrace(read_index=torch.zeros(1, S, L, 1, 1, dtype=torch.long), read_weight=torch.ones(1, S, L, 1, 1),
                     valid=torch.ones(1, S, L, dtype=torch.bool),
                     write_pos=torch.tensor([[[1, 2], [5, 0], [0, 0]]]),  # s0: item 0's value, item 1's key; s1: filler
                     write_gate=torch.ones(1, S, W), write_update=torch.zeros(1, S, W),
                     write_erase=torch.zeros(1, S, W),
                     write_alloc=torch.tensor([[[0, 1], [2, 3], [0, 1]]]),  # s2: nothing allocated to slot 3
                     write_strength=strength, write_events=ev, retention=torch.ones(1, S, N),
                     age=torch.zeros(1, S, N), usage=torch.zeros(1, S, N))
    return tr, b


def test_content_groups_by_hand():
    """Contents written by a useful item's value, a distractor's key, a filler token and an
    unattributable write get codes 0, 1, OTHER and -1."""
    tr, b = _hand_trace()
    life = content_lifetimes(tr)
    np.testing.assert_array_equal(fx.content_groups(tr, life, b), [0, 1, fx.OTHER, -1])
    counts = fx.lifetime_counts(life, fx.content_groups(tr, life, b))
    assert counts["useful"]["censored"][3] == 1 and counts["unattributed"]["count"] == 1


def test_decay_share_by_hand():
    """Of five useful contents two died by decay, one was overwritten and two are still alive: 2/5;
    a type without contents gives nan; the table lists the share per type."""
    useful = {"deaths": [0, 2, 1], "censored": [0, 0, 2], "overwrite": 1, "decay": 2}
    empty = {"deaths": [0, 0, 0], "censored": [0, 0, 0], "overwrite": 0, "decay": 0}
    run = {"counts": {"useful": useful, "distractor": empty, "expiring": {**empty, "censored": [0, 1, 0]},
                      "other": empty}}
    assert fx.decay_share(run, "useful") == pytest.approx(0.4)
    assert fx.decay_share(run, "expiring") == 0.0
    assert np.isnan(fx.decay_share(run, "distractor"))


def test_item_lifetimes_by_hand():
    """Items 0 and 1 wrote contents alive at the end (censored after 3 segments); items 2 and 3
    wrote nothing (0 segments, observed). Then a death: item 0's slot overwritten at segment 2."""
    tr, b = _hand_trace()
    types, duration, observed = fx.item_lifetimes(tr, content_lifetimes(tr), b)
    np.testing.assert_array_equal(types, [0, 1, 2, 1])
    np.testing.assert_array_equal(duration, [3, 3, 0, 0])
    np.testing.assert_array_equal(observed, [False, False, True, True])
    counts = fx.item_counts(tr, content_lifetimes(tr), b)
    assert counts["distractor"] == {"deaths": [1, 0, 0, 0], "censored": [0, 0, 0, 1]}
    ev, strength, alloc = tr.write_events.clone(), tr.write_strength.clone(), tr.write_alloc.clone()
    ev[0, 2, 0] = True
    strength[0, 2, 0] = 1.0
    alloc[0, 2] = torch.tensor([0, 1])  # slot 0 overwritten at segment 2 by a filler write
    tr2 = dataclasses.replace(tr, write_events=ev, write_strength=strength, write_alloc=alloc)
    types, duration, observed = fx.item_lifetimes(tr2, content_lifetimes(tr2), b)
    assert duration[0] == 2 and observed[0]
    res = {"item_median": {"useful": 2.0, "distractor": 0.0}}
    assert fx.item_ratio(res) == float("inf")
    assert np.isnan(fx.item_ratio({"item_median": {"useful": 0.0, "distractor": 0.0}}))


def test_recall_by_retention_by_hand():
    """Two queries, each reading two slots over two heads: the slot with the larger summed weight
    decides the bin, through its retained fraction at the query's segment."""
    t = ForgettingStream(n_keys=8, segment_len=6, items_per_window=2, n_windows=3)
    b0 = t.sample(1, seed=0)
    S, L, N, H, K = 3, 6, 4, 2, 2
    query_pos = torch.tensor([[8, 14, -1, -1]])  # item 0 queried at segment 1 (offset 2), item 1 at segment 2 (offset 2)
    types = torch.tensor([[0, 2, 1, 1]])  # useful, expiring, distractors
    targets = torch.full((1, 18), -100)
    targets[0, 8], targets[0, 14] = 5, 6
    b = ForgettingBatch(b0.tokens, targets, b0.item_at, types, b0.item_pos, query_pos)
    ev = torch.zeros(1, S, N, dtype=torch.bool)
    ev[0, 0, 0] = ev[0, 0, 1] = True  # contents born in slots 0 and 1 at segment 0
    ret = torch.ones(1, S, N)
    ret[0, 1, 1] = 0.05  # slot 1 decays at segment 1: retained 0.05 when segment 2 reads
    index = torch.zeros(1, S, L, H, K, dtype=torch.long)
    weight = torch.zeros(1, S, L, H, K)
    index[0, 1, 2] = torch.tensor([[0, 1], [1, 0]])
    weight[0, 1, 2] = torch.tensor([[0.9, 0.1], [0.4, 0.6]])  # slot 0: 1.5, slot 1: 0.5 -> slot 0 (retained 1)
    index[0, 2, 2] = torch.tensor([[1, 0], [1, 0]])
    weight[0, 2, 2] = torch.tensor([[0.7, 0.3], [0.8, 0.2]])  # slot 1 (retained 0.05)
    tr = MemoryTrace(read_index=index, read_weight=weight, valid=torch.ones(1, S, L, dtype=torch.bool),
                     write_pos=torch.zeros(1, S, 1, dtype=torch.long), write_gate=torch.ones(1, S, 1),
                     write_update=torch.zeros(1, S, 1), write_erase=torch.zeros(1, S, 1),
                     write_alloc=torch.zeros(1, S, 1, dtype=torch.long), write_strength=ev.float(), write_events=ev,
                     retention=ret, age=torch.zeros(1, S, N), usage=torch.zeros(1, S, N))
    pred = np.zeros((1, 18), dtype=np.int64)
    pred[0, 8], pred[0, 14] = 5, 0  # the useful query is right, the expiring one wrong
    out = fx.recall_by_retention(tr, b, pred)
    assert fx.RETAINED_BINS[3] == 0.1 and fx.RETAINED_BINS[4] == 0.5
    assert out["useful"] == {"queries": [0, 0, 0, 0, 1], "correct": [0, 0, 0, 0, 1]}
    assert out["expiring"] == {"queries": [0, 0, 1, 0, 0], "correct": [0, 0, 0, 0, 0]}


def test_format():
    assert fx.fmt([1.0, 2.0, 3.0]) == "2.0 ± 2.5" and fx.fmt([4.0]) == "4.0"  # common.mean_ci
    assert fx.fmt([2.0, float("inf")]) == "2/inf" and fx.fmt([float("inf")]) == "inf"
    assert fx.fmt([2.5, float("nan")]) == "2.5/nan"
    assert fx.ratio({"median": {"useful": 8.0, "distractor": 2.0}}) == 4.0
    assert np.isnan(fx.ratio({"median": {"useful": 8.0, "distractor": float("nan")}}))


def test_ablations_and_profiles():
    for name, p in fx.PROFILES.items():
        abl = fx.ablations(p)
        assert {"learned", "fixed", "none", "faded", "no_util"} <= set(abl)
        assert abl["faded"]["allocation"] == "faded" and abl["faded"]["decay_mode"] == "learned"
        assert abl["fixed"]["decay_mode"] == "fixed" and abl["none"]["decay_mode"] == "none"
        assert abl["no_util"]["util_weight"] == 0 and abl["learned"]["pressure_weight"] == p.pressure
        assert {a["pressure_weight"] for a in abl.values()} >= set(p.pressure_sweep)
        task = fx.make_task(p)
        cfg = fx.make_config(p, task, **abl["none"])
        assert cfg.decay_mode == "none" and task.pressure(p.num_slots) > 1  # more items than slots
        assert abl["forced_none"]["decay_mode"] == "none" and len(p.forced_pressures) >= 1
        assert p.only is None or set(p.only) <= set(abl), (name, p.only)
        for w in p.forced_pressures:
            a = abl[f"forced_p={w:g}"]
            assert (a["decay_mode"], a["allocation"], a["pressure_weight"]) == ("learned", "faded", w)
        lo, hi = abl["forced_none"]["write_tokens"]
        b = task.sample(3, seed=1)
        is_value = (b.tokens >= lo) & (b.tokens < hi)
        # the value tokens are exactly the items' value positions: one writer per item
        assert torch.equal(is_value.nonzero()[:, 1].view(3, -1), b.item_pos)
    assert len(fx.PROFILES["laptop"].seeds) >= 3
    with pytest.raises(ValueError, match="profile"):
        fx.run("huge", save=False)
    with pytest.raises(ValueError, match="only"):
        fx.run("smoke", save=False, only=["nope"])


# ---------------------------------------------------------------------------- the stored run (smoke)
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("forgetting")
    fx.run("smoke", "cpu", out_dir=out, save=True, progress=False, only=["learned", "none"])
    return out


def test_smoke_run_is_stored_and_loads(smoke_run):
    run = load_run(smoke_run)
    res = run.result
    p = fx.PROFILES["smoke"]
    assert res["experiment"] == "forgetting" and res["provenance"]["seed"] == [0]
    assert {r["ablation"] for r in res["runs"]} == {"learned", "none"}
    tr = run.traces[0]["trace"]
    assert tr.write_strength.shape == (p.trace_rows, p.n_windows, p.num_slots)
    assert run.traces[0]["trace_ablation"] == "learned"
    for name in ("learned", "none"):
        lab = run.traces[0]["ablations"][name]["labels"]
        assert lab.shape == (p.trace_rows, p.n_windows, p.num_slots)
        assert int(lab.min()) >= -2 and int(lab.max()) < len(fx.GROUPS)
    none = next(r for r in res["runs"] if r["ablation"] == "none")
    assert none["retention_mean"] == 1.0  # no decay: nothing dies by decay
    assert all(c["decay"] == 0 for g, c in none["counts"].items() if g != "unattributed")
    for r in res["runs"]:
        assert len(r["probe_curve"]) == p.probes + 1 and r["probe_curve"][-1]["step"] == p.steps
        n = sum(sum(r["counts"][g]["deaths"]) + sum(r["counts"][g]["censored"]) for g in fx.GROUPS)
        assert n + r["counts"]["unattributed"]["count"] == r["contents"]
        for k in ("useful", "expiring"):  # binned by retained fraction, the same queries as the accuracy
            rb = r["recall_by_retention"][k]
            assert len(rb["queries"]) == len(fx.RETAINED_BINS) - 1
            assert all(0 <= c <= q for c, q in zip(rb["correct"], rb["queries"]))
            assert sum(rb["queries"]) > 0 and sum(rb["correct"]) / sum(rb["queries"]) == pytest.approx(r["accuracy"][k])
    none_rb = none["recall_by_retention"]["useful"]["queries"]
    assert sum(none_rb[:-1]) == 0  # no decay: every read content keeps all its strength
    table = fx.summary_table(res)
    assert "learned" in table and "none" in table and "ratio" in table


def test_stored_labels_agree_with_the_stored_trace(smoke_run):
    """The event labels stored for the learned ablation mark exactly the write events of its trace."""
    run = load_run(smoke_run)
    tr = run.traces[0]["trace"]
    lab = run.traces[0]["ablations"]["learned"]["labels"]
    assert torch.equal(lab >= -1, tr.write_events)
    # only the stored rows are saved, not the storage of the whole evaluation batch
    assert tr.read_index.untyped_storage().nbytes() == tr.read_index.numel() * tr.read_index.element_size()
    assert run.traces[0]["tokens"].untyped_storage().nbytes() == run.traces[0]["tokens"].numel() * 8


def test_two_worker_processes_give_the_same_run(smoke_run):
    """Jobs seed themselves: training them in 2 spawned processes reproduces the in-process run."""
    one = load_run(smoke_run).result
    two = fx.run("smoke", "cpu", save=False, progress=False, only=["learned", "none"], workers=2)
    assert two["provenance"]["workers"] == 2
    for a, b in zip(one["runs"], two["runs"]):
        assert (a["ablation"], a["seed"]) == (b["ablation"], b["seed"])
        assert a["counts"] == b["counts"] and a["history"] == b["history"]
    with pytest.raises(ValueError, match="workers"):
        fx.run("smoke", "cpu", save=False, workers=0)


def test_forced_run_writes_every_item_and_its_view_and_figures(tmp_path):
    """A forced-write smoke run: every item of every type is written, the view names its
    configurations, and the chapter's two figures have one panel per (configuration, seed) and
    three panels."""
    p = fx.PROFILES["smoke"]
    only = ["forced_none"] + [f"forced_p={w:g}" for w in p.forced_pressures]
    res = fx.run("smoke", "cpu", out_dir=tmp_path, save=False, progress=False, only=only)
    for r in res["runs"]:
        assert r["write_rate"] == {g: 1.0 for g in fx.ITEM_TYPES}, (r["ablation"], r["write_rate"])
        assert r["overrides"]["write_tokens"] == fx.make_task(p).value_tokens
    fv = fx.forced_view(res)
    assert fv.names == only and fv.forced == only[1:] and fv.best in fv.forced and fv.top == only[-1]
    assert all(len(fv.ratios[n]) == len(p.seeds) for n in fv.names)
    from memnet import plots

    fig = plots.survival_grid(fx.survival_panels(res, ["forced_none", fv.best]), res["num_segments"], title="t")
    assert len(fig.axes) == 2 * len(p.seeds)
    assert len(plots.forced_pressure_panels(res, fv.rows, fv.names).axes) == 3
    with pytest.raises(ValueError, match="forced_none"):
        fx.forced_view({**res, "runs": [r for r in res["runs"] if r["ablation"] != "forced_none"]})


def test_meets_bar_needs_every_seed_and_enough_seeds():
    assert fx.meets_bar([10.0, 11.0, float("inf")])
    assert not fx.meets_bar([11.0, 10.0, 5.0])  # one seed short of the factor
    assert not fx.meets_bar([20.0, 30.0])  # too few seeds
    assert not fx.meets_bar([12.0, float("nan"), 15.0])  # a seed without a ratio


@pytest.mark.parametrize("profile", ["laptop", "long"])
def test_stored_run_table_and_claims(profile):
    """A stored run prints its three tables through format_table with every ablation's numbers, and
    summarize checks the claim as meets_bar does on the same ratios."""
    import json

    from memnet.experiments.common import DATA_DIR

    res = json.loads((DATA_DIR / "forgetting" / profile / "results.json").read_text())
    rows = {r["ablation"]: r for r in fx.ablation_rows(res)}
    blocks = fx.summary_table(res).split("\n\n")
    assert len(blocks) == 3
    for block in blocks:
        lines = block.splitlines()
        assert lines[1].split()[0] == "ablation" and set(lines[2]) == {"-", " "}  # format_table's header and rule
        assert [line.split()[0] for line in lines[3:]] == list(rows)
    for name, r in rows.items():
        row = next(line for line in blocks[0].splitlines() if line.split()[0] == name)
        pm = r["pooled_median"]
        cells = [fx.fmt(r["median_useful"]), fx.fmt(r["median_distractor"]), fx.fmt(r["ratio"]),
                 fx.fmt(r["rmst_ratio"], 2), f"{pm['useful']:g}/{pm['distractor']:g}", fx.fmt(r["write_useful"], 2),
                 fx.fmt(r["write_distractor"], 2), fx.fmt(r["acc_useful"], 2), fx.fmt(r["read_entropy"], 2)]
        assert [c.strip() for c in row[len(name):].split("  ") if c.strip()] == cells
    verdicts = fx.summarize(res)
    names = [n for n in ("learned", "faded") if n in rows] + [fx.forced_view(res).best]
    assert [v.claim.split(":")[0] for v in verdicts] == names
    for v, n in zip(verdicts, names):
        assert v.passed == fx.meets_bar(rows[n]["ratio_bound"]) and v.threshold == 10
    if profile == "long":  # forced_p=0.3: per-seed ratios 11, 10 and 5
        assert not verdicts[0].passed
        assert verdicts[0].measured == pytest.approx(min(rows["forced_p=0.3"]["ratio_bound"]))
    else:  # learned decay with a ratio of 12 in every seed holds
        for r in res["runs"]:
            if r["ablation"] == "learned":
                r["median"] = {**r["median"], "useful": 12.0, "distractor": 1.0}
        v = fx.summarize(res)[0]
        assert v.claim.startswith("learned") and v.passed and v.measured == 12.0
