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

from memnet import book, continual, plots
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
print("train/test items per task:", info["train_test_per_task"])
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
#   each episode with freshly permuted labels and an empty memory, so the label of a query can
#   only come from a slot. After task $t$, ten training items per class (with their true labels)
#   are streamed into **one carried memory state**, which is never reset. Every evaluation reads
#   a copy of it; queries never change it. Only the last token of a segment may write (one write
#   per item: the layout fixes when to write), every such write claims its slot (a low
#   `write_threshold`), and the read queries start equal to the write keys, so that a query
#   first looks for slots written by similar items (with independent random projections the
#   episodic training stalled at a guess in our CPU runs).
# - **MemNet, memory reset per task** (ablation): the same weights at every point of the stream;
#   the carried memory is cleared at each task boundary.
# - **MemNet, memory rewritten** (a diagnostic, not a continual method, since it re-reads old
#   training items): a memory refilled from every task so far by the *current* weights. Its gap
#   to the carried memory is the cost of parameter drift.
# - **WindowedTransformer / LSTM, fine-tuned**: plain classifiers (item tokens, `QUERY`, label)
#   trained on each task in turn: the lower bounds. Only their weights persist.
# - **Joint**: the same classifiers trained on all tasks at once for as many steps: the upper
#   bound. Every model gets a fresh AdamW and schedule per task.
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
gap = 100 * (summ[joint]["acc"][0] - summ["memnet"]["acc"][0])
bar_met = gap <= 5 and 100 * summ["memnet"]["bwt"][0] >= -5
glue("ch4_gap", f"{gap:.1f}", display=False)
glue("ch4_bar", "meets" if bar_met else "does not meet", display=False)
glue("ch4_seeds", int(summ["memnet"]["n_seeds"]), display=False)
glue("ch4_chance", f"{100 * res['streams'][S]['chance']:.0f}", display=False)
T = res["streams"][S]["stream"]["n_tasks"]
diag = {m: float(np.mean(plots.continual_matrices(res, S, m)[:, np.arange(T), np.arange(T)]))
        for m in ("memnet", "memnet_reset", "windowed", "lstm") if m in summ}
for m, v in diag.items():
    glue(f"ch4_{m}_diag", f"{100 * v:.1f}", display=False)

# %% [markdown]
# ## Forgetting curves
#
# Each line follows one task along the stream: its accuracy just after it was learned, then after
# every later task. Dotted lines: the joint-training accuracy of the same classifier on that task.

# %%
seq = [m for m in ("memnet", "memnet_reset", "windowed", "lstm") if m in summ]
plots.forgetting_curves(res, S, seq, joint={"windowed": "windowed_joint", "lstm": "lstm_joint"})

# %% [markdown]
# The fine-tuned classifiers learn each new pair (their accuracy just after a task averages
# {glue:text}`ch4_windowed_diag`% for the WindowedTransformer and {glue:text}`ch4_lstm_diag`% for the
# LSTM, out of the 10-way output) and lose it at the next task: the output layer and the features
# move to the latest classes, the classic failure of class-incremental fine-tuning. Their
# backward transfer is {glue:text}`ch4_windowed_bwt`% and {glue:text}`ch4_lstm_bwt`%.
#
# MemNet, with its memory carried along, reaches a final average accuracy of
# {glue:text}`ch4_memnet_acc`% ± {glue:text}`ch4_memnet_acc_ci` (95% interval over
# {glue:text}`ch4_seeds` seeds; chance {glue:text}`ch4_chance`%) against
# {glue:text}`ch4_joint_acc`% for the best joint-trained model ({glue:text}`ch4_joint_name`), a gap
# of {glue:text}`ch4_gap` points, with backward transfer {glue:text}`ch4_memnet_bwt`%
# (± {glue:text}`ch4_memnet_bwt_ci`). It therefore **{glue:text}`ch4_bar`** the bar we set (within
# 5 points of joint training, BWT >= -5 points). With the memory reset at every task boundary the
# same weights reach {glue:text}`ch4_memnet_reset_acc`% (BWT {glue:text}`ch4_memnet_reset_bwt`%):
# the gap between the two is what the carried memory buys.
#
# Two limits show in the curves. First, MemNet's episodic meta-training is weak in the laptop
# budget: even with only the current task in memory (reset), it answers
# {glue:text}`ch4_memnet_reset_diag`% of a task's queries just after learning it, against
# {glue:text}`ch4_windowed_diag`% for the fine-tuned WindowedTransformer. Second, the carried memory
# both helps and hurts: it keeps part of the first task answerable for a while, but with every
# earlier task's items in the bank the new task's queries are often captured by old slots, so
# just after each task the carried model answers only {glue:text}`ch4_memnet_diag`% of its
# queries. Episodes only ever asked the keys to separate the two classes of one task; nothing
# trained them to separate a new class from an old one.
#
# ## Accuracy matrices

# %%
fig, axes = plots.new_figure(1, len(seq), figsize=(3.0 * len(seq), 3.0))
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
# queries the current weights emit. The stored run measures both.

# %%
mems = [r for r in res["streams"][S]["runs"] if r["model"] == "memnet"]
with warnings.catch_warnings():  # NaN entries: tasks not written yet, or no item of the task left
    warnings.simplefilter("ignore", RuntimeWarning)
    kept = np.nanmean(np.array([r["retained"] for r in mems], dtype=float), axis=0)
    drift = np.nanmean(np.array([r["key_drift"] for r in mems], dtype=float), axis=0)
np.set_printoptions(precision=2, suppress=True)
print("share of task j's support items still in a slot after task i (rows i, columns j):")
print(kept)
print("cosine of carried vs rewritten keys of those items (1 = no drift):")
print(drift)
glue("ch4_kept_first", f"{100 * kept[-1, 0]:.0f}", display=False)
glue("ch4_kept_last", f"{100 * kept[-1, -1]:.0f}", display=False)
glue("ch4_drift_first", f"{drift[-1, 0]:.2f}", display=False)
fig, axes = plots.new_figure(1, 2, figsize=(8, 3.0))
for ax, m in zip(axes.flat, ("memnet", "memnet_rewrite")):
    plots.accuracy_matrix_heatmap(plots.continual_matrices(res, S, m).mean(0), ax=ax, title=plots.CONTINUAL_LABELS[m])
fig

# %% [markdown]
# At the end of the stream {glue:text}`ch4_kept_first`% of the first task's support items and
# {glue:text}`ch4_kept_last`% of the last task's still hold the slot they were allocated (averaged
# over seeds): the bank has room for every item of the stream and every write claims its slot, so
# nothing is evicted. The key encoder drifts: the keys of the first task's items, as written,
# have a cosine of {glue:text}`ch4_drift_first` with the keys the final weights would write for the
# same items. The rewritten memory (right) shows what the final weights reach when the memory holds
# keys they wrote themselves; where it beats the carried memory, the difference is the cost of drift.
#
# ## The synthetic stream

# %%
S2 = "shift"
if S2 in res["streams"]:
    seq2 = [m for m in seq if m in experiment.model_summary(res, S2)]
    fig2 = plots.forgetting_curves(res, S2, seq2, joint={"windowed": "windowed_joint", "lstm": "lstm_joint"})
    s2 = experiment.model_summary(res, S2)
    glue("ch4_shift_memnet_acc", f"{100 * s2['memnet']['acc'][0]:.1f}", display=False)
    glue("ch4_shift_windowed_bwt", f"{100 * s2['windowed']['bwt'][0]:.1f}", display=False)
else:
    fig2 = None
    glue("ch4_shift_memnet_acc", "n/a", display=False)
    glue("ch4_shift_windowed_bwt", "n/a", display=False)
fig2

# %% [markdown]
# On Shifting-Prototypes the picture is the same kind: the fine-tuned WindowedTransformer's
# backward transfer is {glue:text}`ch4_shift_windowed_bwt`%, and MemNet's final average accuracy
# is {glue:text}`ch4_shift_memnet_acc`%.
#
# ## Explore the carried memory
#
# Scrub through the stream of support items written into the carried memory: the left panel
# colours each slot by the task whose item it holds after that item; the right one shows MemNet's
# accuracy on every task after the task being written, with the carried memory and with the memory
# reset per task.

# %% tags=["nbval-ignore-output"]
experiment.explorer(res, run.traces)

# %% [markdown]
# Without a kernel: the carried memory at the end of every task (seed shown above the panels).

# %%
seed_shown = seed if seed in run.traces else min(run.traces)
rec = run.traces[seed_shown]
T = res["streams"][S]["stream"]["n_tasks"]
own = plots.slot_owner_over_time(rec["trace"].write_events[0], rec["segment_task"], T)
ends = [int(np.flatnonzero(rec["segment_task"].numpy() == t)[-1]) for t in range(T)]
fig, axes = plots.new_figure(1, T, figsize=(2.6 * T, 2.8), sharey=True)
for t, ax in enumerate(axes.flat):
    plots.slot_owner_map(own, T, ax=ax, upto=ends[t], segment_task=rec["segment_task"], title=f"after task {t + 1}")
    if t < T - 1:
        ax.get_legend().remove()
fig.suptitle(f"which task each slot of the carried memory holds (seed {seed_shown})", fontsize=10)
fig

# %% tags=["remove-cell"]
# checks: the run has what the chapter needs; the baselines' forgetting is visible for real profiles
for m in ("memnet", "memnet_reset", "windowed", "lstm"):
    Rs = plots.continual_matrices(res, S, m)
    assert Rs.shape[1:] == (T, T) and np.all((Rs >= 0) & (Rs <= 1)), m
    for R in Rs:
        assert np.isclose(continual.average_accuracy(R), R[-1].mean())
assert own.shape == (rec["trace"].num_segments, res["streams"][S]["config"]["num_slots"])
assert kept.shape == (T, T)
if run.profile in ("laptop", "gpu"):
    assert summ["windowed"]["bwt"][0] < -0.3 and summ["lstm"]["bwt"][0] < -0.3, "fine-tuning should forget"
    assert summ["windowed_joint"]["acc"][0] > summ["windowed"]["acc"][0]
    # the closing prose says the claim is not supported at this budget: a run that meets the bar must be re-read
    assert not bar_met, "MemNet now meets the bar: rewrite 'What we learned' for this run"
print(f"chapter 4 checks passed ({run.profile} run)")

# %% [markdown]
# ## What we learned
#
# - Class-incremental fine-tuning forgets almost everything: after each task the classifiers
#   answer only the newest classes, while joint training on the same data does well.
# - Whether a memory-enabled model avoids this depends on separate things, measured separately
#   here: that its reads have learned to *use* a slot (the copy mechanism), that the slots
#   survive the stream (allocation and eviction), and that old keys still match new queries
#   (drift of the key encoder while the weights keep training).
# - In the laptop budget the seed's claim is not supported: the carried memory is kept intact,
#   but the meta-learned reads are weak, old slots capture new queries and the key encoder
#   drifts. This run does not refute the claim either: it shows which pieces must work first
#   (episodes that mix old and new classes, a key space that separates them, less drift).
#
# What is open: the `gpu` profile (64-token 8x8 images, ten times longer meta-training, MemNet
# joint training as its own upper bound) is defined but has not been run. Freezing the key
# encoder after the first task, or re-encoding slots from their stored values, would remove the
# drift; whether the copy mechanism then generalises to classes it never saw in training is the
# question to answer next.
#
# ## Exercises
#
# 1. Re-run at `profile = "laptop"` with more MemNet steps (`experiment.PROFILES["laptop"]`) and
#    watch the episode accuracy in the stored history: when does it leave the two-way guess?
# 2. Set `write_threshold` back to the default 0.5 in the profile. How many support items keep
#    their slot now, and why (look at the write gates in the trace)?
# 3. Compute forward transfer with `continual.forward_transfer(R, r["baseline_b"])`. Why is it
#    zero in a class-incremental stream?
