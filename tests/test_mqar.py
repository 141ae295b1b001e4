"""MQAR: the task's statistics (layout, power-law gaps, filler, key updates, splits) and the
experiment's smoke run."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import examples
from memnet.metrics import IGNORE_INDEX as IGNORE
from memnet.tasks.mqar import BLANK, MQAR


@st.composite
def tasks(draw):
    V = draw(st.sampled_from([32, 64, 512]))
    P = draw(st.integers(1, min(12, V // 2 - 1)))
    upd = draw(st.sampled_from([0.0, 0.5, 1.0]))
    delay = 2 * draw(st.integers(0, 20))
    T = 2 * P + delay + 2 * P * (2 if upd else 1) + 2 * draw(st.integers(0, 40))
    window = draw(st.sampled_from([4, 8, 16]))
    local = draw(st.integers(0, 3))
    task = MQAR(vocab_size=V, seq_len=T, n_pairs=P, power_a=draw(st.sampled_from([0.01, 0.5, 1.0])),
                random_share=draw(st.sampled_from([0.0, 0.5, 1.0])), update_share=upd, delay=delay, window=window)
    local = min(local, task.local_room, task.n_keys - P)
    return MQAR(**{**task.__dict__, "local_pairs": local})


@settings(max_examples=examples(30), deadline=None)
@given(tasks(), st.integers(1, 4), st.integers(0, 10_000))
def test_every_key_is_queried_once_for_its_latest_value(task, B, seed):
    b = task.sample(B, seed)
    T, P, C = task.seq_len, task.n_pairs, task.context_len
    assert b.tokens.shape == b.targets.shape == b.distance.shape == (B, T)
    assert ((b.tokens >= 0) & (b.tokens < task.vocab_size)).all()
    for row in range(B):
        tok, tgt = b.tokens[row].tolist(), b.targets[row].tolist()
        keys, values = tok[0:C:2], tok[1:C:2]
        assert len(set(keys)) == P and all(1 <= k < task.value_lo for k in keys), "distinct keys, key half"
        assert all(task.value_lo <= v < task.vocab_size for v in values), "values from the upper half"
        queries = [t for t in range(T) if tgt[t] != IGNORE]
        main = [t for t in queries if tok[t] in keys]
        local = [t for t in queries if tok[t] not in keys]
        assert len(main) == P and all(t >= task.query_start and (t - C) % 2 == 0 for t in main)
        assert sorted(tok[t] for t in main) == sorted(keys), "each key queried exactly once"
        assert len(local) == task.local_pairs and len({tok[t] for t in local}) == len(local)
        for t in queries:
            # the answer is the value after the latest binding "k v" of the key before the query
            k = tok[t]
            binds = [s for s in range(0, t - 1) if tok[s] == k and (s < C or task.constrained)
                     and task.value_lo <= tok[s + 1] and (s < C or s + 1 not in queries)]
            if not task.constrained:
                binds = [s for s in binds if s < C]
            assert tgt[t] == tok[binds[-1] + 1]
            assert b.distance[row, t] == t - (binds[-1] + 1)
        for t in local:  # bound and queried inside one aligned window after the pairs
            v = t - int(b.distance[row, t])
            assert v - 1 >= C and (v - 1) // task.window == t // task.window
            assert sum(tok[s] == tok[t] for s in range(T)) == 2, "a local key occurs at its binding and query only"


@settings(max_examples=examples(20), deadline=None)
@given(tasks(), st.integers(0, 10_000))
def test_updates_are_the_only_bindings_in_the_query_region(task, seed):
    """With key updates or local pairs, a key of the sequence after the pairs is a query, an update or
    a local binding, and only an update is followed by a value; without them filler may hold anything."""
    if not task.constrained:
        return
    b = task.sample(2, seed)
    C = task.context_len
    for row in range(2):
        tok, tgt = b.tokens[row].tolist(), b.targets[row].tolist()
        keys = set(tok[0:C:2])
        for t in range(C, task.query_start):
            assert tok[t] not in keys, "the delay holds no key of the pairs"
        for t in range(C, task.seq_len):
            if tok[t] in keys and tgt[t] == IGNORE:  # an update: a binding to a value
                assert (t - C) % 2 == 0 and t + 1 < task.seq_len and tok[t + 1] >= task.value_lo
            if tgt[t] != IGNORE and t + 1 < task.seq_len:
                assert tok[t + 1] < task.value_lo, "no value right after a query"


def test_draws_are_pure_functions_of_split_and_seed():
    task = MQAR()
    a, b = task.sample(4, 7), task.sample(4, 7)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    splits = [task.sample(8, 3, split=s).tokens for s in ("train", "validation", "test")]
    assert not torch.equal(splits[0], splits[1]) and not torch.equal(splits[1], splits[2])
    assert not torch.equal(task.sample(4, 8).tokens, a.tokens)
    assert task.sample(2, 0, seq_len=1024).tokens.shape == (2, 1024)


def test_statistics_follow_the_definition():
    """Filler is uniform over the whole vocabulary (so keys and values appear in it), the gaps follow
    the power law, and every key and value id is used."""
    task = MQAR(vocab_size=64, seq_len=256, n_pairs=8, power_a=0.01)
    b = task.sample(400, 0)
    C = task.context_len
    filler = b.tokens[:, C:][b.targets[:, C:] == IGNORE]
    counts = torch.bincount(filler, minlength=64).double()
    expected = counts.sum() / 64
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 120, f"filler far from uniform over the vocabulary (chi2 {chi2:.0f}, 63 dof)"
    assert counts[1:32].sum() > 0.4 * counts.sum(), "keys appear in the filler"
    # query gaps: the empirical mass of the first 8 gaps against the power law's (sampled without replacement)
    q = (b.targets != IGNORE).nonzero()[:, 1]
    gaps = ((q - C) // 2).numpy()
    p = task.gap_probabilities()
    assert p[0] > p[1] > p[-1] and abs(p.sum() - 1) < 1e-12
    share_early = float((gaps < 8).mean())
    assert 0.25 < share_early < 0.75 and share_early > 8 / task.n_gaps * 2, "queries crowd near the pairs"
    assert gaps.max() > task.n_gaps // 2, "and some come late"
    # no filler with random_share 0: every non-query position after the pairs is blank
    quiet = MQAR(vocab_size=64, seq_len=64, n_pairs=4, random_share=0.0).sample(8, 1)
    rest = quiet.tokens[:, 8:][quiet.targets[:, 8:] == IGNORE]
    assert (rest == BLANK).all()


@pytest.mark.parametrize("kw, match", [
    (dict(n_pairs=0), "n_pairs"), (dict(vocab_size=8, n_pairs=4), "n_pairs"), (dict(power_a=0.0), "power_a"),
    (dict(power_a=1.5), "power_a"), (dict(random_share=-0.1), "random_share"), (dict(update_share=2), "update_share"),
    (dict(seq_len=20, n_pairs=8), "seq_len"), (dict(seq_len=40, n_pairs=8, update_share=0.5), "seq_len"),
    (dict(seq_len=3.5), "seq_len"), (dict(delay=3), "delay"), (dict(delay=-2), "delay"),
    (dict(seq_len=64, n_pairs=8, delay=40), "seq_len"), (dict(local_pairs=2), "window"),
    (dict(local_pairs=2, window=6.0), "window"), (dict(seq_len=64, n_pairs=8, local_pairs=12, window=16), "seq_len"),
    (dict(vocab_size=16, n_pairs=6, local_pairs=2, window=8), "n_pairs")])
def test_bad_knobs_are_rejected_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        MQAR(**kw)


def test_bad_draws_are_rejected():
    with pytest.raises(ValueError, match="split"):
        MQAR().sample(2, 0, split="dev")
    with pytest.raises(ValueError, match="seed"):
        MQAR().sample(2, -1)
    with pytest.raises(ValueError, match="batch"):
        MQAR().sample(0, 0)


def test_experiment_smoke_caches_runs_and_prints_its_table(tmp_path):
    from memnet.experiments import mqar as X
    res = X.run("smoke", device="cpu", out_dir=tmp_path, progress=False)
    assert {r["model"] for r in res["runs"]} == set(X.PROFILES["smoke"].models)
    for r in res["runs"]:
        assert 0 <= r["test"]["all"] <= 1 and r["steps"] >= 1 and r["test"]["queries"] > 0
        assert "long" in r and set(r["long"]) == {"128"}
    d = next(r for r in res["runs"] if r["model"] == "memnet")["diagnosis"]
    assert 0 <= d["pair_alive"] <= 1 and 0 <= d["read_hit"] <= 1 and d["queries_beyond"] > 0
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["provenance"]["git_commit"] and len(list((tmp_path / "runs").glob("*.json"))) == 4
    table = X.summary_table(stored)
    assert "memnet" in table and "T=128, beyond" in table and stored["run_commits"]
    # a second run reads the cache instead of training again
    again = X.run("smoke", device="cpu", out_dir=tmp_path, progress=False)
    assert [r["train_s"] for r in again["runs"]] == [r["train_s"] for r in res["runs"]]
    with pytest.raises(ValueError, match="seeds"):
        X.run("smoke", device="cpu", seeds=[], out_dir=tmp_path)


def test_memnet_learns_tiny_mqar_through_its_memory():
    """The mechanism, end to end on a small MQAR (4 windows, 4 pairs, random filler from the whole
    vocabulary): in 120 AdamW steps MemNet answers the queries beyond the first window, and the
    trace says how: the pairs are written with stronger gates than the filler, their slots are
    still there when the queries come, and the reads find them."""
    import torch.nn.functional as F
    from memnet import MemNet, MemNetConfig
    from memnet.experiments.mqar import diagnose

    task = MQAR(vocab_size=64, seq_len=64, n_pairs=4)
    torch.manual_seed(0)
    model = MemNet(MemNetConfig(vocab_size=64, d_model=32, num_slots=16, top_k=2, mem_heads=2, segment_len=16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(120):
        b = task.sample(16, step)
        loss = F.cross_entropy(model(b.tokens).logits.flatten(0, 1), b.targets.flatten(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    v = task.sample(128, 0, split="validation")
    with torch.no_grad():
        pred = model(v.tokens).logits.argmax(-1)
    beyond = (v.targets != IGNORE) & (torch.arange(64) >= 16)
    acc = float(((pred == v.targets) & beyond).sum() / beyond.sum())
    assert acc >= 0.9, acc
    d = diagnose(model, task)
    assert d["write_gate_pair"] > d["write_gate_filler"] + 0.2, d
    assert d["pair_alive"] >= 0.9 and d["read_hit"] >= 0.9 and d["read_hit_weight"] >= 0.5, d
