"""The cost-of-memory benchmark: the smoke profile runs end to end and stores what chapter 6 reads;
its measurement helpers measure what they claim."""
from __future__ import annotations

import dataclasses
import json
import math
import sys

import pytest
import torch

from memnet import MemNet, MemNetConfig, fused
from memnet.baselines import FullTransformer
import memnet.peers as peers
from memnet.experiments import bench
from memnet.memory import StreamingMemory


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = bench.run("smoke", "cpu", out_dir=out, save=True, progress=False)
    return res, out


def test_smoke_run_is_stored_with_every_part(smoke_result):
    res, out = smoke_result
    stored = json.loads((out / "results.json").read_text())
    assert stored["experiment"] == "bench" and stored["profile"] == "smoke"
    assert {"git_commit", "device", "torch", "wall_s", "seed"} <= set(stored["provenance"])
    p = bench.PROFILES["smoke"]
    models = {r["model"] for r in stored["seq_len"]}
    assert models == set(p.models)
    assert len(stored["seq_len"]) == len(p.models) * len(p.seq_lens)
    assert [r["num_slots"] for r in stored["slots"]] == list(p.slots)
    assert [r["top_k"] for r in stored["top_k"]] == list(p.top_ks)
    assert [r["tokens_seen"] for r in stored["streaming"]["memnet"]] == list(p.checkpoints)
    for r in stored["seq_len"]:
        assert "skipped" in r or (r["us_per_token"] > 0 and r["autograd_mb"] > 0)
    assert stored["read"]["copy_gbps"] > 0 and stored["read"]["read_token_gbps"] > 0
    assert "summary" in stored and "ratios" in stored["summary"]
    wins = stored["windows"]
    assert [(r["model"], r["segment_len"]) for r in wins] == [(m, L) for L in p.windows for m in ("memnet", "windowed")]
    assert all(r["writes_per_segment"] == min(p.window_writes, r["segment_len"]) and r["T"] == p.window_T for r in wins)
    best = stored["summary"]["window_best"]
    assert best["us_per_token"] == min(r["us_per_token"] for r in wins if r["model"] == "memnet")
    if "cores" in stored:  # only where torch's default uses more threads than the profile
        assert stored["cores"]["threads"] > stored["threads"]
        assert {r["model"] for r in stored["cores"]["rows"]} == {"full", "memnet"}
        assert stored["read"]["cores"]["threads"] == stored["cores"]["threads"]
    assert ("peers_cores" in stored) == ("cores" in stored)  # the peers' step on every core, where the run has fewer
    if "peers_cores" in stored:
        assert stored["peers_cores"]["threads"] == stored["cores"]["threads"]
        assert stored["summary"]["peers_cores"] == bench.peers_summary(stored["peers_cores"])
        assert sum(line.startswith("training throughput, forward+backward+AdamW")
                   for line in bench.summary_table(stored).splitlines()) == 2
    assert "training, forward+backward" in bench.summary_table(stored)


def test_streaming_state_is_constant_and_kv_cache_grows(smoke_result):
    res, _ = smoke_result
    sizes = {r["state_bytes"] for r in res["streaming"]["memnet"]}
    assert len(sizes) == 1
    kv = [r["cache_bytes"] for r in res["streaming"]["full_kv"]]
    assert kv == sorted(kv) and kv[-1] > kv[0]
    cfg = bench.make_config(bench.PROFILES["smoke"])
    t = res["streaming"]["full_kv"][-1]["tokens_seen"]
    assert kv[-1] == 2 * cfg.n_layers * t * cfg.d_model * 4  # K and V, every layer, float32


def test_saved_tensor_bytes_counts_autograd_memory_linearly_in_length():
    """Autograd memory of MemNet grows linearly with T (2x tokens -> about 2x saved bytes)."""
    cfg = bench.make_config(bench.PROFILES["smoke"])
    torch.manual_seed(0)
    model = MemNet(cfg)
    mb = [bench.measure_training(model, T, cfg.vocab_size, torch.device("cpu"), 1, None)["autograd_mb"]
          for T in (64, 128)]
    assert 1.7 < mb[1] / mb[0] < 2.3
    with bench.SavedTensorBytes() as s:
        x = torch.randn(1000, requires_grad=True)
        (x * x).sum().backward()
    assert s.nbytes == 4000  # x saved once (both operands share one storage)


def test_full_decode_matches_the_full_forward():
    """The KV-cache decoder uses FullTransformer's own layers: decoding the second half against a cache
    of the first half gives the logits of one forward pass over the whole sequence."""
    cfg = MemNetConfig(vocab_size=20, d_model=32, n_heads=4, segment_len=8, num_slots=16, top_k=2, mem_heads=2)
    torch.manual_seed(0)
    model = FullTransformer(cfg).eval()
    x = torch.randint(0, 20, (1, 24))
    with torch.no_grad():
        ref = model(x).logits
    hd = cfg.d_model // cfg.n_heads
    cache = [(torch.zeros(1, cfg.n_heads, 24, hd), torch.zeros(1, cfg.n_heads, 24, hd)) for _ in range(cfg.n_layers)]
    first = bench.full_decode(model, cache, x[:, :16], 0)
    assert torch.allclose(first, ref[:, :16], atol=1e-5)
    second = bench.full_decode(model, cache, x[:, 16:], 16, prev=x[:, 15:16])  # the token shift reads one back
    assert torch.allclose(second, ref[:, 16:], atol=1e-5)


def test_stable_topk_bench_read_agrees_with_streaming_state():
    """The bandwidth measurement reads the streaming bank's unit keys: they are the normalised keys."""
    cfg = bench.make_config(bench.PROFILES["smoke"])
    model = MemNet(cfg).eval()
    mem = StreamingMemory(model.memory)
    model.stream(torch.randint(0, cfg.vocab_size, (1, 4 * cfg.segment_len)), mem)
    k = mem.to_state().keys[0]
    assert torch.allclose(mem.unit, torch.nn.functional.normalize(k, dim=-1), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="profile"):
        bench.run("huge", save=False)
    with pytest.raises(ValueError, match="parts"):
        bench.run("smoke", save=False, parts=("nope",))
    with pytest.raises(ValueError, match="peers_models"):
        bench.peer_entries(bench.Profile(peers_models=("nope",)))


def test_compiled_point_and_its_table_lines():
    """The compile measurement's record (aot_eager keeps it to seconds) and how the table prints it,
    including a point that could not compile."""
    p = bench.PROFILES["smoke"]
    torch.manual_seed(0)
    model = MemNet(bench.make_config(p))
    rec = bench._compiled_point(model, lambda m: m.compile_memory(backend="aot_eager"), "model.compile_memory()",
                                64, p, torch.device("cpu"), None, 1, torch_step=True)
    assert rec["T"] == 64 and rec["segment_len"] == p.segment_len and model._compiled_step is not None
    assert rec["torch_step_us_per_token"] > 0 and rec["fused_step"] == (fused.status() == "native")
    assert model.memory.fused  # the torch step was timed, and the default put back
    assert rec["compiled_us_per_token"] > 0 and rec["speedup"] == pytest.approx(
        rec["eager_us_per_token"] / rec["compiled_us_per_token"])

    def fail(m):
        raise RuntimeError("no compiler here\nsecond line")

    bad = bench._compiled_point(MemNet(bench.make_config(p)), fail, "x", 64, p, torch.device("cpu"), None, 1)
    assert bad["error"] == "RuntimeError: no compiler here" and "compiled_us_per_token" not in bad
    lines = bench.summary_table({"threads": 1, "compile": {"memory_step": rec, "controller": bad}}).splitlines()
    assert any(line.startswith("model.compile_memory() at T=64") and f"({rec['speedup']:.2f}x)" in line
               and f"the step as torch operations {rec['torch_step_us_per_token']:.1f}" in line for line in lines)
    assert any(line.startswith("x at T=64") and "not compiled: RuntimeError" in line for line in lines)
    with pytest.raises(ValueError, match="compile_points"):
        bench.measure_compile(bench.Profile(compile_points=("nope",)), torch.device("cpu"), None, False)


def test_steady_allocator_pins_glibc_malloc():
    """On Linux with glibc every mallopt setting is accepted and reported; elsewhere nothing is applied."""
    import platform

    applied = bench.steady_allocator()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied == bench.STEADY_MALLOC
    else:
        assert applied is None


def test_stored_run_tables():
    """The stored laptop run's training and streaming tables come out of format_table with every
    measured number in its row."""
    from memnet.experiments.common import DATA_DIR

    res = json.loads((DATA_DIR / "bench" / "laptop" / "results.json").read_text())
    if "peers" not in res:  # a run stored before the peers part: its summary is made without it
        assert "peers" not in bench.summarize(res)
    lines = bench.summary_table(res).splitlines()
    assert lines[0].startswith("training, forward+backward") and lines[1].split()[:2] == ["model", "params"]
    assert lines[1].split()[2:] == [str(T) for T in sorted({r["T"] for r in res["seq_len"]})]
    assert set(lines[2]) == {"-", " "}  # format_table's rule under the header
    for name, params in res["params"].items():
        row = next(line for line in lines if line.split()[:2] == [name, str(params)])
        for r in (r for r in res["seq_len"] if r["model"] == name):
            assert ("skipped" if "skipped" in r else f"{r['us_per_token']:.1f} ({r['autograd_mb']:.0f})") in row
    head = next(k for k, line in enumerate(lines) if line.startswith("tokens seen"))
    kv = {r["tokens_seen"]: r for r in res["streaming"]["full_kv"]}
    for line, r in zip(lines[head + 2:], res["streaming"]["memnet"]):
        k = kv[r["tokens_seen"]]
        assert line.split() == [str(r["tokens_seen"]), f"{r['us_per_token']:.1f}", f"{r['vs_start']:.2f}",
                                f"{r['vs_start_of_minima']:.2f}", f"{r['state_bytes'] / 2**20:.2f}",
                                f"{k['us_per_token']:.1f}", f"{k['cache_bytes'] / 2**20:.1f}"]


def test_peers_part_at_smoke(smoke_result):
    """Every model of the peers part that can run gives finite positive tokens/s at the budget; the
    others are rows with a reason; the summary's ratios are those of the recorded times; the table
    has a row per model."""
    res, out = smoke_result
    stored = json.loads((out / "results.json").read_text())
    p = bench.PROFILES["smoke"]
    part = stored["peers"]
    assert (part["B"], part["T"], part["threads"]) == (p.peers_B, p.peers_T, stored["threads"])
    assert part["rounds"] == p.repeats
    rows = {r["name"]: r for r in part["rows"]}
    assert list(rows) == [f"memnet_{N}" for N in p.peers_slots] + list(p.peers_models) + list(bench.SPARSE_DNC)
    missing = peers.available()
    for name, r in rows.items():
        if name in bench.SPARSE_DNC or missing.get(name):
            assert r["not_run"]  # the sparse DNCs have no adapter, and no CPU path in dnc 1.1.0
            continue
        assert "not_run" not in r, r
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and r["finite_loss"]
        assert r["tokens_per_s"] == pytest.approx(p.peers_B * p.peers_T / r["time_s"])
        assert r["us_per_token"] == pytest.approx(1e6 * r["time_s"] / (p.peers_B * p.peers_T))
        assert r["repeats"] == part["rounds"] and r["time_s"] <= r["median_s"]
        assert abs(r["params"] / part["budget"] - 1) < 0.15  # the peers' tolerance; the baselines' is 10%
    assert rows["dnc"]["memory"] == f"{p.peers_slots[0]} cells"  # DNCPeer: one cell per slot of the config
    s = stored["summary"]["peers"]
    base = rows[f"memnet_{p.peers_slots[0]}"]
    assert s["memnet"] == base["name"]
    assert s["tokens_per_s"] == {n: r["tokens_per_s"] for n, r in rows.items() if "not_run" not in r}
    assert s["not_run"] == {n: r["not_run"] for n, r in rows.items() if "not_run" in r}
    if "not_run" not in rows["dnc"]:
        assert s["memnet_vs_dnc_tokens_per_s"] == pytest.approx(rows["dnc"]["time_s"] / base["time_s"])
    assert s["memnet_slots_time_ratio"] == pytest.approx(
        {str(N): rows[f"memnet_{N}"]["time_s"] / base["time_s"] for N in p.peers_slots[1:]})
    assert s["memnet_vs_windowed_time_per_token"] == pytest.approx(base["time_s"] / rows["windowed"]["time_s"])
    assert s == bench.peers_summary(part)
    lines = bench.summary_table(stored).splitlines()
    head = next(k for k, line in enumerate(lines) if line.startswith("training throughput, forward+backward+AdamW"))
    assert f"B={p.peers_B}, T={p.peers_T}" in lines[head]
    for name, r in rows.items():
        if "not_run" in r:
            assert f"  {name}: not run: {r['not_run']}" in lines
        else:
            row = next(line for line in lines[head + 3:] if line.split()[0] == name)
            assert f"{r['tokens_per_s']:.0f}" in row.split() and str(r["params"]) in row.split()
    assert any(line.startswith(f"tokens/s {base['name']} / dnc:") for line in lines) == ("not_run" not in rows["dnc"])


class _Failing(torch.nn.Module):
    """A peer whose first step raises."""

    def __init__(self, cfg):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens):
        raise RuntimeError("no kernel for this\nsecond line")


def test_peers_part_records_what_did_not_run(monkeypatch):
    """A missing package (here dnc, the sparse DNCs with it) and a peer whose first step fails are rows
    with the reason; the other models still run, and the ratios that need them are left out."""
    monkeypatch.setitem(sys.modules, "dnc", None)  # makes `import dnc` fail
    monkeypatch.setitem(peers.PEERS, "rmt", _Failing)
    p = dataclasses.replace(bench.PROFILES["smoke"], peers_slots=(16,), peers_models=("dnc", "rmt", "lstm"), peers_T=16)
    part = bench.measure_peers(p, torch.device("cpu"), None, False)
    rows = {r["name"]: r for r in part["rows"]}
    assert list(rows) == ["memnet_16", "dnc", "rmt", "lstm", "sam", "sdnc"]
    for name in ("dnc", "sam", "sdnc"):
        assert rows[name]["not_run"].startswith("package missing: ") and "dnc" in rows[name]["not_run"]
    assert rows["rmt"]["not_run"] == "its first step failed: RuntimeError: no kernel for this"
    assert all(rows[n]["tokens_per_s"] > 0 for n in ("memnet_16", "lstm"))
    s = bench.peers_summary(part)
    assert "memnet_vs_dnc_tokens_per_s" not in s and "memnet_vs_windowed_time_per_token" not in s
    assert s["memnet_slots_time_ratio"] == {} and set(s["not_run"]) == {"dnc", "rmt", "sam", "sdnc"}
    lines = bench.peers_table(part)
    assert "  dnc: not run: " + rows["dnc"]["not_run"] in lines
    assert not any(line.startswith("tokens/s") for line in lines)
