# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-continual)=
# # 4. Experiment 2: continual learning under distribution shift
#
# **Question.** A model learns five tasks one after the other, two new classes each, and is
# then asked about all ten classes with no task id. A network fine-tuned task after task is
# known to forget the old classes. Does a MemNet that keeps one slot memory across the whole
# stream, and answers by reading it, retain the old tasks better: is its final accuracy near
# joint training and its backward transfer near zero?

# %% tags=["parameters"]
profile = "stored"
device = "auto"
seed = 0
save = False

# %%
import warnings

import numpy as np
from myst_nb import glue

from memnet import book, continual, plots, widgets
from memnet.experiments import continual as experiment
from memnet.tasks.digits import SplitDigits

settings = book.setup(profile, device, seed, save)

# %% [markdown]
# ## Two streams with real shifts
#
# **Split-Digits** cuts scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)
# into five tasks: digits 0/1, 2/3, 4/5, 6/7, 8/9. It is *class-incremental* in the sense of
# {cite:t}`vandeven2019three`: one shared 10-way output and no task id at test time, the hardest
# of their three scenarios. An image is read as a sequence of pixel tokens (intensities are
# integers 0..16, so a pixel is a token as it is); 30% of every class is held out for testing,
# the split fixed by the seed. One *segment* (one MemNet window) holds one item and one more
# token: its label (a *support* segment, what memory may store) or `QUERY` (the model must name
# the label there).
#
# **Shifting-Prototypes** is synthetic: every class is a prototype string of symbols, an item a
# noisy copy; task $t$ draws its prototypes and its noise from its own window of symbols, so
# the token statistics move from task to task.

# %%
# NBVAL_CHECK_OUTPUT
digits = SplitDigits(seed=0, pool=2)
info = digits.describe()
print("tasks (classes):", info["task_classes"])
print("train/validation/test items per task:", info["train_val_test_per_task"])
print("vocabulary: pixels 0-16, labels 17-26, QUERY", digits.query_token)
x, y = digits.support_set(0, per_class=1, seed=0)
print("a support segment:", digits.support_tokens(x[:1], y[:1])[0].tolist())
q, t = digits.query_tokens(x[:1], y[:1])
print("its query segment:", q[0].tolist(), "-> target", int(t[0, -1]))

# %% [markdown]
# ## The protocol: what persists and what resets
#
# Every model trains on tasks 1..5 in order, never sees an earlier task's data again, and is
# evaluated on every task after each one. That fills the **accuracy matrix** $R_{i,j}$, the
# test accuracy on task $j$ after training on task $i$ {cite}`lopezpaz2017gem`. Accuracy is the
# argmax over all ten labels.
#
# - **MemNet (carried memory).** The weights persist. On task $t$, MemNet meta-trains on
#   *episodes of task $t$ only* {cite}`santoro2016mann`: a few support segments, then queries,
#   each episode with freshly permuted labels, so the label of a query can only come from a slot.
#   Every episode starts from a copy of the **carried memory** (the earlier tasks' items with
#   their true labels), so the new queries also learn to pass over the old slots. After task $t$,
#   ten training items per class (true labels) are streamed into the carried memory, which is
#   never reset. Every evaluation reads a copy of it; queries never change it.
# - **Keys that name the item.** Only the last token of a segment writes (one write per item), and
#   write keys and read queries are computed from the item's tokens alone, through one learned map
#   per position in the window (`address="item"`): a support item and the same item as a query get
#   the same key whatever label follows it. Keys taken from the label token's own state, the plain
#   MemNet interface, carry the label, which a query cannot know; in our CPU runs the episodic
#   training then stalled near a guess. A plain mean over the window would be a bag of pixel
#   intensities, since the position codes are small.
# - **Instance episodes.** Half of every training batch are self-supervised episodes on the same
#   task's items: each support item is its own class (a random label), and the queries are noisy
#   copies of them (pixel intensities moved by up to ±2; on the synthetic stream, 20% of the
#   symbols replaced). Labelled episodes of one task only ask the keys to separate that task's
#   two classes; these ask them to tell items apart, which is what later classes will need
#   (instance discrimination, as in unsupervised meta-learning). The share and the noise were
#   chosen on seed 0 of the laptop profile; the baselines are plain classifiers and have no
#   episodes to mix in.
# - **Drift compensation.** Training on task $t$ moves the key encoder, so keys written for earlier
#   tasks stop matching the queries the new weights emit for the same items. After each task the
#   carried keys are moved by a linear map fitted on the drift of *task $t$'s own* items (their keys
#   under the weights before and after the task, a ridge regression pulled towards the identity),
#   a slot-memory version of semantic drift compensation {cite}`yu2020sdc`.
# - **MemNet with fixed addresses.** The same MemNet, except that write keys and read queries are
#   not learned: the address of an item is its pixel vector (each intensity scaled to [0, 1]),
#   placed into the key space by a fixed orthonormal map, so the cosine between two addresses *is*
#   the cosine between the two images (on the synthetic stream: one-hot symbols, so the cosine counts
#   the positions where two items agree). It meta-trains on the first task's episodes only, and its
#   weights never change again; every later task is learned by writing alone. Every training
#   item of every task (about 125 per class on the digits) is streamed into a carried memory large
#   enough to hold the whole stream (1280 slots, no decay), where the learned-address MemNet keeps ten
#   per class. What it still learns is everything around the address: what a write stores, how a
#   read is turned into an answer. Its own ablation resets the memory at every task boundary, and
#   its own joint upper bound trains on every task's episodes and reads the same full memory.
# - **Ablations of MemNet, in the same run**: the memory *reset* at every task boundary; the memory
#   carried *without realignment*; and MemNet *frozen after task 1*, whose later tasks are learned
#   only by writing their items into memory (no weight changes, hence no drift, but no training
#   on the later classes either). And a diagnostic, not a continual method since it re-reads old
#   training items: the memory *rewritten* from every task so far by the current weights, which is
#   what perfect drift compensation would reach.
# - **WindowedTransformer / LSTM, fine-tuned**: plain classifiers (item tokens, `QUERY`, label)
#   trained on each task in turn: the lower bounds. Only their weights persist.
# - **Joint**: every model trained on all tasks at once for as many steps as it trains in the stream
#   (MemNet with a memory filled from every task's support items; the fixed-address MemNet for the
#   first task's steps, on episodes of every task): the upper bounds. Every model gets a fresh AdamW
#   and schedule per task.
#
# The metrics follow GEM and Avalanche {cite}`lomonaco2021avalanche`: average accuracy
# $\mathrm{ACC} = \frac1T\sum_j R_{T,j}$, backward transfer
# $\mathrm{BWT} = \frac{1}{T-1}\sum_{j<T} (R_{T,j} - R_{j,j})$ and forgetting
# $f_j = \max_{l<T} R_{l,j} - R_{T,j}$ (its mean, and its largest value, "max drop").

# %%
book.show_source(continual.backward_transfer)

# %% [markdown]
# ## The run
#
# By default the figures come from the **stored run** under `data/continual/` (run
# `python -m memnet.experiments.continual --profile laptop`, or papermill with
# `-p profile laptop -p save True`, to train again).

# %%
run = book.load_or_train(profile, device, seed, save, experiment="continual")
res = run.result
glue("ch4_run", run.describe(), display=False)
print(run.describe())
print(experiment.summary_table(res))

# %% [markdown]
# Figures in this chapter come from: {glue:text}`ch4_run`.

# %%
S = "digits"
summ = experiment.model_summary(res, S)
pct = lambda m, k: f"{100 * summ[m][k][0]:.1f}" if m in summ else "n/a"
ci = lambda m, k: f"{100 * summ[m][k][1]:.1f}" if m in summ else "n/a"
for m in summ:
    for k in ("acc", "bwt", "forgetting"):
        if k in summ[m]:
            glue(f"ch4_{m}_{k}", pct(m, k), display=False)
            glue(f"ch4_{m}_{k}_ci", ci(m, k), display=False)
joint = max((m for m in summ if m.endswith("_joint")), key=lambda m: summ[m]["acc"][0])
glue("ch4_joint_name", plots.CONTINUAL_LABELS[joint], display=False)
glue("ch4_joint_acc", pct(joint, "acc"), display=False)


def bar(summary: dict, model: str) -> tuple[float, bool]:
    """Gap to the best joint model (points) and whether `model` meets the bar on that stream."""
    best = max(summary[m]["acc"][0] for m in summary if m.endswith("_joint"))
    gap = 100 * (best - summary[model]["acc"][0])
    return gap, gap <= 5 and 100 * summary[model]["bwt"][0] >= -5


gap, bar_met = bar(summ, "memnet")
glue("ch4_gap", f"{gap:.1f}", display=False)
glue("ch4_bar", "meets" if bar_met else "does not meet", display=False)
gap_fixed, bar_fixed = bar(summ, "memnet_fixed")
glue("ch4_fixed_gap", f"{gap_fixed:.1f}", display=False)
glue("ch4_fixed_bar", "meets" if bar_fixed else "does not meet", display=False)
per_seed_fixed = {k: [100 * r["summary"][k] for r in res["streams"][S]["runs"] if r["model"] == "memnet_fixed"]
                  for k in ("acc", "bwt")}
glue("ch4_fixed_bwt_seeds", " / ".join(f"{v:.1f}" for v in per_seed_fixed["bwt"]), display=False)
glue("ch4_fixed_slots", next(r["num_slots"] for r in res["streams"][S]["runs"] if r["model"] == "memnet_fixed"),
     display=False)
glue("ch4_seeds", int(summ["memnet"]["n_seeds"]), display=False)
glue("ch4_chance", f"{100 * res['streams'][S]['chance']:.0f}", display=False)
T = res["streams"][S]["stream"]["n_tasks"]
# a reference with no learning at all: a top-k cosine vote over the same items under the same codes
top_k = res["streams"][S]["config"]["top_k"]
seeds_run = sorted({r["seed"] for r in res["streams"][S]["runs"]})
ps = res["profile_settings"]
knn = {sname: [continual.summarize(experiment.nearest_neighbour_matrix(
    experiment.make_stream(sname, experiment.Profile(digits_pool=ps["digits_pool"]), sd), top_k,
    ps["fixed_support_per_class"], sd)) for sd in seeds_run] for sname in res["streams"]}
for sname, rows in knn.items():
    for k in ("acc", "bwt"):
        glue(f"ch4_{sname}_knn_{k}", f"{100 * np.mean([r[k] for r in rows]):.1f}", display=False)
glue("ch4_top_k", top_k, display=False)
diag = {m: float(np.mean(plots.continual_matrices(res, S, m)[:, np.arange(T), np.arange(T)]))
        for m in ("memnet", "memnet_reset", "memnet_frozen", "memnet_fixed", "windowed", "lstm") if m in summ}
for m, v in diag.items():
    glue(f"ch4_{m}_diag", f"{100 * v:.1f}", display=False)

# %% [markdown]
# ## Forgetting curves
#
# Each line follows one task along the stream: its accuracy just after it was learned, then after
# every later task. Dotted lines: the joint-training accuracy of the same model on that task.

# %%
seq = [m for m in ("memnet_fixed", "memnet", "memnet_frozen", "windowed", "lstm") if m in summ]
joints = {"memnet": "memnet_joint", "memnet_frozen": "memnet_joint", "windowed": "windowed_joint", "lstm": "lstm_joint",
          "memnet_fixed": "memnet_fixed_joint"}
plots.forgetting_curves(res, S, seq, joint=joints, ncols=3)

# %% [markdown]
# The fine-tuned classifiers learn each new pair (their accuracy just after a task averages
# {glue:text}`ch4_windowed_diag`% for the WindowedTransformer and {glue:text}`ch4_lstm_diag`% for the
# LSTM, out of the 10-way output) and lose it at the next task: the output layer and the features
# move to the latest classes, the classic failure of class-incremental fine-tuning. Their
# backward transfer is {glue:text}`ch4_windowed_bwt`% and {glue:text}`ch4_lstm_bwt`%.
#
# **MemNet with fixed addresses** ends the stream at {glue:text}`ch4_memnet_fixed_acc`% ±
# {glue:text}`ch4_memnet_fixed_acc_ci` (95% interval over {glue:text}`ch4_seeds` seeds; chance
# {glue:text}`ch4_chance`%), {glue:text}`ch4_fixed_gap` points from {glue:text}`ch4_joint_name`
# ({glue:text}`ch4_joint_acc`%), with backward transfer {glue:text}`ch4_memnet_fixed_bwt`% ±
# {glue:text}`ch4_memnet_fixed_bwt_ci` (per seed {glue:text}`ch4_fixed_bwt_seeds`). It therefore
# **{glue:text}`ch4_fixed_bar`** the bar (within 5 points of joint training, BWT >= -5 points), while
# the fine-tuned baselines forget in the same run. Its weights last changed at the end of task 1:
# the eight digits of tasks 2 to 5 were learned by writing their items into memory (one bank of
# {glue:text}`ch4_fixed_slots` slots holds the whole stream), nothing else. Nothing was evicted
# either (the slot maps below); what it loses on an old task is competition, not loss: after task 1
# a query about a 0 only had 0s and 1s to find, at the end it can also land on a later digit whose
# pixels are closer. The memory
# reset at every task boundary, the same weights answer {glue:text}`ch4_memnet_fixed_reset_acc`%:
# everything above that is what the carried memory keeps.
#
# How much of this is learning? A plain top-{glue:text}`ch4_top_k` cosine vote over the same items
# under the same codes, no network at all, gets {glue:text}`ch4_digits_knn_acc`% (backward transfer
# {glue:text}`ch4_digits_knn_bwt`%). Fixed-address MemNet matches it: its learned parts (what a write
# stores, how a read becomes an answer) learned to read out a neighbour vote, which is what a top-k
# read over fixed keys offers. It shows what MemNet's memory buys in a stream when its
# addresses cannot go stale, and where the ceiling is: the similarity in the code, not anything
# learned.
#
# Next, the learned-address MemNet when nothing drifts: trained on all tasks at once, with a
# memory holding ten items of every class, MemNet answers {glue:text}`ch4_memnet_joint_acc`% of the
# test items (± {glue:text}`ch4_memnet_joint_acc_ci`), more than the joint LSTM
# ({glue:text}`ch4_lstm_joint_acc`%) and WindowedTransformer ({glue:text}`ch4_windowed_joint_acc`%). The
# read mechanism works: a query finds the slots of similar items and copies their label.
#
# In the stream, the learned-address MemNet with its memory carried along reaches a final average
# accuracy of {glue:text}`ch4_memnet_acc`% ± {glue:text}`ch4_memnet_acc_ci`, a gap of
# {glue:text}`ch4_gap` points to the best joint model, with backward transfer
# {glue:text}`ch4_memnet_bwt`% (± {glue:text}`ch4_memnet_bwt_ci`): it
# **{glue:text}`ch4_bar`** the bar. It
# learns every task well (just after a task it answers {glue:text}`ch4_memnet_diag`% of that task's
# queries: the old slots do not capture the new ones) and ends above the fine-tuned baselines, but
# it loses most of the old tasks. With the memory reset at every task boundary the same weights reach
# {glue:text}`ch4_memnet_reset_acc`%: the difference is what the carried memory keeps.
#
# MemNet frozen after the first task has nothing to drift: its later tasks are only written into
# memory. Its backward transfer is {glue:text}`ch4_memnet_frozen_bwt`% (± {glue:text}`ch4_memnet_frozen_bwt_ci`),
# but it learns each new task less well (just after a task: {glue:text}`ch4_memnet_frozen_diag`%,
# against {glue:text}`ch4_memnet_diag`% for the model that keeps training): keys learned on two
# digits, even with instance episodes, separate the later digits only in part. Its final accuracy is
# {glue:text}`ch4_memnet_frozen_acc`%. Keep the weights still and the memory keeps what it was given;
# train them on and the new classes are learned, but the old keys go stale.
#
# ## Accuracy matrices

# %%
fig, axes = plots.new_figure(2, 3, figsize=(9.0, 6.0))
for ax in axes.flat[len(seq):]:
    ax.set_visible(False)
for ax, m in zip(axes.flat, seq):
    plots.accuracy_matrix_heatmap(plots.continual_matrices(res, S, m).mean(0), ax=ax,
                                  title=plots.CONTINUAL_LABELS[m])
fig

# %% [markdown]
# Row $i$ is the model after task $i$; the diagonal is "just learned", below it is what remains of
# earlier tasks and above it are tasks not seen yet (zero in a class-incremental stream: an unseen
# class is never predicted correctly, so forward transfer means nothing here and the table omits it).
#
# ## Drift and capacity in the carried memory
#
# Two things can erase an old task from a memory that is never reset: its items can be
# **evicted** (the bank allocates the stalest slot by age and usage, and a write that is too weak
# to count as a write event leaves its slot "stale", so the next item lands on it), and the
# **key encoder can drift**, so that old keys, written by older weights, no longer match the
# queries the current weights emit. The stored run measures both, and what the realignment buys.

# %%
mems = [r for r in res["streams"][S]["runs"] if r["model"] == "memnet"]
with warnings.catch_warnings():  # NaN entries: tasks not written yet, or no item of the task left
    warnings.simplefilter("ignore", RuntimeWarning)
    kept = np.nanmean(np.array([r["retained"] for r in mems], dtype=float), axis=0)
    drift = np.nanmean(np.array([r["key_drift"] for r in mems], dtype=float), axis=0)
np.set_printoptions(precision=2, suppress=True)
print("share of task j's support items still in a slot after task i (rows i, columns j):")
print(kept)
print("cosine of carried (realigned) vs rewritten keys of those items (1 = no drift left):")
print(drift)
glue("ch4_kept_first", f"{100 * kept[-1, 0]:.0f}", display=False)
glue("ch4_kept_last", f"{100 * kept[-1, -1]:.0f}", display=False)
glue("ch4_drift_first", f"{drift[-1, 0]:.2f}", display=False)
drift_views = [m for m in ("memnet_unaligned", "memnet", "memnet_rewrite") if m in summ]
fig, axes = plots.new_figure(1, len(drift_views), figsize=(3.0 * len(drift_views), 3.0))
for ax, m in zip(axes.flat, drift_views):
    plots.accuracy_matrix_heatmap(plots.continual_matrices(res, S, m).mean(0), ax=ax, title=plots.CONTINUAL_LABELS[m])
fig

# %% [markdown]
# At the end of the stream {glue:text}`ch4_kept_first`% of the first task's support items and
# {glue:text}`ch4_kept_last`% of the last task's still hold the slot they were allocated (averaged
# over seeds): the bank has room for every item of the stream and every write claims its slot, so
# nothing is evicted. What erases the old tasks is drift. Carried as written (left), the old slots
# fall out of reach as the later tasks are trained: final accuracy
# {glue:text}`ch4_memnet_unaligned_acc`%. The realignment (middle) brings part of them back
# ({glue:text}`ch4_memnet_acc`%), but a linear map fitted on two classes only extrapolates so far:
# the realigned keys of the first task's items have a cosine of {glue:text}`ch4_drift_first` with
# the keys the final weights would write for them. The rewritten memory (right,
# {glue:text}`ch4_memnet_rewrite_acc`%) is the ceiling of any drift compensation; it is also short of
# joint training, because the final weights themselves separate the old classes less well than
# weights trained on all classes would.
#
# The fixed-address MemNet takes the other way out of the drift: its addresses are not learned, so
# there is nothing to compensate, and its weights stop after task 1, so the values it wrote and the
# read-out that decodes them stay matched. The price is the one named above: it cannot learn a
# better similarity than its code. On the digits that price is small, because the cosine between
# two pixel vectors already tells most digits apart; on data whose raw code does not (natural
# images, text), fixed addresses would have to come from an encoder trained once and then kept
# still, which this chapter does not test.
#
# ## The synthetic stream

# %%
S2 = "shift"
SHIFT_SHOWN = ("memnet", "memnet_frozen", "memnet_unaligned", "memnet_rewrite", "memnet_joint", "windowed",
               "memnet_fixed", "memnet_fixed_joint")
if S2 in res["streams"]:
    s2 = experiment.model_summary(res, S2)
    seq2 = [m for m in seq if m in s2]
    fig2 = plots.forgetting_curves(res, S2, seq2, joint=joints, ncols=3)
    for m in SHIFT_SHOWN:
        for k in ("acc", "bwt"):
            glue(f"ch4_shift_{m}_{k}", f"{100 * s2[m][k][0]:.1f}" if k in s2.get(m, {}) else "n/a", display=False)
    gap2, bar2 = bar(s2, "memnet_frozen") if "memnet_frozen" in s2 else (float("nan"), False)
    gap2_fixed, bar2_fixed = bar(s2, "memnet_fixed") if "memnet_fixed" in s2 else (float("nan"), False)
    glue("ch4_shift_frozen_gap", f"{gap2:.1f}", display=False)
    glue("ch4_shift_fixed_gap", f"{gap2_fixed:.1f}", display=False)
else:
    fig2, bar2, bar2_fixed = None, False, False
    for m in SHIFT_SHOWN:
        for k in ("acc", "bwt"):
            glue(f"ch4_shift_{m}_{k}", "n/a", display=False)
    glue("ch4_shift_frozen_gap", "n/a", display=False)
    glue("ch4_shift_fixed_gap", "n/a", display=False)
fig2

# %% [markdown]
# On Shifting-Prototypes the prototypes of a new task are made of symbols no earlier task used, so
# the items of different tasks are far apart and a key encoder trained on one task still tells the
# others apart. The fine-tuned WindowedTransformer forgets as before (backward transfer
# {glue:text}`ch4_shift_windowed_bwt`%), while MemNet keeps much more: carried and realigned it ends
# at {glue:text}`ch4_shift_memnet_acc`% (without the realignment {glue:text}`ch4_shift_memnet_unaligned_acc`%,
# with the memory rewritten {glue:text}`ch4_shift_memnet_rewrite_acc`%, joint
# {glue:text}`ch4_shift_memnet_joint_acc`%). Frozen after the first task it forgets almost nothing
# (backward transfer {glue:text}`ch4_shift_memnet_frozen_bwt`%) and ends at
# {glue:text}`ch4_shift_memnet_frozen_acc`%, {glue:text}`ch4_shift_frozen_gap` points short of joint
# training: here the memory does carry the old tasks, and what is missing is how well the first
# task's keys separate the new classes. With fixed addresses (one-hot symbols) MemNet ends at
# {glue:text}`ch4_shift_memnet_fixed_acc`% with backward transfer {glue:text}`ch4_shift_memnet_fixed_bwt`%,
# {glue:text}`ch4_shift_fixed_gap` points from the best joint model; the plain top-k vote over the same
# items gets {glue:text}`ch4_shift_knn_acc`%.
#
# ## Explore the carried memory
#
# Scrub through the stream of support items written into the carried memory of either MemNet: the
# left panel colours each slot by the task whose item it holds after that item; the right one shows
# that MemNet's accuracy on every task after the task being written, with the carried memory and
# with the memory reset per task.

# %% tags=["nbval-ignore-output"]
widgets.continual_explorer(res, run.traces)

# %% [markdown]
# Without a kernel: the fixed-address MemNet's carried memory at the end of every task (seed shown
# above the panels).

# %%
seed_shown = seed if seed in run.traces else min(run.traces)
rec = run.traces[seed_shown]["memnet_fixed"][S]
T = res["streams"][S]["stream"]["n_tasks"]
n_slots = next(r["num_slots"] for r in res["streams"][S]["runs"] if r["model"] == "memnet_fixed")
own = continual.slot_owner_over_time(experiment.slot_events(rec), rec["segment_task"], T)
ends = [int(np.flatnonzero(rec["segment_task"].numpy() == t)[-1]) for t in range(T)]
fig, axes = plots.new_figure(1, T, figsize=(2.6 * T, 2.8), sharey=True)
for t, ax in enumerate(axes.flat):
    plots.slot_owner_map(own, T, ax=ax, upto=ends[t], segment_task=rec["segment_task"], title=f"after task {t + 1}")
    if t < T - 1:
        ax.get_legend().remove()
    if t:
        ax.set_xlabel("")
fig.suptitle(f"which task each slot of the fixed-address MemNet's carried memory holds (seed {seed_shown})",
             fontsize=10)
fig

# %% tags=["remove-cell"]
# checks: the run has what the chapter needs; the baselines' forgetting is visible for real profiles
for m in ("memnet", "memnet_reset", "memnet_frozen", "memnet_unaligned", "windowed", "lstm"):
    Rs = plots.continual_matrices(res, S, m)
    assert Rs.shape[1:] == (T, T) and np.all((Rs >= 0) & (Rs <= 1)), m
# every sequential run's stored summary is what the analysis layer computes from its stored matrix
# (ACC, BWT, forgetting): the numbers of the tables and of the matrices shown cannot drift apart
for stream in res["streams"].values():
    for r in (r for r in stream["runs"] if "R" in r):  # joint training has one accuracy, no matrix
        R, got = np.asarray(r["R"], dtype=float), r["summary"]
        want = {"acc": continual.average_accuracy(R), "bwt": continual.backward_transfer(R),
                "forgetting": float(np.mean(continual.forgetting(R)))}
        assert all(np.isclose(got[k], v) for k, v in want.items()), (r["model"], r["seed"], got, want)
# after the first task every variant but the reset one holds the same memory under the same weights
first = {m: plots.continual_matrices(res, S, m)[:, 0] for m in ("memnet", "memnet_frozen", "memnet_unaligned")}
assert np.array_equal(first["memnet"], first["memnet_frozen"]) and np.array_equal(first["memnet"], first["memnet_unaligned"])
assert own.shape == (rec["segment_task"].shape[0], n_slots)
fixed_kept = np.array([r["retained"] for r in res["streams"][S]["runs"] if r["model"] == "memnet_fixed"], dtype=float)
assert np.allclose(fixed_kept[:, -1], 1.0), "the fixed-address memory no longer keeps every item"
assert kept.shape == (T, T)
if run.profile in ("laptop", "gpu"):
    assert summ["windowed"]["bwt"][0] < -0.3 and summ["lstm"]["bwt"][0] < -0.3, "fine-tuning should forget"
    assert summ["windowed_joint"]["acc"][0] > summ["windowed"]["acc"][0]
    # the prose reads these runs: the joint MemNet works, the carried memory beats fine-tuning, realignment
    # helps, and no MemNet variant meets the bar on the digits; a run where that changes must be re-read
    assert summ["memnet_joint"]["acc"][0] >= summ["lstm_joint"]["acc"][0], "MemNet joint is no longer the best"
    assert summ["memnet"]["acc"][0] > max(summ["windowed"]["acc"][0], summ["lstm"]["acc"][0])
    assert summ["memnet"]["acc"][0] > summ["memnet_unaligned"]["acc"][0]
    assert summ["memnet_frozen"]["bwt"][0] > max(summ["windowed"]["bwt"][0], summ["lstm"]["bwt"][0])
    assert not bar_met and not bar(summ, "memnet_frozen")[1] and not bar2, "a learned-address MemNet now meets the bar"
    # the fixed-address MemNet meets it, matches the plain vote within a few points, and its reset loses it
    assert bar_fixed and bar2_fixed, "the fixed-address MemNet no longer meets the bar"
    assert abs(summ["memnet_fixed"]["acc"][0] - np.mean([r["acc"] for r in knn[S]])) < 0.03
    assert summ["memnet_fixed_reset"]["acc"][0] < 0.3
print(f"chapter 4 checks passed ({run.profile} run)")

# %% [markdown]
# ## What we learned
#
# - Class-incremental fine-tuning forgets almost everything: after each task the classifiers
#   answer only the newest classes, while joint training on the same data does well.
# - MemNet's memory is a good classifier when its keys are right: trained jointly, reading ten
#   stored items per class, it beats the joint LSTM and WindowedTransformer. What made the reads
#   work was addressing by the item alone, so that a query and the support item it should find
#   get the same key; what made the keys carry over to later classes was training them to tell
#   items apart (instance episodes), not only the classes of the task at hand.
# - In a stream, a memory that is never reset is not enough. Its slots survive (nothing is
#   evicted), but the key encoder keeps training and the old keys go stale. Realigning them by
#   the drift measured on the current task recovers part of the loss; freezing the weights after
#   the first task removes the drift, and then the memory keeps the old tasks (on the synthetic
#   stream, backward transfer near zero) but the new classes get keys trained for other classes.
# - Addresses that cannot drift fix it. MemNet with fixed addresses (the item's own code), trained
#   on the first task only and then learning by writing alone, keeps every item of the stream and
#   ends within a point of its joint upper bound, with backward transfer of a few points: it meets
#   the bar on both streams, in the same run where the fine-tuned baselines lose almost everything.
# - It is, measurably, a nearest-neighbour memory: a plain top-k cosine vote over the same items
#   scores the same. Its learned parts learned to store a label and read a vote; the similarity,
#   and so the ceiling, is the code's.
# - The seed's claim holds in this form: a slot memory that is written task by task and never
#   reset retains the old tasks, as long as nothing moves the addresses it was written under.
#   With learned addresses, in this budget, no variant comes within 5 points of joint training.
#
# What is open: keys that are learned *and* stay put: an encoder trained, then frozen, on more than
# two digits; or drift compensation good enough to approach the rewritten memory. The `gpu`
# profile (64-token 8x8 images, longer meta-training) is defined but has not been run.
#
# ## Exercises
#
# 1. Re-run at `profile = "laptop"` with `realign=False` in `experiment.PROFILES["laptop"]`: how
#    much of the carried memory's advantage over the reset one was the realignment's?
# 2. Set `write_threshold` back to the default 0.5 in the profile. How many support items keep
#    their slot now, and why (look at the write gates in the trace)?
# 3. Set `instance_share=0` in the profile: which MemNet variants lose most, and why the frozen one?
# 4. Build the stream MemNet with `continual.stream_memnet(cfg, address="token")` and train it on
#    one task's episodes: how far does the episode accuracy climb above a two-way guess?
# 5. Give the fixed-address MemNet ten items per class (`fixed_support_per_class=10`): how far do
#    its accuracy and the plain vote's fall, and does the bar still hold?
# 6. Compute forward transfer with `continual.forward_transfer(R, r["baseline_b"])`. Why is it
#    zero in a class-incremental stream?
