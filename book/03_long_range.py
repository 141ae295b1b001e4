# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-long-range)=
# # 3. Experiment 1: recall far beyond the window
#
# **Question.** A model reads key-value pairs once, then a long stretch of noise, then the keys
# again, and must name each value. Nothing in a token's id says whether it is a pair or noise.
# When the pairs lie 16, 64 or 256 windows back, and there are as many pairs as slots or more,
# does MemNet still recall them? How does it compare with a Transformer that sees the whole
# sequence, one that sees only its window, an LSTM, and three published memory models: the
# Differentiable Neural Computer, the Recurrent Memory Transformer and Titans?

# %% tags=["parameters"]
profile = "stored"
device = "auto"
seed = 0
save = False

# %%
import numpy as np
from myst_nb import glue

from memnet import book, plots, survival, widgets
from memnet.experiments import long_range
from memnet.tasks import KeyValueRecall

settings = book.setup(profile, device, seed, save)

# %% [markdown]
# ## A gentle first example
#
# The simplest form of the problem is the rare-event memory of {cite:t}`kaiser2017rare`: pairs
# `k v` shown once, distractors, then each key again. When keys, values and distractors come
# from separate id ranges, as below, a model can decide what to store by looking at a token's
# id alone: store every value. That makes the task too easy to say much about a memory.

# %% tags=["nbval-check-output"]
demo = KeyValueRecall(
    n_keys=4, n_values=4, n_distractors=4, n_pairs=2, segment_len=6
)
b = demo.sample_at_distance(batch=1, distance=8, seed=seed)
print("vocabulary: keys 0-3, values 4-7, distractors 8-11")
print("tokens  :", b.tokens[0].tolist())
print("targets :", [t if t >= 0 else "." for t in b.targets[0].tolist()])
print("distance:", [d if d else "." for d in b.distance[0].tolist()])

# %% [markdown]
# ## The task: multi-query associative recall under pressure
#
# The experiment uses multi-query associative recall (MQAR) in the form of Zoology
# {cite}`arora2023zoology` (`memnet.tasks.MQAR`). One vocabulary: keys are drawn from its lower
# half, values from its upper half, and the noise ("filler") from **all** of it, so filler holds
# keys and values too and a key followed by a value is not necessarily a pair to keep. A sequence
# opens with P pairs `k1 v1 ... kP vP`; then a **delay** of filler; then a query region in which
# every key comes back once, at power-law gaps, and the model must predict its value at the key's
# position. A few **local pairs** (fresh keys) are bound and queried inside one window of the
# filler: recall that a model with a window can do by attention, there to show that every model
# learned what its window allows. Filler never holds a key of the sequence, and no value follows
# a query, so "key, then value" always binds.
#
# Three knobs put the memory under pressure: the number of pairs P (from 2 to twice the number of
# slots), the delay between the pairs and the queries (0 to 256 windows), and the local pairs. A
# small example (window 8, P = 4, delay of 2 windows, one local pair):

# %% tags=["nbval-check-output"]
small = long_range.PROFILES["smoke"]
task = long_range.make_task(small, n_pairs=4, delay_windows=2)
ex = task.sample(1, seed=3, split="test")
tok, tgt = ex.tokens[0].tolist(), ex.targets[0].tolist()
W = small.segment_len
print(
    f"vocabulary of {task.vocab_size}: keys 1-{task.value_lo - 1}, "
    f"values {task.value_lo}-{task.vocab_size - 1}; "
    f"pairs in positions 0-{task.context_len - 1}, queries from {task.query_start}"
)
for s in range(0, len(tok), W):
    cells = [
        f"{t:>2}" + ("?" if tgt[s + i] >= 0 else " ")
        for i, t in enumerate(tok[s : s + W])
    ]
    print(f"window {s // W:>2}: " + " ".join(cells))
print(
    "answers (position: value):", {t: v for t, v in enumerate(tgt) if v >= 0}
)

# %% [markdown]
# A `?` marks a query. The first block of the sequence holds the pairs; in the query region each
# of the four keys comes back once; the local pair is bound and asked inside one window.
#
# ## The models and the protocol
#
# All models have MemNet's parameter count within 15% and the same window where they have one:
#
# - **MemNet**: the windowed controller with the slot memory of this book;
# - **FullTransformer**: causal attention over the whole sequence, the *positive control* (it is
#   known to solve MQAR {cite}`arora2023zoology`); it is run wherever the sequence fits;
# - **WindowedTransformer**: MemNet without its memory, each window on its own;
# - **LSTM**: a recurrent state over the whole sequence;
# - **DNC** {cite}`graves2016dnc` (PyPI `dnc` 1.1.0), an LSTM controller with a content- and
#   link-addressed memory of as many cells as MemNet has slots, stepped token by token; its
#   sparse variant SAM {cite}`rae2016sam` needs faiss on a GPU in that package and is left out;
# - **RMT** {cite}`bulatov2022rmt` (`recurrent-memory-transformer-pytorch` 0.7.0), memory tokens
#   carried from window to window, one per slot of MemNet;
# - **Titans (MAC)** {cite}`behrouz2024titans` (`titans-pytorch` 0.5.5), memory as context: a
#   neural memory trained at test time on each window, attention within the window (its
#   test-time learning rate capped at 0.1, as in the package's own training script: at the
#   default the memory's weights diverge after about ten windows).
#
# Every model reads the same input: a token embedding plus a *token shift*, a linear map of the
# previous token's embedding added to each position (a one-step causal convolution, as in H3
# {cite}`fu2023h3`), which MemNet and the Transformer baselines have in their encoder. The peers'
# own embeddings are replaced by it, and they keep their own positions. Binding a key to the value
# after it needs the previous token at the value's position; without the shift a model must first
# learn an attention head that fetches it, and on this task that alone kept Titans on the loss
# plateau for a thousand steps in a pilot where the windowed Transformer left it within 150.
#
# The protocol is fixed before the run: every model trains on the same draws with the same loop
# (AdamW without schedule, gradient clipping) for a shared budget of steps; training draws have P
# from 2 to twice the slots, a delay of 0 to 2 windows and queries at most 4 windows after the
# pairs (the largest P needs a longer query region). A model whose training loss stays on the
# plateau of guessing (see below) through the shared budget at every learning rate it is tried at
# trains again for twice as many steps, its learning-rate sweep included; its first draws are the
# shared ones, so the longer budget can only favour it. The learning rate of
# each model is chosen among three values by accuracy on a validation draw, on the first seed (a
# model whose best is the largest of them is also tried at the next, 1e-2, since a best value at
# the edge of the grid says the grid has not found it), and the other seeds train at the chosen
# rate; the test draws are scored once per model and seed.
# Beyond 4 windows no model saw a query in training, so those columns measure **length
# generalisation**. At evaluation the queries fall in the 2 windows after the delay. Accuracy is
# split into queries whose value lies in an earlier window ("beyond the window") and queries
# inside their value's window ("in-window").

# %% [markdown]
# ## The run
#
# Training every model takes hours on a CPU, so by default this chapter draws its figures from
# the **stored run** under `data/long_range/` (the best one present: gpu, full, laptop). Each
# trained model is cached on disk as one record per (model, learning rate, seed), so a stored run
# can be assembled over several sittings. Run
# `python -m memnet.experiments.long_range --profile full` to reproduce it, or
# `python scripts/reproduce.py --chapter 3 --profile laptop` for a ten-minute version (MemNet and
# the positive control, one seed, at the learning rates the full run chose).

# %%
run = book.load_or_train(profile, device, seed, save)
res = run.result
p = res["profile_settings"]
glue("ch3_run", run.describe(), display=False)
print(run.describe())
if res.get("missing"):
    book.note(
        "This stored run is not complete yet: "
        + "; ".join(res["missing"])
        + ". The tables and figures "
        "below show the models and seeds it has.",
        kind="warning",
        title="Partial run",
    )
book.show_report(long_range.summary_table(res))

# %% [markdown]
# Figures in this chapter come from: {glue:text}`ch3_run`.
#
# ## Accuracy against distance

# %% tags=["hide-input"] mystnb={"image": {"alt": "Accuracy of every model against the delay between the pairs and the queries, in windows, with chance and the longest delay seen in training marked."}}
L, half = p["segment_len"], p["eval_pairs"]
curves = long_range.distance_curves(res)
names = long_range.models_of(res)
at = lambda m, d: (
    curves[m]["mean"][curves[m]["x"].index(d)]
    if d in curves[m]["x"]
    else float("nan")
)
for m in long_range.MODEL_NAMES:  # "n/a" for a model the run does not have
    for d in p["distances"]:
        glue(
            f"ch3_{m}_{d}x",
            f"{100 * at(m, d):.1f}" if m in curves else "n/a",
            display=False,
        )
glue("ch3_pairs", half, display=False)
glue("ch3_slots", p["num_slots"], display=False)
glue("ch3_window", L, display=False)
glue("ch3_train_windows", p["train_windows"], display=False)
glue("ch3_chance", f"{100 * res['chance']:.2f}", display=False)
fig = plots.accuracy_curves(
    curves,
    xlabel=f"delay between the pairs and the queries (windows of {L} tokens)",
    title=f"recall beyond the window, P = {half} pairs, {p['num_slots']} slots",
    chance=res["chance"],
    mark_x=p["train_windows"],
    mark_label="longest in training",
)
fig

# %% [markdown]
# With {glue:text}`ch3_pairs` pairs in a bank of {glue:text}`ch3_slots` slots, MemNet answers
# {glue:text}`ch3_memnet_4x`% of the queries that come 4 windows after the pairs (the longest
# delay of its training), {glue:text}`ch3_memnet_16x`% at 16 windows, {glue:text}`ch3_memnet_64x`%
# at 64 and {glue:text}`ch3_memnet_256x`% at 256 (chance: {glue:text}`ch3_chance`%). Error bars
# and ± are 95% t-intervals over seeds.
#
# Inside its training length the FullTransformer, which attends over the whole sequence, is the
# stronger model: {glue:text}`ch3_full_0x`% right after the pairs against MemNet's
# {glue:text}`ch3_memnet_0x`%. Beyond it, attention keeps {glue:text}`ch3_full_16x`% at 16 windows
# and {glue:text}`ch3_full_64x`% at 64 (the longest sequence it is run on), and MemNet's bank
# keeps more of the pairs at 64 windows while carrying the same {glue:text}`ch3_memnet_state`
# bytes of state whatever the length, where attention pays with compute quadratic in the length
# and a key-value cache that grows with it (the state column of the last table, given at the
# shortest sequence). MemNet does degrade with distance: 256 windows, 64 times the longest delay
# of its training, is its lowest point.
#
# ## What keeps the pairs through long filler
#
# A write event (a write strong enough to count) needs a slot. With the stalest-slot allocation
# of chapter 1, during a long stretch of filler the stalest slots are the pairs, written first and
# never read since, and every event on filler would overwrite one. The filler has such events:
# bigrams `k v` look exactly like pairs, and the write gate learns to open less on them than on
# the opening block, not to stay shut. So this experiment's MemNet allocates the **weakest** slot
# instead: the one whose content is held least strongly (the strength of its last write event
# times the retention since, chapter 1). The events on filler, weaker than those of the pairs,
# then replace each other, and a pair goes only when decay has made it weaker than they are.
# Two more settings serve the same end: the write cost charges only the gate above a small free
# budget, so that a memory not yet of use early in training is not pushed to write nothing; and
# retention starts close to 1, since no training sequence reaches far enough to teach decay to
# spare the pairs. Each was chosen on validation draws before this run; the configuration's
# docstring gives the pilots:

# %%
book.show_source(long_range.make_config)

# %% tags=["hide-input"]
mem_runs = sorted(
    (r for r in res["runs"] if r["model"] == "memnet"), key=lambda r: r["seed"]
)
events = [
    r["memory"][str(half)]["slot_reuse"]["events_per_segment"]
    for r in mem_runs
]
for r, e in zip(mem_runs, events):
    print(
        f"seed {r['seed']}: {e:.2f} write events per window, "
        f"{100 * r['distance'].get('16', {}).get('beyond', float('nan')):.1f}% "
        "at 16 windows, "
        f"{100 * r['distance'].get('64', {}).get('beyond', float('nan')):.1f}% at 64, "
        f"{100 * r['distance'].get('256', {}).get('beyond', float('nan')):.1f}% at 256"
    )
glue("ch3_events_lo", f"{min(events):.1f}", display=False)
glue("ch3_events_hi", f"{max(events):.1f}", display=False)
reuse = [
    100 * r["memory"][str(half)]["slot_reuse"]["reuse_rate"] for r in mem_runs
]
glue("ch3_reuse_lo", f"{min(reuse):.0f}", display=False)
glue("ch3_reuse_hi", f"{max(reuse):.0f}", display=False)
glue("ch3_free", p["num_slots"] - half, display=False)
glue("ch3_memnet_state", f"{mem_runs[0]['state_bytes']:,}", display=False)

# %% [markdown]
# MemNet makes {glue:text}`ch3_events_lo` to {glue:text}`ch3_events_hi` write events per window
# at P = {glue:text}`ch3_pairs`, counted over the whole sequence with its pairs and filler, and
# {glue:text}`ch3_reuse_lo` to {glue:text}`ch3_reuse_hi`% of them land on a slot that already held
# earlier content: with {glue:text}`ch3_free` slots the pairs leave free, the filler's events
# mostly recycle those, and the pairs stay where they were written.

# %% [markdown]
# ## Every model learned what its window allows
#
# A baseline that stays at chance inside its own window would say nothing about memory: it
# would only say that the protocol failed to train it. Two checks come first: the positive
# control must solve the task inside its training length, and the windowed Transformer must
# answer the queries whose pair lies in the same window.

# %% tags=["hide-input"]
verdicts = long_range.summarize(res)
for v in verdicts:
    print(v.line())
win = long_range.in_window(res, "windowed") if "windowed" in names else []
glue(
    "ch3_windowed_in",
    f"{100 * np.mean(win):.1f}" if win else "n/a",
    display=False,
)
full_in = [
    r["test_train_distribution"] for r in res["runs"] if r["model"] == "full"
]
glue(
    "ch3_full_in",
    f"{100 * np.mean(full_in):.1f}" if full_in else "n/a",
    display=False,
)
mem_in = long_range.in_window(res, "memnet")
glue(
    "ch3_memnet_in",
    " / ".join(f"{100 * v:.0f}" for v in mem_in),
    display=False,
)
lstm_in = long_range.in_window(res, "lstm") if "lstm" in names else []
glue(
    "ch3_lstm_in",
    f"{100 * np.mean(lstm_in):.1f}" if lstm_in else "n/a",
    display=False,
)
peers_in = [
    f"{long_range.LABELS[n]} {100 * np.mean(long_range.in_window(res, n)):.1f}%"
    for n in long_range.PEER_NAMES
    if n in names
]
glue("ch3_peers_in", ", ".join(peers_in) or "none in this run", display=False)
glue(
    "ch3_peers_absent",
    ", ".join(
        long_range.LABELS[n] for n in long_range.PEER_NAMES if n not in names
    )
    or "none",
    display=False,
)
book.show_report(long_range.plateau_table(res))
glue("ch3_steps", f"{p['steps']:,}", display=False)
longer = long_range.longer_budgets(res)
glue(
    "ch3_longer",
    ", ".join(
        f"{long_range.LABELS[n]} ({k:,} steps)" for n, k in longer.items()
    )
    or "none",
    display=False,
)
stuck = long_range.on_plateau(res)
glue(
    "ch3_stuck",
    ", ".join(long_range.LABELS[n] for n in stuck) or "none",
    display=False,
)
glue("ch3_guess_loss", f"{long_range.guess_loss(res):.2f}", display=False)
shorter = [long_range.LABELS[n] for n in stuck if n not in longer]
if longer and shorter:
    book.note(
        f"{' and '.join(shorter)} stayed on the plateau "
        "through the shared budget as well, but this stored "
        f"run has {'them' if len(shorter) > 1 else 'it'} at "
        "the shared budget only, not at the longer one.",
        kind="warning",
        title="Budget",
    )

# %% [markdown]
# The windowed Transformer answers {glue:text}`ch3_windowed_in`% of in-window queries and the
# FullTransformer {glue:text}`ch3_full_in`% of all queries on test draws of its training
# distribution. MemNet, whose controller is a windowed Transformer too, answers
# {glue:text}`ch3_memnet_in`% of the in-window queries in its seeds: its reads see only the slots,
# so in-window recall has to be learned by the controller's attention, and with most of its
# training signal coming from the pairs beyond the window it did not always learn it in the step
# budget. The LSTM, at the same parameter count and the best of its learning rates, answers
# {glue:text}`ch3_lstm_0x`% of the queries right after the pairs and {glue:text}`ch3_lstm_in`%
# in-window. The published peers answer in-window queries at {glue:text}`ch3_peers_in` (chance is
# {glue:text}`ch3_chance`%); not in this run: {glue:text}`ch3_peers_absent`.
#
# MQAR training sits on a plateau, at the loss of guessing a value ({glue:text}`ch3_guess_loss`),
# until a model finds how to look a key up, and then falls quickly. The figure below follows each
# model's training loss at its chosen learning rate, as a fraction of that loss. The models that
# were still on the plateau at the end of the shared {glue:text}`ch3_steps` steps at every rate
# tried trained again for twice as long: {glue:text}`ch3_longer`. Still above the line in every
# seed at the end of their budget: {glue:text}`ch3_stuck`.

# %% tags=["hide-input"] mystnb={"image": {"alt": "Training loss of every model at its chosen learning rate, as a fraction of the loss of guessing a value, against training steps."}}
fig, axes = plots.new_figure(figsize=(plots.COLUMN_WIDTH, 3.6))
plots.training_curves(
    long_range.loss_curves(res),
    ax=axes[0, 0],
    plateau=long_range.PLATEAU_EXIT,
    budget=p["steps"],
    title="training loss at the chosen learning rate (mean over seeds)",
)
void = long_range.untrained(res)
learners = [
    n
    for n in names
    if n not in ("memnet", "full", "windowed") and n not in void
]
glue(
    "ch3_learners",
    ", ".join(long_range.LABELS[n] for n in learners) or "none",
    display=False,
)
tps = res.get("throughput_tokens_per_s", {})
glue(
    "ch3_memnet_tps",
    f"{tps['memnet']:,.0f}" if "memnet" in tps else "n/a",
    display=False,
)
glue(
    "ch3_dnc_tps",
    f"{tps['dnc']:,.0f}" if "dnc" in tps else "n/a",
    display=False,
)
dnc_runs = [r for r in res["runs"] if r["model"] == "dnc"]
dnc_s = np.mean([r["train_s"] for r in dnc_runs]) if dnc_runs else 0.0
glue("ch3_dnc_hours", f"{dnc_s / 3600:.1f}" if dnc_runs else "n/a", display=False)
glue(
    "ch3_dnc_steps",
    f"{long_range.budget(res, 'dnc'):,}" if dnc_runs else "n/a",
    display=False,
)


def said(models: list[str]) -> str:
    return ", ".join(long_range.LABELS[n] for n in models)


def seeds_of(k: int, n: int) -> str:
    if k == n:
        return f"all {n} seeds"
    return "none of its seeds" if k == 0 else f"{k} of its {n} seeds"


if void:  # models that never showed in-window recall: out of every comparison
    one = len(void) == 1
    void_text = (
        f"Not trained by the protocol: {said(void)}. "
        f"{'Its' if one else 'Their'} loss stayed on the plateau at every "
        "learning rate of the sweep and in every seed, and even the queries "
        "whose pair lies a few tokens back are answered at less than ten times "
        "chance (in-window: "
        + ", ".join(
            f"{long_range.LABELS[n]} "
            f"{100 * np.mean(long_range.in_window(res, n)):.1f}%"
            for n in void
        )
        + f"; chance {100 * res['chance']:.2f}%). That is a failure of the "
        f"protocol for {'this model' if one else 'these models'}, not a "
        f"measurement of {'its' if one else 'their'} memory, so the comparisons "
        f"below leave {'it' if one else 'them'} out of every claim."
    )
else:
    late = {
        n: [e for e in long_range.plateau_exit(res, n) if e is not None]
        for n in longer
    }
    void_text = (
        "Every model passes the rule, so every comparison below counts. Those "
        f"that trained twice as long ({said(list(longer))}) had stayed on the "
        "plateau through the shared budget at every learning rate of their "
        "sweep; at the longer budget "
        + "; ".join(
            f"{long_range.LABELS[n]} left it in "
            + seeds_of(len(e), len(long_range.plateau_exit(res, n)))
            + (f", at step {min(e):,} at the earliest" if e else "")
            for n, e in late.items()
        )
        + "."
    )
glue("ch3_void_text", void_text, display=False)
fig

# %% [markdown]
# The recurrent models and the published peers find the lookup only near the end of their
# budget, if at all, and their loss is still falling when training stops. Those that pass this
# chapter's rule (in-window recall at ten times chance or more), {glue:text}`ch3_learners`, were
# trained by the protocol, but only to the start of learning: what the comparison below shows of
# them is what they recall after a few thousand steps, not what their memories can hold when
# trained to convergence. That would take far more steps than a CPU run affords for every model,
# seed and learning rate.
#
# {glue:text}`ch3_void_text` The DNC steps its memory token by token and trains at
# {glue:text}`ch3_dnc_tps` tokens/s on this machine, against MemNet's {glue:text}`ch3_memnet_tps`;
# at its budget of {glue:text}`ch3_dnc_steps` steps a run took {glue:text}`ch3_dnc_hours` hours on
# average (on a core shared with other runs). The printed verdicts are the chapter's claims, with
# thresholds fixed before the run; a claim that misses says so.
#
# ## Capacity: more pairs than slots

# %% mystnb={"image": {"alt": "Accuracy against pairs per slot, from one sixteenth to two, for queries right after the pairs and long after them, one panel per delay."}}
delays = p["capacity_delays"]
fig, axes = plots.new_figure(
    1, len(delays), figsize=(plots.COLUMN_WIDTH, 3.4), sharey=True
)
for i, (ax, d) in enumerate(zip(axes[0], delays)):
    plots.accuracy_curves(
        long_range.capacity_curves(res, d),
        ax=ax,
        xlabel="pairs per slot (P / slots)",
        title=f"queries {d} windows after the pairs",
        chance=res["chance"],
        mark_x=1.0,
        mark_label="P = slots",
        legend="below" if i == 0 else None,
    )
cap = (
    long_range.capacity_curves(res, delays[0])["memnet"]
    if "memnet" in names
    else None
)
for P in p["capacity_pairs"]:
    x = P / p["num_slots"]
    glue(
        f"ch3_cap_{P}",
        (
            f"{100 * cap['mean'][cap['x'].index(x)]:.1f}"
            if cap and x in cap["x"]
            else "n/a"
        ),
        display=False,
    )
glue("ch3_cap_delay", delays[0], display=False)
fig

# %% [markdown]
# A slot memory has a hard capacity: once there are more pairs than slots, some pair has no slot
# to live in. With queries {glue:text}`ch3_cap_delay` windows after the pairs, MemNet answers
# {glue:text}`ch3_cap_16`% at half a pair per slot, {glue:text}`ch3_cap_32`% at one pair per slot
# and {glue:text}`ch3_cap_64`% at two, where at most half of the pairs can be stored: the
# graceful degradation a slot memory should show is a fall towards slots / P, not to chance.
#
# ## What the memory does
#
# The table at the end of the run's printout shows how MemNet uses its bank at P =
# {glue:text}`ch3_pairs` and at the largest P: write events per window (a write event resets a
# slot's age), how many of them overwrite content written earlier in the sequence, and how many
# slots a read mixes of the top-k it may use. Below, the stored trace follows every pair of four
# test sequences at the largest P: which slot the write of its value token was allocated to, how
# long it stayed there (until a later write event on the slot; brightness is the product of the
# slot's retention gates since), and which slot its query read most (stars).

# %% tags=["hide-input"] mystnb={"image": {"alt": "Four test sequences: which pair each slot holds over the segments, with the reads of the queries marked."}}
seed_shown = (
    seed if seed in run.traces else min(run.traces) if run.traces else None
)
if seed_shown is not None:
    stored = run.traces[seed_shown]
    trace = stored["trace"]
    rows = stored["tokens"].shape[0]
    occ = [
        survival.item_occupancy(
            trace,
            stored["tokens"],
            stored["targets"],
            stored["distance"],
            batch=i,
        )
        for i in range(rows)
    ]
    hits = [h for o in occ for h in o["hits"]]
    glue("ch3_hits", f"{100 * np.mean(hits):.0f}", display=False)
    glue("ch3_trace_pairs", int(stored["n_pairs"]), display=False)
    fig, axes = plots.new_figure(
        2, 2, figsize=(plots.COLUMN_WIDTH, 6.0), sharey=True
    )
    for i, ax in enumerate(axes.flat[:rows]):
        plots.item_occupancy_heatmap(
            occ[i],
            L,
            ax=ax,
            title=f"sequence {i}",
            colorbar=list(axes.flat) if i == rows - 1 else False,
        )
        if i % 2:
            ax.set_ylabel("")
    fig.suptitle(
        f"pairs in slots: P = {int(stored['n_pairs'])} "
        f"with {p['num_slots']} slots, queries "
        f"{int(stored['delay_windows'])} windows later (seed {seed_shown})",
        fontsize=10,
    )
else:
    fig = None
    glue("ch3_hits", "n/a", display=False)
    glue("ch3_trace_pairs", "n/a", display=False)
fig

# %% [markdown]
# In these sequences, with {glue:text}`ch3_trace_pairs` pairs (more than the slots), the query's
# strongest read lands on the slot its pair was written to in {glue:text}`ch3_hits`% of the cases,
# counting the local pairs and the pairs whose slot was taken before their query.
#
# ### Explore the stored trace
#
# Slide through the segments to see the pairs written in the first windows and the reads of their
# queries many segments later. On this page the slider moves among segments drawn in advance (the
# head and slot stay as shown); in JupyterLab every control redraws the figure.

# %% tags=["nbval-ignore-output"]
if seed_shown is not None:
    first_item_slot = next((sl for sl in occ[0]["slots"] if sl >= 0), None)
    display_widget = widgets.explorer(trace, slot=first_item_slot)
else:
    display_widget = None
display_widget

# %% tags=["remove-cell"]
# checks: the run holds what the chapter shows, and the claims are checked where the run is real
assert {"memnet", "full"} <= set(names), names
for m, c in curves.items():
    assert all(0.0 <= v <= 1.0 for v in c["mean"]), m
if seed_shown is not None:
    assert trace.write_strength.shape[-1] == p["num_slots"]
    assert len(hits) > 0
if run.profile in ("full", "gpu") and not res.get("missing"):
    failed = [
        v.claim
        for v in verdicts
        if not v.passed and "every other model" not in v.claim
    ]
    print("claims that miss:", failed or "none")
if run.profile == "full":
    # what the prose says of the recurrent models and the peers: every one is
    # trained by the protocol, each with twice the shared budget
    assert not void, void
    assert set(longer) == {"lstm", "titans", "rmt", "dnc"}, longer
    for n in ("lstm", "rmt", "titans", "dnc"):
        if n in names:
            exits = long_range.plateau_exit(res, n)
            assert all(
                e is None or e > 0.6 * long_range.budget(res, n) for e in exits
            ), (n, exits)
            assert (
                np.mean(long_range.in_window(res, n)) >= 10 * res["chance"]
            ) == (n not in void), n
            assert at(n, 16) < 0.05 and at(n, 16) < at("memnet", 16), n
    assert all(
        e is not None and e <= p["steps"]
        for n in ("memnet", "full", "windowed")
        for e in long_range.plateau_exit(res, n)
    )
if run.profile in (
    "full",
    "gpu",
):  # what the prose says of the positive control against MemNet
    assert at("full", 0) >= at("memnet", 0) and at("memnet", 64) > at(
        "full", 64
    ), (at("full", 0), at("memnet", 0), at("memnet", 64), at("full", 64))
print(f"chapter 3 checks passed ({run.profile} run)")

# %% [markdown]
# ## What we learned
#
# - On MQAR, where a token's id does not say what to store, MemNet keeps its pairs through the
#   delays it was trained on and far beyond: {glue:text}`ch3_memnet_64x`% at 64 windows and
#   {glue:text}`ch3_memnet_256x`% at 256, trained at 4 at most. With more pairs than slots it
#   degrades towards slots / P, not to chance: the capacity curve a slot memory should have.
# - What it keeps over long filler is decided by allocation. A write event that takes the slot
#   holding its content most weakly leaves the strongly written pairs alone; one that takes the
#   stalest slot would overwrite them first. A Transformer that attends over the whole sequence
#   is ahead inside its training length and behind MemNet at 64 windows, at a cost that grows
#   with the length.
# - The positive control learns the task completely, and the windowed model shows in-window
#   recall: the protocol trains the Transformer baselines, so what they miss beyond their reach is
#   theirs. The LSTM, the DNC, RMT and Titans, with the same input as MemNet, stay on the plateau
#   of guessing for most or all of their budget (twice the others') and end it with a little
#   in-window recall; beyond the window they answer a few percent right after the pairs and next
#   to nothing at 16 windows (LSTM {glue:text}`ch3_lstm_16x`%, DNC {glue:text}`ch3_dnc_16x`%, RMT
#   {glue:text}`ch3_rmt_16x`%, Titans {glue:text}`ch3_titans_16x`%). MemNet is ahead of them at
#   every distance beyond the window, but they had only begun to learn: whether its memory beats
#   theirs when every model is trained to convergence is a question this run does not answer.
# - The published peers run from their packages, adapted only where their code differs from their
#   papers or where their input would differ from MemNet's (the adapters in `memnet.peers` say
#   where), with the same draws, learning-rate sweep and parameter count, and at least the same steps.
#
# ## Exercises
#
# 1. Re-run at `profile = "laptop"` with `save = True` and compare with the stored run.
# 2. Which delay first costs MemNet accuracy? Relate it to the write events per window in the
#    memory table and to the number of free slots (slots minus P).
# 3. In the explorer, find a pair whose slot was taken before its query. Was the answer wrong?
