"""memnet.plots, memnet.widgets and memnet.book on a tiny traced model (fast: no training)."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from helpers import png_size_and_dpi, rand_tokens, tiny_model  # noqa: E402
from memnet import book, plots  # noqa: E402
from memnet.memory import MultiHeadMemoryBank, WriteRequest  # noqa: E402
from memnet.survival import item_occupancy  # noqa: E402
from memnet.trace import MemoryTrace  # noqa: E402

B, T = 2, 22  # tiny_cfg: segment_len 4 -> S = 6 segments (the last padded), 16 slots, 2 heads, top_k 2


@pytest.fixture(scope="module")
def trace() -> MemoryTrace:
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        return model(rand_tokens(B, T), return_trace=True).trace


@pytest.fixture(autouse=True)
def every_figure_fits_the_column(monkeypatch):
    """Every figure a test here draws through memnet.plots fits the book's column with no legend over
    a panel's data (memnet.plots.layout_problems)."""
    made = []

    class Recorded(Figure):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(plots, "Figure", Recorded)
    yield
    for fig in made:
        assert plots.layout_problems(fig) == [], [ax.get_title() for ax in fig.axes]


def test_figures_are_column_wide_at_150_dpi_and_too_wide_ones_are_refused(trace):
    w, h, dpi = png_size_and_dpi(plots.figure_png(plots.trace_overview(trace)))
    assert round(dpi) == plots.DPI >= 150
    assert w <= (plots.COLUMN_WIDTH + 2 * plots.PAD) * dpi + 1  # the tight box and its margin
    with pytest.raises(ValueError, match="figsize"):
        plots.new_figure(1, 3, figsize=(12, 3))
    with pytest.raises(ValueError, match="figsize"):
        plots.new_figure(figsize=(4, 0))


def test_layout_problems_sees_a_legend_over_the_data_and_a_wide_figure():
    fig = Figure(figsize=(9, 3))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="line")
    ax.legend(loc="center")
    problems = plots.layout_problems(fig)
    assert len(problems) == 2 and "wide" in problems[0] and "legend (line" in problems[1]
    fig, axes = plots.new_figure(1, 2)
    for ax in axes[0]:
        ax.plot([0, 1], [0, 1], label="line")
    plots.legend_outside(axes[0, 0], "below")
    plots.legend_outside(axes[0, 1], "right")
    assert plots.layout_problems(fig) == []
    with pytest.raises(ValueError, match="where"):
        plots.legend_outside(axes[0, 0], "inside")


def image_shape(ax) -> tuple[int, ...]:
    return ax.get_images()[0].get_array().shape


def test_read_matrix_shapes(trace):
    N = trace.num_slots
    assert plots.read_matrix(trace).shape == (N, T)  # padding tokens dropped
    assert plots.read_matrix(trace, per="segment").shape == (N, trace.num_segments)
    m = plots.read_matrix(trace, head=None)
    np.testing.assert_allclose(m.sum(0), trace.read_weight.shape[3], rtol=1e-5)  # each head sums to 1
    np.testing.assert_allclose(plots.read_matrix(trace, head=1).sum(0), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="per"):
        plots.read_matrix(trace, per="window")


def test_heatmaps_have_slot_by_time_axes(trace):
    N, S = trace.num_slots, trace.num_segments
    fig = plots.read_heatmap(trace, head=0)
    assert isinstance(fig, Figure) and image_shape(fig.axes[0]) == (N, T)
    fig = plots.write_heatmap(trace)
    assert image_shape(fig.axes[0]) == (N, S)
    assert fig.axes[0].get_xlabel() == "segment" and fig.axes[0].get_ylabel() == "slot"
    fig = plots.state_heatmaps(trace)
    imgs = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    assert [ax.get_title() for ax in imgs] == ["age", "usage", "retention"]
    assert all(image_shape(ax) == (N, S) for ax in imgs)
    fig = plots.trace_overview(trace)
    assert sum(1 for ax in fig.axes if ax.get_images()) == 4
    assert plots.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_multiples_panels(trace):
    fig = plots.small_multiples(trace, ncols=3, max_panels=6)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == min(6, trace.num_segments)
    L, N = trace.valid.shape[-1], trace.num_slots
    assert all(image_shape(ax) == (N, L) for ax in panels)
    fig = plots.small_multiples(trace, segments=[0, 2], head=1)
    assert len([ax for ax in fig.axes if ax.get_images()]) == 2


def fake_result(seeds=(0, 1), models=("memnet", "windowed", "lstm")) -> dict:
    dists = [2, 4, 8, 16]
    rng = np.random.default_rng(0)
    runs = []
    for s in seeds:
        for m in models:
            acc = {str(d): float(rng.uniform(0, 1)) for d in dists}
            r = {"model": m, "seed": s, "accuracy": acc, "train_s": 1.0}
            if m == "memnet":
                r["slot_reuse"] = {str(d): {"events_per_segment": 2.0, "reuse_rate": 0.1, "distinct_slots": 5.0,
                                            "overwrites_per_segment": 0.2} for d in dists}
                r["read_sparsity"] = {str(d): {"entropy": 1.0, "effective_slots": 2.5, "top1_mass": 0.5,
                                               "max_entropy": 1.38} for d in dists}
            runs.append(r)
    return {"distances": dists, "window": 4, "chance": 1 / 16, "runs": runs, "profile": "smoke",
            "config": {"top_k": 4, "num_slots": 16, "mem_heads": 2},
            "profile_settings": {"eval_batch": 8, "eval_batches": 1}, "task": {"n_pairs": 2},
            "provenance": {"seed": list(seeds), "device": "cpu", "torch": torch.__version__}}


@pytest.mark.parametrize("logx, xs", [(True, [0, 1, 4, 64]), (True, [1 / 16, 0.5, 2]), (False, [1, 2, 3])])
def test_accuracy_curves_draw_one_line_per_model(logx, xs):
    curves = {m: {"x": xs, "mean": [0.5] * len(xs), "ci": [0.1] * (len(xs) - 1) + [float("nan")]}
              for m in ("memnet", "full", "rmt")}
    fig = plots.accuracy_curves(curves, xlabel="delay", title="t", chance=0.01, logx=logx, mark_x=xs[1], mark_label="m")
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # one errorbar container per model
    assert ax.get_xscale() == ("linear" if not logx else "symlog" if min(xs) <= 0 else "log")
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"MemNet", "FullTransformer", "RMT", "chance"}
    line = ax.containers[0].lines[0]
    assert np.allclose(line.get_ydata(), 50.0)


def test_training_curves_draw_one_line_per_model_with_the_reference_lines():
    curves = {m: {"x": [50, 100, 150], "y": [1.0, 0.9, y]} for m, y in (("memnet", 0.1), ("titans", 0.95))}
    fig = plots.training_curves(curves, title="t", plateau=0.8, budget=100)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["MemNet", "Titans (MAC)", "guessing", "left the plateau"]
    assert np.allclose(ax.lines[0].get_ydata(), [1.0, 0.9, 0.1]) and np.allclose(ax.lines[1].get_xdata(), [50, 100, 150])
    assert any(np.allclose(line.get_xdata(), 100) for line in ax.lines[2:]), "the budget's mark"


def test_item_occupancy_follows_value_writes(trace):
    # a recall-like layout: value at position 1 queried at position 13 (distance 12)
    targets = torch.full((B, T), -100)
    distance = torch.zeros(B, T, dtype=torch.long)
    targets[:, 13], distance[:, 13] = 3, 12
    occ = item_occupancy(trace, None, targets, distance, batch=0)
    assert occ["owner"].shape == (trace.num_slots, trace.num_segments)
    assert len(occ["slots"]) == len(occ["hits"]) == 1
    slot = occ["slots"][0]
    assert slot == int(trace.write_alloc[0, 0][trace.write_pos[0, 0] == 1][0])
    assert occ["owner"][slot, 0] == 0 and occ["signal"][slot, 0] == 1.0
    assert occ["query_read"].shape == (1, trace.num_slots)
    fig = plots.item_occupancy_heatmap(occ, L=4)
    assert fig.axes[0].get_images()[0].get_array().shape == (trace.num_slots, trace.num_segments, 3)


def test_explorer_widget(trace):
    widgets = pytest.importorskip("memnet.widgets")
    box = widgets.explorer(trace, segment=1, slot=3)
    sliders = box.children[0].children
    seg, head, slot = sliders
    assert (seg.min, seg.max, seg.value) == (0, trace.num_segments - 1, 1)
    assert (slot.max, slot.value) == (trace.num_slots - 1, 3)
    assert [v for _, v in head.options] == [-1, 0, 1]
    fig = widgets.draw_view(trace, segment=2, head=0, slot=5)
    assert image_shape(fig.axes[0]) == (trace.num_slots, trace.valid.shape[-1])
    head.value = 1  # redraws without error
    with pytest.raises(TypeError, match="MemoryTrace"):
        widgets.explorer({"not": "a trace"})


def test_static_views_choose_within_the_budget():
    widgets = pytest.importorskip("memnet.widgets")
    W = pytest.importorskip("ipywidgets")
    seg = W.IntSlider(value=5, min=0, max=39)
    head = W.Dropdown(options=[("all", -1), ("0", 0), ("1", 1)], value=0)
    views = widgets.static_views([seg, head], max_frames=24)
    assert len(views[0]) <= 24 and 5 in views[0] and views[0][0] == 0 and views[0][-1] == 39
    assert views[1] == [1]  # no room left: the head stays as shown (index 1: value 0)
    assert widgets.static_views([seg, head], vary=(1,), max_frames=24) == [[5], [0, 1, 2]]
    assert widgets.static_views([W.IntSlider(value=2, min=0, max=3), head], max_frames=12) == [[0, 1, 2, 3], [0, 1, 2]]
    with pytest.raises(TypeError, match="IntSliders or selection"):
        widgets.static_views([W.FloatSlider(value=0.5)])
    for bad in ((2,), (0, 0), (-1,)):
        with pytest.raises(ValueError, match="vary must name"):
            widgets.live_figure([seg, head], lambda *v: None, vary=bad)
    with pytest.raises(ValueError, match="max_frames"):
        widgets.static_views([seg], max_frames=-1)


def test_static_player_holds_the_live_views(trace):
    """Every view of the player is the PNG the live explorer draws for the same values (agreement),
    the first is the view shown, and the controls name what they move."""
    widgets = pytest.importorskip("memnet.widgets")
    box = widgets.explorer(trace, segment=1, slot=3)
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    page = bundle["text/html"]
    spec = json.loads(re.search(r'<script type="application/json">(.*?)</script>', page, re.S).group(1))
    assert spec["chosen"] == [list(range(trace.num_segments)), [0], [3]]  # every segment; head "all", slot 3
    assert len(spec["frames"]) == trace.num_segments
    for seg in (0, trace.num_segments - 1):
        live = plots.figure_png(widgets.draw_view(trace, seg, None, 3))
        assert base64.b64decode(spec["frames"][f"{seg}|0|3"]) == live
    first = re.search(r'<img src="data:image/png;base64,([^"]+)"', page).group(1)
    assert first == spec["frames"]["1|0|3"]
    assert 'type="range"' in page and "held at head all, slot 3" in page
    assert widgets.live_figure(box.controls, lambda *v: widgets.draw_view(trace, 0), max_frames=0) \
        ._repr_mimebundle_().get("text/html") is None


def test_setup_seeds_and_resolves(capsys):
    s = book.setup("smoke", "cpu", seed=3)
    assert s.device == torch.device("cpu") and s.seed == 3
    a = torch.rand(1)
    book.setup("smoke", "cpu", seed=3, quiet=True)
    assert torch.equal(a, torch.rand(1))
    assert "profile=smoke" in capsys.readouterr().out
    with pytest.raises(ValueError, match="profile"):
        book.setup("huge")


def test_run_bank_trace_matches_memnet_fields(trace):
    cfg = tiny_model().cfg
    bank = MultiHeadMemoryBank(cfg)
    S, L, H, D, W = 3, cfg.segment_len, cfg.mem_heads, cfg.slot_dim, 2
    g = torch.Generator().manual_seed(0)
    reqs = [WriteRequest(torch.randn(1, W, D, generator=g), torch.randn(1, W, D, generator=g), torch.full((1, W), 0.9),
                         torch.full((1, W, D), 0.5), torch.zeros(1, W), torch.zeros(1, D)) for _ in range(S)]
    state, tr = book.run_bank(bank, torch.randn(1, S, L, H, D, generator=g), reqs)
    assert set(tr.as_dict()) == set(trace.as_dict())
    assert tr.write_strength.shape == (1, S, cfg.num_slots) and tr.read_weight.shape == (1, S, L, H, cfg.top_k)
    assert int(tr.write_events[0, 0].sum()) == W and state.age.shape == (1, cfg.num_slots)
    with pytest.raises(ValueError, match="one WriteRequest per segment"):
        book.run_bank(bank, torch.randn(1, S, L, H, D), reqs[:1])


def write_stored_run(folder, trace, profile="laptop"):
    folder.mkdir(parents=True, exist_ok=True)
    res = fake_result((0,))
    res["profile"] = profile
    (folder / "results.json").write_text(json.dumps(res))
    torch.save({"tokens": torch.zeros(B, T, dtype=torch.long), "targets": torch.full((B, T), -100),
                "distance": torch.zeros(B, T, dtype=torch.long), "trace": trace.as_dict()}, folder / "trace_seed0.pt")


def test_load_or_train_prefers_gpu_then_laptop(tmp_path, trace):
    assert book.find_stored_run("long_range", tmp_path) is None
    write_stored_run(tmp_path / "long_range" / "laptop", trace, "laptop")
    assert book.find_stored_run("long_range", tmp_path).name == "laptop"
    write_stored_run(tmp_path / "long_range" / "gpu", trace, "gpu")
    run = book.load_or_train("stored", data_dir=tmp_path)
    assert run.source == "stored" and run.profile == "gpu" and run.path.name == "gpu"
    assert isinstance(run.traces[0]["trace"], MemoryTrace)
    torch.testing.assert_close(run.traces[0]["trace"].write_strength, trace.write_strength)
    assert "profile gpu" in run.describe()
    with pytest.raises(ValueError, match="profile"):
        book.load_or_train("tiny", data_dir=tmp_path)


def test_load_or_train_without_stored_run_trains_smoke_and_says_so(tmp_path, monkeypatch, capsys):
    from memnet.experiments import long_range

    calls = []

    def fake_run(profile, device, seeds=None, out_dir=None, save=True, progress=True, **kw):
        calls.append((profile, save, out_dir))
        write_stored_run(out_dir, fake_trace(), profile)
        return {}

    def fake_trace():
        model = tiny_model()
        with torch.no_grad():
            return model(rand_tokens(1, 8), return_trace=True).trace

    monkeypatch.setattr(long_range, "run", fake_run)
    run = book.load_or_train("stored", data_dir=tmp_path)
    assert calls[0][0] == "smoke" and run.source == "trained" and run.path is None
    assert "No stored run" in capsys.readouterr().out
    assert not (tmp_path / "long_range").exists()  # nothing stored
    run = book.load_or_train("smoke", save=True, data_dir=tmp_path)
    assert (tmp_path / "long_range" / "smoke" / "results.json").is_file() and run.source == "trained"


def test_forgetting_curves_wrap_into_rows():
    R = np.tril(np.ones((3, 3))).tolist()
    runs = [{"model": m, "seed": 0, "R": R} for m in ("a", "b", "c", "d")] + [{"model": "a_joint", "final": [1, 1, 1]}]
    res = {"streams": {"s": {"stream": {"n_tasks": 3}, "runs": runs}}}
    fig = plots.forgetting_curves(res, "s", ["a", "b", "c", "d"], joint={"a": "a_joint"}, ncols=3)
    axes = fig.axes
    assert len(axes) == 6 and [ax.get_visible() for ax in axes] == [True] * 4 + [False] * 2
    assert len(axes[0].lines) == 3 + 3  # one curve per task, one dotted joint line per task
    one_row = plots.forgetting_curves(res, "s", ["a", "b"])
    assert len(one_row.axes) == 2


def test_unselected_sweep_runs_stay_out_of_the_continual_figures():
    R, bad = np.tril(np.ones((3, 3))).tolist(), np.zeros((3, 3)).tolist()
    runs = [{"model": "a", "seed": 0, "R": R, "selected": True}, {"model": "a", "seed": 0, "R": bad, "selected": False},
            {"model": "b", "seed": 0, "R": R}]  # a run stored before selection counts as selected
    res = {"streams": {"s": {"stream": {"n_tasks": 3}, "runs": runs}}}
    assert plots.continual_matrices(res, "s", "a").shape == (1, 3, 3)
    assert plots.continual_matrices(res, "s", "a").min() == 0 and plots.continual_matrices(res, "s", "a")[0, 2, 2] == 1
    assert plots.continual_matrices(res, "s", "b").shape == (1, 3, 3)


def test_memory_budget_curve_draws_seed_means_at_each_budget():
    points = [{"model": m, "seed": s, "per_class": b, "memory_bytes": b * k, "acc": a + 0.01 * s}
              for m, k, a in (("x", 17, 0.5), ("y", 300, 0.8)) for b in (10, 30) for s in (0, 1, 2)]
    ax = plots.memory_budget_curve(points)
    lines = [c.lines[0] for c in ax.containers]  # each model's data line (not its error-bar caps)
    assert [c.get_label() for c in ax.containers] == ["x", "y"]
    xs = sorted(tuple(ln.get_xdata()) for ln in lines)
    assert xs == [(170, 510), (3000, 9000)]
    ys = sorted(tuple(np.round(ln.get_ydata(), 6)) for ln in lines)
    assert ys == [(51.0, 51.0), (81.0, 81.0)]  # mean of a, a + 1, a + 2 points
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y"]


def test_key_drift_curve_skips_the_first_task_and_rejects_a_model_without_drift():
    runs = [{"model": "m", "seed": s, "task_drift": [float("nan"), 0.9, 0.8, 0.7 + 0.1 * s]} for s in (0, 1)]
    res = {"streams": {"s": {"runs": runs}}}
    ax = plots.key_drift_curve(res, "s", ["m"])
    line = ax.lines[0]
    assert list(line.get_xdata()) == [2, 3, 4] and np.allclose(line.get_ydata(), [0.9, 0.8, 0.75])
    with pytest.raises(ValueError, match="task_drift"):
        plots.key_drift_curve(res, "s", ["other"])


# ---------------------------------------------------------------------------- forgetting (chapter 5)
def test_survival_by_type_draws_one_line_per_configuration_and_type_with_the_given_values():
    curves = {"a": {"useful": [1.0, 0.8, 0.5], "distractor": [1.0, 0.4, 0.1]}, "b": {"useful": [1.0, 1.0, 0.9]}}
    ax = plots.survival_by_type(curves, title="t").axes[0]
    assert len(ax.lines) == 3
    assert np.allclose(ax.lines[1].get_ydata(), [1.0, 0.4, 0.1]) and ax.lines[1].get_linestyle() == "--"
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a: useful", "a: distractor", "b: useful"]


def test_hazard_by_age_hides_ages_with_too_few_items_held():
    hz = {"a": {"useful": (np.array([0.1, 0.5, 1.0]), np.array([100, 30, 2]))}}
    ax = plots.hazard_by_age(hz, min_at_risk=20).axes[0]
    y = np.asarray(ax.lines[0].get_ydata(), dtype=float)
    assert np.allclose(y[:2], [0.1, 0.5]) and np.isnan(y[2])
    assert np.allclose(ax.lines[0].get_xdata(), [1, 2, 3])


def test_probe_by_age_plots_accuracy_and_leaves_out_ages_without_probes():
    acc = {"a": {"useful": {1: (10, 9), 2: (0, 0), 4: (20, 5)}}}
    ax = plots.probe_by_age(acc, chance=0.1).axes[0]
    assert np.allclose(ax.lines[0].get_xdata(), [1, 4]) and np.allclose(ax.lines[0].get_ydata(), [0.9, 0.25])
    assert any(np.allclose(line.get_ydata(), 0.1) for line in ax.lines[1:]), "the chance line"


def test_occupancy_map_colours_each_type_and_leaves_empty_slots_white():
    own = np.array([[-1, 0, 0], [1, 1, -1]])
    img = plots.occupancy_map(own, ("useful", "distractor")).axes[0].get_images()[0].get_array()
    assert img.shape == (2, 3, 3)
    assert np.allclose(img[0, 0], 1.0) and np.allclose(img[1, 2], 1.0)
    assert not np.allclose(img[0, 1], img[1, 0])
    assert np.allclose(img[0, 1], img[0, 2])


def test_seeds_and_references_draw_every_seed_its_mean_and_each_reference():
    ax = plots.seeds_and_references({"a": [0.2, 0.4], "b": [0.9]}, {"ceiling": 0.8, "floor": 0.1}).axes[0]
    from matplotlib.collections import LineCollection, PathCollection

    dots = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    assert np.allclose(dots[0], [[0, 0.2], [0, 0.4]]) and np.allclose(dots[1], [[1, 0.9]])
    means = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert np.allclose([m.get_segments()[0][0][1] for m in means], [0.3, 0.9])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ceiling", "floor"]
    assert [line.get_linestyle() for line in ax.lines] == [":", "--"]


def test_probe_held_vs_gone_draws_one_bar_per_state_with_its_accuracy():
    acc = {"a": {"held": {"useful": (10, 9), "distractor": (4, 2)}, "gone": {"useful": (0, 0), "distractor": (5, 1)}}}
    ax = plots.probe_held_vs_gone(acc, chance=0.1).axes[0]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.2, 0.5, 0.9]  # the useful "gone" bar has no probe: left out
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["a: item gone", "a: item held", "chance"]


def test_join_words_reads_as_prose():
    from memnet.book import join_words

    assert [join_words(x) for x in ([], ["a"], ["a", "b"], ["a", "b", "c"])] == ["", "a", "a and b", "a, b and c"]


def test_book_table_escapes_cells_and_aligns_the_asked_columns(monkeypatch):
    from IPython import display as ipd

    from memnet import book

    shown = []
    monkeypatch.setattr(ipd, "display", lambda obj: shown.append(obj))
    book.table(["model", "bytes"], [["a<b", "1,700"], ["c", 3]], right=(1,))
    html_text = shown[0].data
    assert html_text.count("<tr>") == 3 and "a&lt;b" in html_text and "<b" not in html_text.replace("<br", "")
    assert html_text.count('text-align:right') == 3 and html_text.count('text-align:left') == 3


CELL = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), max_size=9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(st.lists(CELL.filter(bool), min_size=n, max_size=n),
                                                     st.lists(st.lists(CELL, min_size=n, max_size=n).filter(any), max_size=5))),
       st.sampled_from(["", "a title line"]))
def test_report_blocks_read_back_every_table_format_table_writes(table, title):
    """Agreement: a report's tables, cut by the spans of their dashes, give back the cells printed
    (every row with some text: a row of empty cells prints as a blank line, which ends a table)."""
    from memnet.experiments.common import format_table

    header, rows = table
    text = "a line before\n\n" + format_table(header, rows, title) + "\n\nverdict: holds"
    blocks = book.report_blocks(text)
    tables = [b for b in blocks if b[0] == "table"]
    assert tables == [("table", header, rows)]
    assert ("text", "verdict: holds") in blocks and ("text", "a line before") in blocks
    assert (("text", title) in blocks) == bool(title)


def test_show_report_and_note_give_html_to_notebooks_and_text_elsewhere(monkeypatch, capsys):
    from memnet.experiments.common import format_table

    text = format_table(["model", "acc"], [["a<b", "1.0"]], "accuracy") + "\n  x: not run: a reason"
    page = book.report_html(text)
    assert page.count("<table") == 1 and "a&lt;b" in page and "<p" in page and "x: not run" in page
    book.show_report(text)  # no IPython shell here: the text is printed as it is
    book.note("careful", kind="warning", title="Heads up")
    assert capsys.readouterr().out == text + "\n[Heads up] careful\n"


def test_label_outer_keeps_each_axis_label_once_per_row_and_column():
    fig, axes = plots.new_figure(2, 3)
    for ax in axes.flat:
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    plots.label_outer(axes, 5)  # the sixth panel is unused (left as it is): the third column keeps its first x label
    assert [ax.get_xlabel() for ax in axes.flat] == ["", "", "x", "x", "x", "x"]
    assert [ax.get_ylabel() for ax in axes.flat] == ["y", "", "", "y", "", "y"]
