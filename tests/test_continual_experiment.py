"""The continual experiment: segment-end writes, the carried memory, the smoke run and its tables."""
import json

import numpy as np
import pytest
import torch

from memnet import MemNet, MemNetConfig
from memnet.continual import accuracy_matrix, stream_memnet, summarize
from memnet.experiments import continual as C
from memnet.tasks.shift import ShiftingPrototypes


@pytest.fixture(scope="module")
def stream():
    return ShiftingPrototypes(n_tasks=5, item_len=4, train_per_class=8, test_per_class=4, seed=0)


def cfg_for(stream, **kw):
    base = dict(vocab_size=stream.vocab_size, d_model=16, n_layers=1, n_heads=2, num_slots=48, top_k=2,
                mem_heads=2, segment_len=stream.segment_len, writes_per_segment=1)
    base.update(kw)
    return MemNetConfig(**base)


def test_stream_memnet_writes_only_at_segment_ends(stream):
    torch.manual_seed(0)
    model = stream_memnet(cfg_for(stream)).eval()
    x, y = stream.support_set(0, 3, seed=0)
    tok = stream.support_tokens(x, y)
    tr = model(tok, return_trace=True).trace
    assert (tr.write_pos == stream.segment_len - 1).all()
    # a ragged last window writes at its last real token
    tr2 = model(tok[:, :-2], return_trace=True).trace
    assert tr2.write_pos[0, -1, 0] == stream.segment_len - 3
    # same parameters as a plain MemNet: the state dicts load into each other
    MemNet(cfg_for(stream)).load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="writes_per_segment"):
        stream_memnet(cfg_for(stream, writes_per_segment=2))


def test_queries_never_change_the_carried_memory(stream):
    torch.manual_seed(0)
    model = stream_memnet(cfg_for(stream)).eval()
    mem, tr = C.fill(model, stream, *stream.support_set(1, 3, seed=0), None, torch.device("cpu"))
    assert tr.num_segments == 6 and mem.batch_size == 1
    before = mem.clone()
    a = C.accuracy(model, stream, 1, torch.device("cpu"), "off", mem, chunk=3)
    b = C.accuracy(model, stream, 1, torch.device("cpu"), "off", mem, chunk=100)
    assert a == b  # chunking agrees
    for f in ("keys", "values", "age", "usage"):
        assert torch.equal(getattr(before, f), getattr(mem, f))
    # filling in two calls gives the memory of one call (a support item is one whole window)
    x, y = stream.support_set(1, 3, seed=0)
    m1, _ = C.fill(model, stream, x[:2], y[:2], None, torch.device("cpu"))
    m2, _ = C.fill(model, stream, x[2:], y[2:], m1, torch.device("cpu"))
    torch.testing.assert_close(m2.keys, mem.keys)


def test_expand_state_and_key_cosine(stream):
    model = stream_memnet(cfg_for(stream)).eval()
    mem, tr = C.fill(model, stream, *stream.support_set(0, 2, seed=0), None, torch.device("cpu"))
    e = C.expand_state(mem, 5)
    assert e.keys.shape == (5, 48, 16) and torch.equal(e.keys[3], mem.keys[0])
    items = C.track_items(np.full(48, -1), tr, 10)
    alloc = tr.write_alloc[0, :, 0].tolist()  # (S,) the slot allocated to each item
    for slot in range(48):  # each slot holds the item last allocated to it
        hit = [s for s, a in enumerate(alloc) if a == slot]
        assert items[slot] == (10 + hit[-1] if hit else -1)
    present = np.unique(items[items >= 0])
    assert C.key_cosine(mem, items, mem, items, present) == pytest.approx(1.0)
    assert np.isnan(C.key_cosine(mem, items, mem, items, np.array([0, 1])))


def test_mean_ci_by_hand():
    m, h = C.mean_ci([0.5, 0.7, 0.9])
    # mean 0.7, sd 0.2, t(2) = 4.303: half-width 4.303 * 0.2 / sqrt(3)
    assert m == pytest.approx(0.7) and h == pytest.approx(4.303 * 0.2 / np.sqrt(3))
    assert C.mean_ci([0.4]) == (0.4, 0.0)


def test_config_must_hold_every_support_item(stream):
    p = C.Profile(num_slots=16, support_per_class=2)
    with pytest.raises(ValueError, match="num_slots"):
        C.make_config(p, stream)


def test_bad_run_arguments():
    with pytest.raises(ValueError, match="profile"):
        C.run("huge", save=False)
    with pytest.raises(ValueError, match="streams"):
        C.run("smoke", save=False, streams=["mnist"])
    with pytest.raises(ValueError, match="models"):
        C.run("smoke", save=False, models=["gru"])


def test_smoke_run_stores_consistent_results(tmp_path):
    torch.set_num_threads(1)
    res = C.run("smoke", "cpu", seeds=[0], out_dir=tmp_path, save=True, progress=False, streams=["shift"],
                models=["memnet", "windowed", "lstm_joint", "memnet_joint"])
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["provenance"]["seed"] == [0] and stored["experiment"] == "continual"
    runs = stored["streams"]["shift"]["runs"]
    assert [r["model"] for r in runs] == ["memnet", "memnet_reset", "memnet_rewrite", "windowed", "lstm_joint",
                                          "memnet_joint"]
    for r in runs:
        if "R" in r:  # the stored summary is the metrics module's on the stored matrix
            R = accuracy_matrix(r["R"])
            assert R.shape == (5, 5)
            s = summarize(R, r["baseline_b"])
            assert r["summary"]["acc"] == pytest.approx(s["acc"]) and r["summary"]["bwt"] == pytest.approx(s["bwt"])
        else:
            assert len(r["final"]) == 5 and r["acc"] == pytest.approx(np.mean(r["final"]))
    mem = runs[0]
    # the last task's items were written by the same weights into both memories: identical keys
    # (when the stream's earlier items did not change where or how they landed, the cosine is 1)
    drift, kept = np.array(mem["key_drift"], dtype=float), np.array(mem["retained"], dtype=float)
    assert np.isnan(drift[0, 1]) and np.isnan(kept[0, 1])  # task 1 not written yet after task 0
    assert np.all((kept[np.tril_indices(5)] >= 0) & (kept[np.tril_indices(5)] <= 1))
    # after task 0 the carried and the rewritten memory are the same fill by the same weights
    assert np.isnan(drift[0, 0]) or drift[0, 0] == pytest.approx(1.0, abs=1e-5)
    rec = torch.load(tmp_path / "trace_seed0.pt", weights_only=True)
    assert rec["slot_owner"].shape == (5, 64)
    owners = rec["slot_owner"][-1]
    counts = torch.bincount(owners[owners >= 0], minlength=5)
    np.testing.assert_allclose(counts.numpy() / 6, kept[-1], atol=1e-9)  # 3 items x 2 classes per task
    assert rec["segment_task"].tolist() == sum([[t] * 6 for t in range(5)], [])
    assert "shift" in rec["streams"]
    table = C.summary_table(res)
    assert "memnet_reset" in table and "lstm_joint" in table and "ACC" in table


def test_slot_owner_over_time_by_hand():
    from memnet import plots

    ev = np.zeros((4, 3), dtype=bool)
    ev[0, 0] = ev[1, 1] = ev[2, 0] = ev[3, 2] = True
    own = plots.slot_owner_over_time(ev, [0, 0, 1, 1], 2)
    np.testing.assert_array_equal(own, [[0, -1, -1], [0, 0, -1], [1, 0, -1], [1, 0, 1]])
    with pytest.raises(ValueError, match="segment_task"):
        plots.slot_owner_over_time(ev, [0, 1], 2)


def test_with_memory_starts_every_sequence_from_the_carried_state(stream):
    torch.manual_seed(0)
    model = stream_memnet(cfg_for(stream)).eval()
    mem, _ = C.fill(model, stream, *stream.support_set(0, 2, seed=0), None, torch.device("cpu"))
    tok, _ = stream.episodes(1, batch=3, n_support=2, n_query=1, seed=0)
    a = C.WithMemory(model, mem)(tok).logits
    b = model(tok, memory=C.expand_state(mem, 3)).logits
    torch.testing.assert_close(a, b)
    assert {n for n, _ in C.WithMemory(model, mem).named_parameters()} == {f"model.{n}" for n, _ in model.named_parameters()}
