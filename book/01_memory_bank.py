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
# (ch-memory-bank)=
# # 1. The memory bank
#
# **Question.** A Transformer that attends over a window of $L$ tokens forgets everything older.
# What is the smallest *explicit* store that lets it keep chosen things for longer, and how do
# reading, writing and forgetting work on it, one tensor operation at a time?
#
# We build `memnet.MultiHeadMemoryBank` up step by step on tensors small enough to print:
# addressing (dense softmax against top-$k$ cosine), several heads, age and usage with
# least-recently-used allocation, the gated write with erase and residual update, and the learned
# decay that makes forgetting a parameter rather than an accident.

# %% tags=["parameters"]
profile = "smoke"
device = "auto"
seed = 0
save = False

# %%
import torch
import torch.nn.functional as F
from myst_nb import glue

from memnet import (
    MemNetConfig,
    MemoryState,
    MultiHeadMemoryBank,
    book,
    plots,
    widgets,
)
from memnet.memory import (
    WriteRequest,
    cosine_top_scores,
    cosine_topk,
    sparse_to_dense,
)

settings = book.setup(profile, device, seed, save)
torch.set_printoptions(precision=2, sci_mode=False)

# %% [markdown]
# All demos in this chapter run on the CPU in milliseconds, whatever the profile: the bank has
# no trained weights besides a sharpness per head and a decay logit per slot. We use one tiny
# configuration throughout.

# %% tags=["nbval-check-output"]
cfg = MemNetConfig(
    vocab_size=16,
    d_model=8,
    num_slots=8,
    top_k=2,
    mem_heads=2,
    segment_len=4,
    n_heads=2,
)
print(
    f"slots N={cfg.num_slots}, slot_dim D={cfg.slot_dim}, "
    f"heads H={cfg.mem_heads}, top_k K={cfg.top_k}"
)
bank = MultiHeadMemoryBank(cfg)
print("parameters:", {n: tuple(p.shape) for n, p in bank.named_parameters()})
state = bank.initial_state(batch_size=1)
print(
    "state:",
    {
        f: tuple(getattr(state, f).shape)
        for f in ("keys", "values", "age", "usage")
    },
)
glue("ch1_slots", cfg.num_slots, display=False)
glue("ch1_topk", cfg.top_k, display=False)

# %% [markdown]
# ## The state: keys, values, age, usage
#
# A slot is one row of the bank. It holds a **key** (what it is found by) and a **value** (what a
# read returns), and two bookkeeping numbers: its **age** (segments since it was last written
# with conviction) and its **usage** (a decaying trace of how much it was read and written).
# The state is a frozen dataclass; every operation returns a new one, so nothing a caller passes
# in is ever modified.

# %%
book.show_source(MemoryState)

# %% [markdown]
# ## Addressing: dense softmax against top-$k$ cosine
#
# The Neural Turing Machine {cite}`graves2014ntm` and the DNC {cite}`graves2016dnc` read with a
# softmax over the cosine similarity of a query $q$ to *every* slot key $m_i$,
#
# $$ w_i = \frac{\exp(\beta \cos(q, m_i))}{\sum_{j=1}^{N} \exp(\beta \cos(q, m_j))}. $$
#
# Every slot gets some weight, so every read blurs all slots and costs $O(N)$ in compute and
# gradient. Sparse Access Memory {cite}`rae2016sam` and the memory module of
# {cite:t}`kaiser2017rare` keep only the $k$ best-matching slots and renormalize over those:
#
# $$ w_i = \frac{\exp(\beta \cos(q, m_i))}{\sum_{j \in \text{top-}k} \exp(\beta \cos(q, m_j))}
#    \quad (i \in \text{top-}k), \qquad w_i = 0 \text{ otherwise}. $$
#
# In `memnet` that is one function; $\beta$ (the sharpness) is learned per head.
#
# One change to the plain cosine: a slot is found in proportion to how strongly it was written.
# A write stores its key as a unit direction times the weight of the write, and decay shrinks
# keys with everything else, so the length of a key says how much of it is there. A slot scores
#
# $$ s_i = \beta \cos(q, m_i)\, \min\!\big(\lVert m_i \rVert / \nu,\ 1\big), $$
#
# with $\nu$ = `full_key_norm` (1 by default; a vanishing $\nu$ gives back the plain cosine).
# Without the factor, content written at gate 0.05 is found exactly as well as content written at
# gate 1, and since reads are LayerNorm'd before the model uses them, the gate of the slot that
# answers a query barely changes the read: it gets next to no gradient, and the model cannot learn
# what is worth writing. With the factor, a gate sets how strongly its content will be found, and
# what the reads find trains it.

# %%
book.show_source(cosine_topk)
book.show_source(cosine_top_scores)

# %% [markdown]
# Four queries, noisy copies of the keys of slots 2, 5, 5 and 7, addressed both ways:

# %% tags=["nbval-check-output"]
g = torch.Generator().manual_seed(seed)
keys = torch.randn(1, cfg.num_slots, cfg.slot_dim, generator=g)  # (B, N, D)
targets = [2, 5, 5, 7]
queries = keys[:, targets] + 0.4 * torch.randn(
    1, 4, cfg.slot_dim, generator=g
)  # (B, Q, D)
beta = torch.tensor([10.0])

sim = F.cosine_similarity(
    queries[:, :, None], keys[:, None], dim=-1
)  # (B, Q, N)
dense = torch.softmax(beta * sim, dim=-1)  # (B, Q, N), every slot > 0
index, weight = cosine_topk(
    queries[:, :, None], keys, cfg.top_k, beta, cfg.eps
)  # (B, Q, 1, K)
sparse = sparse_to_dense(index, weight, cfg.num_slots)[:, :, 0]  # (B, Q, N)

print("best slot, dense :", dense.argmax(-1)[0].tolist())
print("best slot, top-k :", sparse.argmax(-1)[0].tolist())
print(
    "slots with weight, dense:",
    (dense > 0).sum(-1)[0].tolist(),
    " top-k:",
    (sparse > 0).sum(-1)[0].tolist(),
)

# %% mystnb={"image": {"alt": "Two heatmaps of read weights, query by slot: the dense softmax spreads weight over every slot, top-k cosine puts it on k slots per query."}}
tail = float((dense * (sparse == 0)).sum(-1).mean())
glue("ch1_dense_tail", f"{100 * tail:.1f}", display=False)
fig, axes = plots.new_figure(1, 2, figsize=(plots.COLUMN_WIDTH, 2.4))
plots.heatmap(
    dense[0],
    axes[0, 0],
    "dense softmax over all slots",
    "slot",
    "query",
    vmin=0,
    vmax=1,
)
plots.heatmap(
    sparse[0],
    axes[0, 1],
    f"top-{cfg.top_k} cosine",
    "slot",
    "query",
    vmin=0,
    vmax=1,
)
fig

# %% [markdown]
# Both find the right slot, but the dense read spreads {glue:text}`ch1_dense_tail`% of its
# weight, on average, over slots the sparse read ignores; with thousands of slots that tail
# becomes most of the read. Top-$k$ also makes the gradient of a read touch only $k$ slots.
#
# ## Several heads
#
# A read head is one independent address. With $H$ heads, every token issues $H$ queries and
# gets back $H$ vectors (concatenated and fused into the controller's stream in
# {ref}`ch-memnet`). The bank reads a whole window at once: queries have shape
# $(B, L, H, D)$.

# %%
book.show_source(MultiHeadMemoryBank.read)

# %% tags=["nbval-check-output"]
values = torch.randn(1, cfg.num_slots, cfg.slot_dim, generator=g)
full = MemoryState(
    keys, values, torch.zeros(1, cfg.num_slots), torch.zeros(1, cfg.num_slots)
)
# head 0 looks for slots 2, 5, 5, 7; head 1 for slot 0 at every token of the window
q = torch.stack(
    [
        queries,
        keys[:, [0, 0, 0, 0]]
        + 0.4 * torch.randn(1, 4, cfg.slot_dim, generator=g),
    ],
    dim=2,
)
r = bank.read(full, q)  # queries (B, L, H, D)
print(
    "read vectors:",
    tuple(r.vectors.shape),
    " index:",
    tuple(r.index.shape),
    " weight:",
    tuple(r.weight.shape),
)
print("head 0 top slot per token:", r.index[0, :, 0, 0].tolist())
print("head 1 top slot per token:", r.index[0, :, 1, 0].tolist())

# %% mystnb={"image": {"alt": "Read weights of each head, token by slot: each head reads a few slots of its own."}}
rd = sparse_to_dense(r.index, r.weight, cfg.num_slots)[0]  # (L, H, N)
fig, axes = plots.new_figure(1, 2, figsize=(plots.COLUMN_WIDTH, 2.4))
for h in range(cfg.mem_heads):
    plots.heatmap(
        rd[:, h], axes[0, h], f"head {h}", "slot", "token", vmin=0, vmax=1
    )
fig

# %% [markdown]
# ## Age, usage and allocation of the least recently used slot
#
# Where should new content go? The DNC {cite}`graves2016dnc` allocates the least-used location;
# {cite:t}`kaiser2017rare` write a new memory into the *oldest* slot (with some randomness). The
# bank combines both into one **staleness** score: old slots and little-used slots score highest,
# with age dominating (heavy use can at most halve a slot's score, so slots whose usage has
# saturated are still recycled oldest first),
#
# $$ \text{staleness}_i = (a_i + 1)\,\big(1 - \tfrac{1}{2} u_i\big), $$
#
# and the $W$ writes of a segment take the $W$ stalest slots, the strongest write the stalest.
# With `MemNetConfig(allocation="faded")` the score is also divided by $\rho_i$, the fraction of
# the slot's content that decay has retained since its last write (`MemoryState.retained`), so
# that a slot decay has emptied is reused before an old one still holding its content
# (chapter 5 trains both). With `allocation="weakest"` age drops out: a slot scores $1 - h_i$,
# where $h_i$ is what it holds, the strength of its last write event times the retention since
# (0 for a slot never written). A write event then takes an empty slot first, then the most
# weakly held one, so a slot written strongly outlives any number of weaker events until decay
# lets it go; under staleness the oldest slot goes first, however strongly it was written
# (chapter 3 meets long stretches of filler where that matters).

# %%
book.show_source(MemoryState.staleness)
book.show_source(MultiHeadMemoryBank.allocation_score)
book.show_source(MultiHeadMemoryBank.allocate)

# %% tags=["nbval-check-output"]
age = torch.tensor([[0.0, 5.0, 1.0, 4.0, 0.0, 2.0, 7.0, 1.0]])
usage = torch.tensor([[0.9, 0.0, 0.5, 0.8, 0.0, 0.3, 0.95, 0.0]])
aged = MemoryState(keys, values, age, usage)
print("staleness:", [round(v, 2) for v in aged.staleness()[0].tolist()])
print("allocation order for 3 writes:", bank.allocate(aged, 3)[0].tolist())

# %% mystnb={"image": {"alt": "One row each for the age, usage and staleness of every slot, each scaled to the range 0 to 1."}}
fig, axes = plots.new_figure(1, 1, figsize=(plots.COLUMN_WIDTH, 1.9))
plots.heatmap(
    torch.cat(
        [age / age.max(), usage, aged.staleness() / aged.staleness().max()]
    ),
    axes[0, 0],
    "age, usage, staleness (each scaled to [0, 1])",
    "slot",
    "",
    cmap="cividis",
)
axes[0, 0].set_yticks([0, 1, 2], ["age", "usage", "staleness"])
fig

# %% [markdown]
# Slot 6 is the oldest but heavily used, so it is *not* the first to go: slot 1, almost as old
# and never touched, is.
#
# ## The gated write: erase, then add
#
# A segment issues $W$ write requests. Each has a key $k$, a value $x$, a gate $g \in [0, 1]$,
# an erase vector $e \in [0, 1]^D$ and an update share $\mu \in [0, 1]$. Its weight over slots
# mixes a **residual update** of the slots its key already matches (top-$k$ content addressing,
# share $\mu$) with **allocation** of a stale slot (share $1 - \mu$), all scaled by the gate:
#
# $$ w_j = g_j \big(\mu_j\, c_j + (1 - \mu_j)\, \mathbb{1}_{\text{alloc}(j)}\big), \qquad
#    M \leftarrow M \odot \Big(1 - \sum_j w_j e_j^\top\Big) + \sum_j w_j x_j^\top . $$
#
# A gate near 0 means "do not write": writes are a decision, not a side effect of every step.
# Only a slot whose total write strength passes `write_threshold` counts a **write event**,
# which resets its age.

# %%
book.show_source(MultiHeadMemoryBank.write)

# %% tags=["nbval-check-output"]
D = cfg.slot_dim
new = torch.randn(1, 2, D, generator=g)
req = WriteRequest(
    key=torch.stack(
        [new[:, 0], keys[:, 3]], dim=1
    ),  # write 0: new content; write 1: key of slot 3
    value=torch.stack([new[:, 0], new[:, 1]], dim=1),
    gate=torch.tensor(
        [[0.95, 0.6]]
    ),  # both writes happen, the second more softly
    erase=torch.full((1, 2, D), 0.9),
    update=torch.tensor(
        [[0.0, 1.0]]
    ),  # write 0 allocates, write 1 updates slot 3 in place
    decay=torch.zeros(1, D),
)
after, wr = bank.write(aged, req)
print("allocated slots  :", wr.alloc[0].tolist())
print("write events     :", wr.events[0].nonzero().flatten().tolist())
print("age after write  :", after.age[0].int().tolist())
print(
    "slots changed    :",
    (
        (after.values - aged.values * wr.retention[..., None]).abs().sum(-1)
        > 1e-4
    )[0]
    .nonzero()
    .flatten()
    .tolist(),
)

# %% mystnb={"image": {"alt": "Slot values, slot by dimension, before and after a gated write, beside each slot's write strength with the write events marked."}}
fig, axes = plots.new_figure(
    1, 3, figsize=(plots.COLUMN_WIDTH, 2.8), width_ratios=[1, 1, 0.45]
)
for ax, state, when in zip(axes[0], (aged, after), ("before", "after")):
    plots.heatmap(
        state.values[0], ax, f"values {when}", "dimension", "slot",
        cmap="RdBu_r", vmin=-2.5, vmax=2.5,
    )
plots.heatmap(
    wr.strength[0][:, None],
    axes[0, 2],
    "write strength",
    "",
    "slot",
    cmap="Blues",
    vmin=0,
    vmax=1,
    events=wr.events[0][:, None],
)
axes[0, 2].set_xticks([])
fig

# %% [markdown]
# The first write lands on the stalest slot (1) and resets its age; the second updates slot 3,
# the best match of its key, in place, and counts as an event there too. Every other slot is scaled only by its retention gate.
#
# ## Forgetting as a parameter: decay
#
# Before a segment's writes, every slot is multiplied by a retention gate
# $\rho_i = \sigma(\delta_i + \langle \hat m_i, d \rangle)$: a learned logit $\delta_i$ per slot
# plus the alignment of the slot's key with a *decay direction* $d$ that the controller emits
# for each window. Content the controller considers obsolete can thus be faded by content,
# not only by position; Titans {cite}`behrouz2024titans` similarly learn a data-dependent
# forgetting gate for their memory. With no writes, a slot's content shrinks like
# $\prod_t \rho_i^{(t)}$.

# %%
book.show_source(MultiHeadMemoryBank.retention)

# %% mystnb={"image": {"alt": "Remaining fraction of each slot's content over twelve segments without writes: slots with a fast decay fade within a few segments, slow ones keep most of it."}}
decay_bank = MultiHeadMemoryBank(cfg)
with torch.no_grad():
    decay_bank.decay_logit.copy_(torch.linspace(-1.0, 6.0, cfg.num_slots))
no_write = WriteRequest(
    keys[:, :1],
    values[:, :1],
    torch.zeros(1, 1),
    torch.zeros(1, 1, D),
    torch.zeros(1, 1),
    torch.zeros(1, D),
)
s_, norms = full, []
with torch.no_grad():
    for t in range(12):
        s_, _ = decay_bank.write(s_, no_write)
        norms.append(s_.values.norm(dim=-1)[0] / full.values.norm(dim=-1)[0])
norms = torch.stack(
    norms, dim=1
)  # (N, T): remaining fraction of each slot's content
rho = torch.sigmoid(decay_bank.decay_logit.detach())
half_life = torch.log(torch.tensor(0.5)) / torch.log(rho)
glue("ch1_halflife_fast", f"{float(half_life[0]):.1f}", display=False)
glue("ch1_halflife_slow", f"{float(half_life[-1]):.0f}", display=False)
fig, axes = plots.new_figure(1, 1, figsize=(plots.COLUMN_WIDTH, 2.6))
plots.heatmap(
    norms,
    axes[0, 0],
    "remaining content |v_i(t)| / |v_i(0)| without writes",
    "segment",
    "slot",
    vmin=0,
    vmax=1,
)
fig

# %% [markdown]
# With logits from $-1$ to $6$, the half-life of a slot's content ranges from
# {glue:text}`ch1_halflife_fast` to {glue:text}`ch1_halflife_slow` segments. Training moves these
# logits; the memory-pressure loss ({ref}`ch-memnet`) charges for retention, so keeping content
# must pay for itself in the task loss.
#
# ## Slot dynamics over a sequence
#
# `memnet.book.run_bank` drives the bank as `MemNet` does: for each segment, read with the memory
# as it stands, then write, and record a `MemoryTrace`. Here three writes per segment carry
# random content; their gates alternate between strong and weak, so some segments cause write
# events and others only nudge stale slots.

# %%
book.show_source(book.run_bank)

# %% mystnb={"image": {"alt": "Overview of a hand-driven bank over 12 segments: reads by slot and token, write events, and the age and usage of every slot in each segment."}}
S, L, H, W = 12, cfg.segment_len, cfg.mem_heads, 3
gates = torch.tensor([0.9, 0.3, 0.7, 0.2]).repeat(S)[: S * W].view(1, S, W)
seq_bank = MultiHeadMemoryBank(cfg)
reqs = []
for s in range(S):
    content = torch.randn(1, W, D, generator=g)
    reqs.append(
        WriteRequest(
            content,
            content,
            gates[:, s],
            torch.full((1, W, D), 0.8),
            torch.full((1, W), 0.2),
            torch.zeros(1, D),
        )
    )
# each token's queries look for the content written one or two segments ago
qs = torch.stack(
    [
        reqs[max(s - 1 - (s % 2), 0)].key[:, torch.arange(L) % W]
        for s in range(S)
    ],
    dim=1,
)  # (1, S, L, D)
qs = qs[:, :, :, None] + 0.3 * torch.randn(
    1, S, L, H, D, generator=g
)  # (1, S, L, H, D)
final, trace = book.run_bank(seq_bank, qs, reqs)
plots.trace_overview(trace, title="a hand-driven bank over 12 segments")

# %% [markdown]
# Read it left to right: reads (slot $\times$ token) find the slots written a segment or two
# earlier; write events (red circles) land on the stalest slots and reset their age; usage
# rises where slots are read and written and decays elsewhere.
#
# ### Explore it
#
# The explorer below shows one segment's reads (token $\times$ slot) and the life of one slot
# (age, usage, retention, write strength). On this page its controls switch among views drawn in
# advance (every segment); in JupyterLab every control, head and slot included, redraws the figure.
# The small multiples under it show the reads of several segments side by side.

# %% tags=["nbval-ignore-output"]
widgets.explorer(trace)

# %% mystnb={"image": {"alt": "The read weights of several segments side by side, token by slot, with the write events of each segment marked."}}
plots.small_multiples(trace)

# %% tags=["remove-cell"]
# checks: shapes and invariants of the demos above
assert sparse.shape == dense.shape == (1, 4, cfg.num_slots)
assert int((sparse > 0).sum(-1).max()) == cfg.top_k
assert sparse.argmax(-1)[0].tolist() == targets
torch.testing.assert_close(sparse.sum(-1), torch.ones(1, 4))
assert r.vectors.shape == (1, 4, cfg.mem_heads, cfg.slot_dim)
assert bank.allocate(aged, 1)[0].item() == 1
assert wr.events[0, 1] and after.age[0, 1] == 0
assert trace.num_segments == S and trace.write_strength.shape == (
    1,
    S,
    cfg.num_slots,
)
assert bool(((trace.usage >= 0) & (trace.usage <= 1)).all())
assert (
    float(norms[-1, -1]) > float(norms[0, -1]) - 1e-6
    and float(norms[0, -1]) < 0.01
)
print("chapter 1 checks passed")

# %% [markdown]
# ## What we learned
#
# - A slot memory is four tensors (keys, values, age, usage) and three operations: a top-$k$
#   cosine read per head, a gated erase-and-add write, and a retention gate.
# - A key's length is how strongly its content was written: weak and faded slots are found less,
#   which is what lets a write gate learn from the reads.
# - Top-$k$ reads touch $k$ of $N$ slots; dense reads blur all of them.
# - Allocation by staleness, $(a+1)(1-u/2)$, recycles slots that are old, unused ones first.
# - Forgetting is learned: a per-slot logit plus a content-dependent decay direction.
#
# What is open: the write threshold and the usage decay are fixed hyperparameters here; a
# continual learner might want them to depend on how surprising the content is, as Titans do,
# or protect some slots from overwriting as GEM protects past tasks' gradients
# {cite}`lopezpaz2017gem`.
#
# ## Exercises
#
# 1. Raise `top_k` to `num_slots`. Which demo now behaves like the dense read?
# 2. Change the usage values above so that slot 6 is allocated first. What is the smallest change?
# 3. In the gated write, set `update` of write 1 to 0.5. Which slots change, and by how much?
# 4. Give the decay direction `d` the key of slot 2 (times 5) in the decay demo. What happens to slot 2?
