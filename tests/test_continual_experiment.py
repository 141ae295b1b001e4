"""The continual experiment: segment-end writes, the carried memory, the smoke run and its tables."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from memnet import MemNet, MemNetConfig
from memnet.continual import accuracy_matrix, slot_owner_over_time, stream_memnet, summarize
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
    # token addressing has the parameters of a plain MemNet: the state dicts load into each other
    MemNet(cfg_for(stream)).load_state_dict(stream_memnet(cfg_for(stream), address="token").state_dict())
    with pytest.raises(ValueError, match="writes_per_segment"):
        stream_memnet(cfg_for(stream, writes_per_segment=2))
    with pytest.raises(ValueError, match="address"):
        stream_memnet(cfg_for(stream), address="pooled")


def test_item_address_is_the_same_for_support_and_query_and_causal(stream):
    torch.manual_seed(0)
    model = stream_memnet(cfg_for(stream)).eval()
    x, y = stream.support_set(2, 2, seed=0)
    sup = stream.support_tokens(x, y).view(len(y), -1)  # (n, L): item then its label
    qry, _ = stream.query_tokens(x, y)  # (n, L): item then QUERY
    other = sup.clone()
    other[:, -1] = torch.from_numpy(stream.label_token((y + 1) % stream.n_classes))  # the same items with wrong labels
    with torch.no_grad():
        ks, kq, ko = (model.signals(t)[2] for t in (sup, qry, other))  # MemorySignals
    # the key an item is written under ignores its label, and equals (tied projections) its query
    torch.testing.assert_close(ks.write_key[:, 0, -1], ko.write_key[:, 0, -1])
    torch.testing.assert_close(ks.write_key[:, 0, -1], kq.read_query[:, 0, -1, 0])
    assert not torch.allclose(ks.write_key[0, 0, -1], ks.write_key[1, 0, -1])  # different items, different keys
    # causal: changing the token at offset t leaves every address at offsets <= t unchanged
    t = 2
    bent = sup.clone()
    bent[:, t] = (bent[:, t] + 1) % stream.n_symbols
    with torch.no_grad():
        kb = model.signals(bent)[2]
    torch.testing.assert_close(kb.write_key[:, :, : t + 1], ks.write_key[:, :, : t + 1])
    assert not torch.allclose(kb.write_key[:, :, t + 1:], ks.write_key[:, :, t + 1:])


def test_fit_key_map_recovers_a_rotation_and_realign_keeps_norms():
    from memnet.continual import fit_key_map, realign_keys
    from memnet.memory import MemoryState

    g = torch.Generator().manual_seed(0)
    D = 6
    rot, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    before = torch.randn(200, D, generator=g)
    M = fit_key_map(before, before @ rot, ridge=1e-6)
    torch.testing.assert_close(M, rot, atol=1e-4, rtol=0)
    # few items spanning few directions: the ridge keeps the map near the identity elsewhere
    M1 = fit_key_map(before[:1], before[:1] @ rot, ridge=10.0)
    assert (M1 - torch.eye(D)).norm() < (rot - torch.eye(D)).norm()
    keys = torch.randn(1, 4, D, generator=g) * torch.tensor([1.0, 2.0, 0.0, 3.0]).view(1, 4, 1)
    st = MemoryState(keys, torch.randn(1, 4, D, generator=g), torch.arange(4.0).view(1, 4), torch.zeros(1, 4))
    new = realign_keys(st, rot)
    torch.testing.assert_close(new.keys.norm(dim=-1), keys.norm(dim=-1))  # norms kept, the empty slot stays zero
    torch.testing.assert_close(new.keys[0, 3], keys[0, 3] @ rot)  # a rotation moves a key exactly
    assert torch.equal(new.values, st.values) and torch.equal(new.age, st.age)
    assert torch.equal(st.keys, keys)  # the input state is untouched
    with pytest.raises(ValueError, match="key_map"):
        realign_keys(st, torch.eye(D + 1))
    with pytest.raises(ValueError, match="before and after"):
        fit_key_map(before, before[:, :3])
    with pytest.raises(ValueError, match="ridge"):
        fit_key_map(before, before, ridge=0.0)
    with pytest.raises(ValueError, match="finite"):
        fit_key_map(before.clone().fill_(float("nan")), before)


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


def test_model_summary_by_hand():
    runs = [{"model": "lstm", "seed": s, "summary": {k: v for k in C.METRICS}} for s, v in enumerate((0.5, 0.7, 0.9))]
    runs.append({"model": "lstm_joint", "seed": 0, "acc": 0.4})
    summ = C.model_summary({"streams": {"shift": {"runs": runs}}}, "shift")
    m, h = summ["lstm"]["bwt"]
    # mean 0.7, sd 0.2, t(2) = 4.303: half-width 4.303 * 0.2 / sqrt(3)
    assert m == pytest.approx(0.7) and h == pytest.approx(4.303 * 0.2 / np.sqrt(3)) and summ["lstm"]["n_seeds"] == 3
    assert set(summ["lstm_joint"]) == {"acc", "n_seeds"} and summ["lstm_joint"]["acc"][0] == 0.4
    assert np.isnan(summ["lstm_joint"]["acc"][1])  # one seed: no interval


def test_stored_run_table_and_claims():
    """The stored run prints through format_table with every model's mean ± interval and
    bytes stored, and each claim holds exactly where its rule says: memnet_replay's ACC at least
    the best ER model's, its BWT at least -10 points."""
    from memnet.experiments.common import DATA_DIR, mean_ci

    stored = [DATA_DIR / "continual" / p / "results.json" for p in ("full", "laptop")]
    res = json.loads(next(f for f in stored if f.exists()).read_text())  # the run the chapter reads
    blocks = C.summary_table(res).split("\n\n")
    assert len(blocks) == len(res["streams"])
    for s, block in zip(res["streams"], blocks):
        lines = block.splitlines()
        assert lines[0].startswith(f"{s}: class-incremental") and lines[1].split()[:3] == ["model", "ACC", "BWT"]
        assert set(lines[2]) == {"-", " "}  # format_table's rule under the header
        nbytes = {r["model"]: r.get("memory_bytes") for r in res["streams"][s]["runs"] if r["selected"]}
        for m, d in C.seed_values(res, s).items():
            row = next(line for line in lines[3:] if line.split()[0] == m)
            cells = [mean_ci(d[k], 100) if k in d else "-" for k in ("acc", "bwt", "forgetting", "max_drop", "fwt")]
            cells += [f"{nbytes[m]:,}" if nbytes[m] is not None else "-", str(len(d["acc"]))]
            assert [c.strip() for c in row[len(m):].split("  ") if c.strip()] == cells
    verdicts = {v.claim: v for v in C.summarize(res)}
    assert len(verdicts) == 2 * len(res["streams"])
    for s in res["streams"]:
        summ = C.model_summary(res, s)
        best = max(summ[m]["acc"][0] for m in summ if m.startswith("er_"))
        lead = verdicts[f"memnet_replay on {s}: ACC >= experience replay's at as many bytes (points ahead)"]
        bwt = verdicts[f"memnet_replay on {s}: backward transfer >= -10 points"]
        assert lead.measured == pytest.approx(100 * (summ["memnet_replay"]["acc"][0] - best))
        assert lead.passed == (lead.measured >= 0) and bwt.passed == (100 * summ["memnet_replay"]["bwt"][0] >= -10)
        # every ER buffer holds as many whole items as memnet_replay's bytes pay for, or every training item
        runs = [r for r in res["streams"][s]["runs"] if r["selected"]]
        mine = next(r["memory_bytes"] for r in runs if r["model"] == "memnet_replay")
        every = sum(n[0] for n in res["streams"][s]["stream"]["train_val_test_per_task"])
        for r in (r for r in runs if r["model"].startswith("er_")):
            item = res["streams"][s]["stream"]["item_len"] + 1
            assert r["memory_bytes"] > mine - item or r["buffer_items"] == every


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
                models=["memnet", "memnet_fixed", "windowed", "lstm_joint", "memnet_joint", "memnet_fixed_joint"])
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["provenance"]["seed"] == [0] and stored["experiment"] == "continual"
    runs = stored["streams"]["shift"]["runs"]
    assert [r["model"] for r in runs] == ["memnet", "memnet_reset", "memnet_rewrite", "memnet_frozen",
                                          "memnet_unaligned", "memnet_fixed", "memnet_fixed_reset", "windowed",
                                          "lstm_joint", "memnet_joint", "memnet_fixed_joint"]
    # after the first task every MemNet variant but the reset one is the same weights with the same memory
    by = {r["model"]: np.array(r["R"]) for r in runs if "R" in r}
    for m in ("memnet_rewrite", "memnet_frozen", "memnet_unaligned"):
        np.testing.assert_array_equal(by[m][0], by["memnet"][0])
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
    recs = torch.load(tmp_path / "trace_seed0.pt", weights_only=True)
    assert sorted(recs) == ["memnet", "memnet_fixed"] and list(recs["memnet"]) == ["shift"]
    rec = recs["memnet"]["shift"]
    assert rec["slot_owner"].shape == (5, 64)
    owners = rec["slot_owner"][-1]
    counts = torch.bincount(owners[owners >= 0], minlength=5)
    np.testing.assert_allclose(counts.numpy() / 6, kept[-1], atol=1e-9)  # 3 items x 2 classes per task
    assert rec["segment_task"].tolist() == sum([[t] * 6 for t in range(5)], [])
    # the stored fill record rebuilds the write events the owners were computed from
    from memnet import plots
    own = slot_owner_over_time(C.slot_events(rec), rec["segment_task"], 5)
    np.testing.assert_array_equal(own[-1], owners.numpy())
    # the fixed-address MemNet: a bank sized to the stream, every item kept, nothing evicted
    fx = next(r for r in runs if r["model"] == "memnet_fixed")
    assert fx["num_slots"] == 64 and recs["memnet_fixed"]["shift"]["slot_owner"].shape == (5, 64)
    assert np.allclose(np.array(fx["retained"], dtype=float)[np.tril_indices(5)], 1.0)
    np.testing.assert_array_equal(np.array(fx["R"])[0], np.array(by["memnet_fixed_reset"])[0])
    table = C.summary_table(res)
    assert "memnet_reset" in table and "lstm_joint" in table and "ACC" in table
    assert all(v.claim.endswith(("model", "points")) for v in C.summarize(res))  # one seed, one stream: still checked
    # the stored run loads back into the explorer: one figure per model's carried memory
    from memnet import book, widgets
    loaded = book.load_run(tmp_path)
    for m in ("memnet", "memnet_fixed"):
        fig = widgets.stream_frame(loaded.result, loaded.traces, 0, 7, "shift", m)
        assert fig.axes[0].get_title().startswith(f"{plots.CONTINUAL_LABELS[m]}, seed 0: slots after item 8")
    box = widgets.continual_explorer(loaded.result, loaded.traces, "shift")
    assert [c.description for c in box.children[0].children] == ["seed", "model", "item"]


def test_slot_owner_over_time_by_hand():
    ev = np.zeros((4, 3), dtype=bool)
    ev[0, 0] = ev[1, 1] = ev[2, 0] = ev[3, 2] = True
    own = slot_owner_over_time(ev, [0, 0, 1, 1], 2)
    np.testing.assert_array_equal(own, [[0, -1, -1], [0, 0, -1], [1, 0, -1], [1, 0, 1]])
    with pytest.raises(ValueError, match="segment_task"):
        slot_owner_over_time(ev, [0, 1], 2)


def test_with_memory_starts_every_sequence_from_the_carried_state(stream):
    torch.manual_seed(0)
    model = stream_memnet(cfg_for(stream)).eval()
    mem, _ = C.fill(model, stream, *stream.support_set(0, 2, seed=0), None, torch.device("cpu"))
    tok, _ = stream.episodes(1, batch=3, n_support=2, n_query=1, seed=0)
    a = C.WithMemory(model, mem)(tok).logits
    b = model(tok, memory=C.expand_state(mem, 3)).logits
    torch.testing.assert_close(a, b)
    assert {n for n, _ in C.WithMemory(model, mem).named_parameters()} == {f"model.{n}" for n, _ in model.named_parameters()}


def test_workers_give_the_same_results_as_one_process(tmp_path):
    kw = dict(profile="smoke", device="cpu", seeds=[0], save=False, progress=False, streams=["shift"],
              models=["memnet", "lstm"])
    torch.set_num_threads(1)  # as every worker: the same kernels, the same rounding
    one = C.run(**kw, workers=1)
    two = C.run(**kw, workers=2)
    r1, r2 = one["streams"]["shift"]["runs"], two["streams"]["shift"]["runs"]
    assert [r["model"] for r in r1] == [r["model"] for r in r2]
    for a, b in zip(r1, r2):
        for k in ("R", "key_drift", "retained"):
            if k in a:
                np.testing.assert_array_equal(np.array(a[k], dtype=float), np.array(b[k], dtype=float))
    assert two["provenance"]["workers"] == 2
    with pytest.raises(ValueError, match="workers"):
        C.run(**kw, workers=0)


# ---------------------------------------------------------------------------- fixed addresses
def test_fixed_address_keeps_item_cosines_and_ignores_labels_and_weights():
    from memnet.continual import FixedAddress
    from memnet.tasks.digits import SplitDigits

    d = SplitDigits(seed=0, pool=2)
    x, y = d.support_set(None, 2, seed=0)
    cfg = MemNetConfig(vocab_size=d.vocab_size, d_model=16, n_layers=1, n_heads=2, num_slots=32, top_k=2,
                       mem_heads=2, segment_len=d.segment_len, writes_per_segment=1)
    torch.manual_seed(0)
    a = stream_memnet(cfg, address="fixed", code=d.symbol_code())
    torch.manual_seed(1)
    b = stream_memnet(cfg, address="fixed", code=d.symbol_code())  # other weights, same addresses
    sup = d.support_tokens(x, y).view(len(y), -1)
    qry, _ = d.query_tokens(x, y)
    with torch.no_grad():
        ka, kb, qa = a.signals(sup).key[:, 0, 0], b.signals(sup).key[:, 0, 0], a.signals(qry).sig.read_query
    torch.testing.assert_close(ka, kb)
    torch.testing.assert_close(ka, qa[:, 0, -1, 0])  # a query item finds the key its support item was written under
    torch.testing.assert_close(qa[:, 0, -1, 0], qa[:, 0, -1, 1])  # every head asks the same
    # 16 pixel offsets x 1 code fit into the 16-dim slots (the label's offset never enters): orthonormal placement, the cosine is the images' cosine
    px = torch.from_numpy(x).double()
    want = torch.nn.functional.cosine_similarity(px[:, None], px[None], dim=-1)
    got = torch.nn.functional.cosine_similarity(ka[:, None].double(), ka[None].double(), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # when the coded item does not fit, a random projection: close, not exact
    fa = FixedAddress(torch.eye(5), segment_len=40, slot_dim=8)
    assert fa.proj.shape == (40, 5, 8)
    with pytest.raises(ValueError, match="code"):
        FixedAddress(torch.tensor([[float("nan")]]), 4, 8)
    with pytest.raises(ValueError, match="code"):
        stream_memnet(cfg, address="fixed")
    with pytest.raises(ValueError, match="code"):
        stream_memnet(cfg, code=d.symbol_code())


def test_symbol_codes():
    from memnet.tasks.digits import SplitDigits

    d = SplitDigits(seed=0, pool=2)
    code = d.symbol_code()
    assert code.shape == (d.vocab_size, 1) and code[16, 0] == 1 and code[0, 0] == 0 and code[8, 0] == 0.5
    assert (code[d.n_symbols:] == 0).all()  # labels and QUERY never enter an address
    s = ShiftingPrototypes(seed=0)
    c = s.symbol_code()
    assert c.shape == (s.vocab_size, s.n_symbols) and torch.equal(c[: s.n_symbols], torch.eye(s.n_symbols))
    assert (c[s.n_symbols:] == 0).all()


def test_support_set_none_takes_every_training_item(stream):
    x, y = stream.support_set(1, None, seed=3)
    xt, yt = stream.items(1, "train")
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, xt.tolist())) and len(y) == len(yt)


@pytest.mark.parametrize("name", ["memnet", "memnet_fixed"])
def test_query_logits_agree_with_a_forward_pass_on_copies(name):
    p = C.PROFILES["smoke"]
    st = C.make_stream("digits", p, 0)
    torch.manual_seed(0)
    model = C.build(name, C.make_config(p, st), st).eval()
    mem, _ = C.fill(model, st, *st.support_set(None, 3, 0), None, torch.device("cpu"))
    tok, _ = st.query_tokens(*st.items(1, "test"))
    with torch.no_grad():
        want = model(tok, memory=C.expand_state(mem, tok.shape[0])).logits[:, -1]
    torch.testing.assert_close(C.query_logits(model, tok, mem), want)
    with pytest.raises(ValueError, match="one window"):
        C.query_logits(model, tok.repeat(1, 2), mem)


def test_fixed_weights_trained_on_a_small_bank_carry_over():
    p = C.PROFILES["smoke"]
    st = C.make_stream("shift", p, 0)
    cfg = C.make_config(p, st)
    big, small = C.fixed_config(p, st, cfg)
    assert small.num_slots == p.fixed_train_slots and big.num_slots >= st.n_classes * p.fixed_support_per_class
    assert big.decay_mode == "none"
    model, hist = C.trained_fixed(p, st, cfg, 0, 2, 0, torch.device("cpu"), "off", False, "t")
    assert model.cfg.num_slots == big.num_slots and len(hist) >= 1
    trainee = C.build("memnet_fixed", small, st)
    assert set(model.state_dict()) == set(trainee.state_dict())


def test_fill_each_agrees_with_one_fill_per_memory(stream):
    torch.manual_seed(0)
    model = stream_memnet(cfg_for(stream)).eval()
    dev = torch.device("cpu")
    old, _ = C.fill(model, stream, *stream.support_set(0, 3, seed=0), None, dev)
    x, y = stream.support_set(1, 3, seed=1)
    (a, b), tr = C.fill_each(model, stream, x, y, [old, None], dev)
    (want_a, tr_a), (want_b, _) = C.fill(model, stream, x, y, old, dev), C.fill(model, stream, x, y, None, dev)
    for got, want in ((a, want_a), (b, want_b)):
        for f in dataclasses.fields(got):
            torch.testing.assert_close(getattr(got, f.name), getattr(want, f.name), atol=1e-5, rtol=1e-5)
    assert torch.equal(tr.write_alloc, tr_a.write_alloc) and tr.write_events.shape[0] == 1
    with pytest.raises(ValueError, match="memories"):
        C.fill_each(model, stream, x, y, [], dev)


def test_nearest_neighbour_reference_by_hand():
    # noise-free prototypes: every test item equals a stored one, so 1-NN is exact on every task seen
    s = ShiftingPrototypes(n_tasks=3, item_len=5, noise=0.0, train_per_class=2, test_per_class=2, seed=0)
    R = C.nearest_neighbour_matrix(s, 1, None, seed=0)
    np.testing.assert_array_equal(R, np.tril(np.ones((3, 3))))  # unseen classes are never answered
    # two stored copies of every prototype: the 2-NN vote is the same copies' label
    np.testing.assert_array_equal(C.nearest_neighbour_matrix(s, 2, None, seed=0), np.tril(np.ones((3, 3))))
    with pytest.raises(ValueError, match="k"):
        C.nearest_neighbour_matrix(s, 0, None, seed=0)


def test_configurations_are_chosen_on_validation_and_only_chosen_runs_are_reported(tmp_path, monkeypatch):
    """Every configuration of the grid runs on the sweep seed; the chosen one is the argmax of the
    stored validation accuracies (never of the test ones), and only its runs enter the tables."""
    torch.set_num_threads(1)
    tiny = dataclasses.replace(C.PROFILES["smoke"], lrs=(1e-3, 3e-2), er_policies=("reservoir", "balanced"),
                               knn_ks=(1, 5), sweep_seeds=(0,))
    monkeypatch.setitem(C.PROFILES, "tiny", tiny)
    res = C.run("tiny", "cpu", seeds=[0, 1], out_dir=tmp_path, progress=False, streams=["shift"],
                models=["er_lstm", "knn", "ncm"])
    entry = json.loads((tmp_path / "results.json").read_text())["streams"]["shift"]
    for m in ("er_lstm", "knn"):
        sel, runs = entry["selection"][m], [r for r in entry["runs"] if r["model"] == m]
        assert len(sel["grid"]) == 4 if m == "er_lstm" else 2
        sweep = {json.dumps(r["config"], sort_keys=True): r for r in runs if r["seed"] == 0}
        assert len(sweep) == len(sel["grid"])  # every configuration ran on the sweep seed
        val = [np.mean(sweep[json.dumps(c, sort_keys=True)]["R_val"][-1]) for c in sel["grid"]]
        assert sel["validation"] == pytest.approx(val)
        assert sel["chosen"] == sel["grid"][int(np.argmax(val))]
        chosen = [r for r in runs if r["selected"]]
        assert sorted(r["seed"] for r in chosen) == [0, 1] and all(r["config"] == sel["chosen"] for r in chosen)
        assert len(runs) == len(sel["grid"]) + 1  # seed 1 ran the chosen configuration only
    assert entry["selection"]["ncm"]["grid"] == [{}]  # nothing to choose: no sweep
    values = C.seed_values(res, "shift")
    assert len(values["er_lstm"]["acc"]) == 2 and len(values["knn"]["acc"]) == 2
    er = next(r for r in entry["runs"] if r["model"] == "er_lstm" and r["selected"])
    stream = C.make_stream("shift", tiny, 0)
    cfg = C.make_config(tiny, stream)
    # ER stores as many bytes as memnet_replay: its bank and its raw buffer (capped at every training item)
    assert er["buffer_items"] == C.replay_capacity(tiny, stream, cfg)
    assert er["memory_bytes"] == er["buffer_items"] * (stream.item_len + 1)
    want = (C.memnet_state_bytes(cfg) + stream.n_classes * tiny.replay_per_class * (stream.item_len + 1)) \
        // (stream.item_len + 1)
    assert er["buffer_items"] == min(want, stream.items(None, "train")[1].size)


@pytest.mark.parametrize("rising, tried", [(True, [1e-3, 3e-3, 1e-2, 3e-2]), (False, [1e-3, 3e-3])])
def test_the_grid_grows_while_the_best_rate_is_the_largest_tried(tmp_path, monkeypatch, rising, tried):
    calls = []

    def fake_job(p, sname, seed, m, config, device, amp, progress, threads=None):
        calls.append((seed, config["lr"]))
        acc = 10 * config["lr"] if rising else 0.5 - 10 * config["lr"]
        row = [acc] * 5
        return [{"model": m, "seed": seed, "of": m, "config": config, "params": 0, "R": [row] * 5,
                 "R_val": [row] * 5, "baseline_b": [0.1] * 5}], None

    monkeypatch.setattr(C, "_run_job", fake_job)
    tiny = dataclasses.replace(C.PROFILES["smoke"], lrs=(1e-3, 3e-3), lrs_more=(1e-2, 3e-2), sweep_seeds=(0,))
    monkeypatch.setitem(C.PROFILES, "tiny", tiny)
    res = C.run("tiny", "cpu", seeds=[0, 1], save=False, progress=False, streams=["shift"], models=["lstm"], workers=1)
    sel = res["streams"]["shift"]["selection"]["lstm"]
    assert [c["lr"] for c in sel["grid"]] == tried and sel["chosen"]["lr"] == (tried[-1] if rising else tried[0])
    assert sorted(calls) == sorted([(0, lr) for lr in tried] + [(1, sel["chosen"]["lr"])])


def test_jobs_are_cached_and_a_rerun_assembles_the_same_result(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    kw = dict(seeds=[0], progress=False, streams=["shift"], models=["memnet", "er_lstm", "knn"], workers=1)
    first = C.run("smoke", "cpu", out_dir=tmp_path, **kw)
    records = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len([r for r in records if r.endswith(".json")]) == 3  # one per job (no budget axis on this stream)
    assert any(r.startswith("shift_memnet_seed0") and r.endswith(".pt") for r in records)  # its trace beside it

    def refuse(*a, **k):
        raise AssertionError("a cached job ran again")

    monkeypatch.setattr(C, "_run_job", refuse)
    again = C.run("smoke", "cpu", out_dir=tmp_path, **kw)
    assert json.dumps(again["streams"]) == json.dumps(first["streams"])  # as text: NaN entries compare equal
    # a record made under other settings is refused, not reused
    other = dataclasses.replace(C.PROFILES["smoke"], clf_steps=4)
    monkeypatch.setitem(C.PROFILES, "smoke", other)
    with pytest.raises(ValueError, match="clf_steps"):
        C.run("smoke", "cpu", out_dir=tmp_path, **kw)


def test_key_anchor_penalty_is_zero_at_the_start_and_pulls_the_key_encoder(stream):
    torch.manual_seed(0)
    model = C.build("memnet_replay", cfg_for(stream), stream)
    x, y = stream.items(0, "train")
    anchors = stream.support_tokens(x[:6], y[:6]).view(6, -1)
    net = C.KeyAnchored(model, model, anchors, C.segment_keys(model, anchors), 10.0)
    model.eval()  # no dropout: the keys at the start are exactly the targets
    tok, _ = stream.episodes(0, 2, 2, 1, seed=0)
    out = net(tok)
    assert out.aux_losses["key_anchor"].item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    out = net(tok)
    pen = out.aux_losses["key_anchor"]
    assert pen.item() > 1e-3
    pen.backward()
    grads = [prm.grad for prm in model.parameters() if prm.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_memnet_takes_its_memory_interface_at_construction(stream):
    from memnet.continual import SegmentEndWrites

    cfg = cfg_for(stream)
    with pytest.raises(TypeError, match="interface"):
        MemNet(cfg, interface=torch.nn.Linear(2, 2))
    model = stream_memnet(cfg)
    assert isinstance(model.interface, SegmentEndWrites) and model.interface.address == "item"
    plain = MemNet(cfg)
    # the same parameters but the item maps: a plain MemNet's state dict loads into the stream one
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["interface.item_map"] and not unexpected


def test_explorer_slider_spans_the_items_of_the_memory_shown():
    """In the stored run the fixed-address MemNet streams every training item and the carried one
    ten per class: switching the model resizes the item slider (and keeps its value inside)."""
    from memnet import book, widgets
    from memnet.experiments.common import DATA_DIR

    folder = next(DATA_DIR / "continual" / p for p in ("full", "laptop") if (DATA_DIR / "continual" / p).exists())
    loaded = book.load_run(folder)
    box = widgets.continual_explorer(loaded.result, loaded.traces, "digits")
    seed_w, model_w, item_w = box.children[0].children
    count = lambda m: int(loaded.traces[seed_w.value][m]["digits"]["segment_task"].shape[0])
    assert count("memnet_fixed") > count("memnet")
    assert model_w.value == "memnet_fixed" and item_w.max == count("memnet_fixed") - 1
    model_w.value = "memnet"
    assert item_w.max == count("memnet") - 1 and item_w.value == item_w.max
    model_w.value = "memnet_fixed"
    assert item_w.max == count("memnet_fixed") - 1
