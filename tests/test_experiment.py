"""The long-range experiment runs end to end at the smoke profile and reports what it should."""
import pytest

from memnet.experiments import long_range


def test_smoke_profile_runs_and_reports(tmp_path):
    res = long_range.run("smoke", device="cpu", out_dir=tmp_path, save=True, progress=False)
    assert {r["model"] for r in res["runs"]} == {"memnet", "windowed", "lstm"}
    dists = res["distances"]
    assert dists == sorted(dists) and dists[-1] == 8 * res["window"]
    for r in res["runs"]:
        assert set(r["accuracy"]) == set(dists)
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    mem = next(r for r in res["runs"] if r["model"] == "memnet")
    assert set(mem["slot_reuse"]) == set(dists) and set(mem["read_sparsity"]) == set(dists)
    prov = res["provenance"]
    for key in ("git_commit", "device", "torch", "seed", "wall_s"):
        assert key in prov
    assert (tmp_path / "results.json").exists() and (tmp_path / "trace_seed0.pt").exists()
    table = long_range.summary_table(res)
    assert "memnet" in table and "windowed" in table and "8x" in table


def test_unknown_profile_or_model_is_rejected():
    with pytest.raises(ValueError, match="profile"):
        long_range.run("huge", save=False)
    with pytest.raises(ValueError, match="models"):
        long_range.run("smoke", models=["gru"], save=False)
