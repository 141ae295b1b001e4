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
# (ch-memnet)=
# # 2. MemNet: a windowed Transformer with a slot memory
#
# **Question.** How do we wire the bank of {ref}`ch-memory-bank` to a Transformer that only ever
# sees $L$ tokens, so that what it reads back is fused into its predictions and what it writes
# is decided by the network, and what does that look like in one forward pass, before and
# after a little training?
#
# `memnet.MemNet` has four subsystems: an **encoder** (embeddings, a token shift, positions in
# the window), a causal **controller** over one window, a **semantic bottleneck** that compresses
# what is written, and the **memory bank**. The loop over segments is the only Python loop
# over time.

# %% tags=["parameters"]
profile = "smoke"
device = "auto"
seed = 0
save = False

# %%
import torch
from myst_nb import glue

from memnet import MemNet, MemNetConfig, book, plots, widgets
from memnet.baselines import count_params
from memnet.bottleneck import SemanticBottleneck
from memnet.controller import Block, MemoryInterface
from memnet.encoder import Encoder
from memnet.losses import aux_losses, utilization_loss
from memnet.tasks import KeyValueRecall
from memnet.train import Trainer, TrainConfig

settings = book.setup(
    "smoke" if profile == "stored" else profile, device, seed, save
)
torch.set_printoptions(precision=3, sci_mode=False)

# %% [markdown]
# We use a small MemNet on key-value recall, the gentle task that opens {ref}`ch-long-range`
# (keys, values and distractors from separate id ranges), whatever the profile, so this chapter
# stays a quick read; only the brief training run below grows with the profile.

# %% tags=["nbval-check-output"]
task = KeyValueRecall(n_pairs=2, segment_len=8)
cfg = MemNetConfig(
    vocab_size=task.vocab_size,
    d_model=32,
    num_slots=32,
    top_k=4,
    mem_heads=4,
    segment_len=8,
)
torch.manual_seed(seed)
model = MemNet(cfg)
print(
    f"vocab={cfg.vocab_size} d_model={cfg.d_model} window "
    f"L={cfg.segment_len} slots N={cfg.num_slots} "
    f"heads H={cfg.mem_heads} top_k={cfg.top_k} bottleneck={cfg.bottleneck_dim}"
)
for name, child in model.named_children():
    print(
        f"{name:<14}{type(child).__name__:<24}{count_params(child):>7} parameters"
    )
print(f"{'total':<38}{count_params(model):>7} parameters")
glue("ch2_params", f"{count_params(model):,}", display=False)

# %% [markdown]
# ## Encoder: embeddings, a token shift, positions in the window
#
# Key-value recall needs each value token to know the key just before it. A windowed
# Transformer could learn that with an attention layer; the encoder hands it over for free
# with a **token shift**, a one-step causal convolution $x_t = e_t + W e_{t-1}$ (as in H3 and
# RWKV). Positions are learned and index the offset *inside* the window, so every segment
# looks the same to the controller.

# %%
book.show_source(Encoder.forward)

# %% tags=["nbval-check-output"]
batch = task.sample(2, 5 * cfg.segment_len, seed=seed)
windows = batch.tokens[:, : cfg.segment_len]
x0 = model.encoder(windows)
changed = windows.clone()
changed[:, 3] = (
    changed[:, 3] + 1
) % cfg.vocab_size  # change token 3 of the window
x1 = model.encoder(changed)
print("encoder:", tuple(windows.shape), "->", tuple(x0.shape))
print(
    "positions that see the change:",
    ((x1 - x0).abs().sum(-1)[0] > 1e-6).nonzero().flatten().tolist(),
)

# %% [markdown]
# ## Controller and its memory interface
#
# The controller is a small pre-LayerNorm causal Transformer (nanoGPT's block without biases).
# MemNet gives it a batch of *windows*, shape $(B \cdot S, L, D)$, so it cannot attend across
# a window border: anything older must come back through memory, which is the point of the
# experiment. A linear **memory interface** reads out, for every token, $H$ read queries, a
# write score (whose sigmoid is the write gate), a write key, an erase vector, an update share,
# and, per window, a decay direction.
#
# The write key of token $t$ is read out of the state of token $t-1$ (`write_key_shift=1`), and the
# key map starts as the mean of the heads' query maps. So what token $t$ writes is filed under what
# came just before it, in the space the heads query: for a pair "$k\ v$", the value is stored under
# the key, and a later query that is the key finds it from the first steps of training. With keys
# and queries drawn from unrelated random maps, the model first has to discover that the two should
# agree, and on associative recall that search stalls for hundreds of steps. The controller also
# gets a learned code for which window of the stream it is in (`segment_codes`: one per early
# window, one shared by all later ones; the memory counts the windows it has seen), so that it can
# tell the opening of a sequence from what follows.

# %%
book.show_source(Block.forward)
book.show_source(MemoryInterface)

# %% [markdown]
# ## Semantic bottleneck
#
# A write does not store the controller's state as it is: it passes through an MLP with a
# narrow middle ({glue:text}`ch2_bottleneck` units here), which must keep what later reads need
# and drop the rest.

# %%
glue("ch2_bottleneck", cfg.bottleneck_dim, display=False)
book.show_source(SemanticBottleneck)

# %% [markdown]
# ## Read, fuse, write: the forward pass
#
# For each segment $s$: read the memory as it stands with every token's queries (so tokens of
# window $s$ see what windows $< s$ wrote), then apply the window's gated writes. A read also sees
# the writes of *earlier tokens of its own window* before they reach a slot (`window_reads`):
# they are scored like slots (a key of the write's strength) and compete for the same top-$k$, so
# a value written at offset 5 can be read at offset 20 of the same window. The $H$ read
# vectors of a token are concatenated, LayerNorm'd and **fused residually** into the
# controller's stream, $z = h + W_f\,\mathrm{LN}([r_1; \dots; r_H])$, followed by a small MLP and
# the prediction head. Like the Recurrent Memory Transformer {cite}`bulatov2022rmt` the model
# processes a long sequence segment by segment with a recurrent memory; unlike it, the memory
# is an explicit, addressable bank rather than memory tokens, closer to the kNN memory of
# Memorizing Transformers {cite}`wu2022memorizing` but written by learned, gated decisions.

# %%
book.show_source(MemNet.forward)

# %% [markdown]
# ## Auxiliary losses
#
# Three optional losses shape how memory is used. **Utilization** is $\log N - H(\bar w)$, the
# gap between the entropy of the mean read weight per slot and its maximum: it is 0 when all
# slots are read equally and $\log N$ when one slot takes every read. **Memory pressure** is the
# mean retention gate (keeping things costs). **Read entropy** pushes reads to be sparse.

# %%
book.show_source(utilization_loss)
book.show_source(aux_losses)

# %% tags=["nbval-check-output"]
N = cfg.num_slots
print(f"uniform use:   {float(utilization_loss(torch.ones(N))):.3f}")
half = torch.cat([torch.ones(N // 2), torch.zeros(N // 2)])
one = torch.nn.functional.one_hot(torch.tensor(0), N).float()
print(
    f"half the slots:{float(utilization_loss(half)):.3f}"
    f"  (log 2 = {torch.log(torch.tensor(2.0)):.3f})"
)
print(
    f"one slot:      {float(utilization_loss(one)):.3f}"
    f"  (log N = {torch.log(torch.tensor(float(N))):.3f})"
)

# %% [markdown]
# ## One traced forward pass, untrained
#
# `model(tokens, return_trace=True).trace` records every segment's memory I/O. Here is an
# untrained model on a recall sequence: reads spread over whatever slots exist, and every
# token's write lands, weakly, on fresh slots.

# %% tags=["nbval-check-output"]
model.eval()
with torch.no_grad():
    out = model(batch.tokens, return_trace=True)
tr0 = out.trace
print(
    "logits:",
    tuple(out.logits.shape),
    " memory keys:",
    tuple(out.memory.keys.shape),
)
print(
    "trace:",
    {
        k: tuple(v.shape)
        for k, v in tr0.as_dict().items()
        if k in ("read_weight", "write_strength", "age")
    },
)
print("aux losses:", sorted(out.aux_losses))

# %% mystnb={"image": {"alt": "Overview of an untrained MemNet's memory over the segments of one sequence: reads by slot and token, write events, age and usage of every slot."}}
plots.trace_overview(tr0, title="untrained MemNet")

# %% [markdown]
# ## After brief training
#
# Now train on key-value recall for a few steps with the package's `Trainer` (AdamW, warmup and
# cosine decay, clipping; AMP on a GPU), as many as the long-range experiment's profile gives
# MemNet, and trace the same sequence again.

# %%
steps = {"smoke": 15, "laptop": 250, "gpu": 2000}[
    "smoke" if profile == "stored" else profile
]
batch_size, seq_len = 8, 5 * cfg.segment_len
torch.manual_seed(seed)
trained = MemNet(cfg)
trainer = Trainer(
    trained,
    TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=2e-3,
        log_every=max(1, steps // 5),
        progress=False,
    ),
    settings.device,
    name="memnet",
)
history = trainer.fit(
    lambda step: (lambda b: (b.tokens, b.targets))(
        task.sample(batch_size, seq_len, seed=10_000 + step)
    )
)
print(
    f"trained {steps} steps: loss {history[0]['loss']:.2f} -> {history[-1]['loss']:.2f}"
)
glue("ch2_steps", steps, display=False)
glue("ch2_loss_first", f"{history[0]['loss']:.2f}", display=False)
glue("ch2_loss_last", f"{history[-1]['loss']:.2f}", display=False)

# %% mystnb={"image": {"alt": "The same overview of MemNet's memory after training."}}
trained.eval()
with torch.no_grad():
    tr1 = trained(
        batch.tokens.to(settings.device), return_trace=True
    ).trace.to("cpu")
plots.trace_overview(tr1, title=f"MemNet after {steps} training steps")

# %% [markdown]
# After {glue:text}`ch2_steps` steps the task loss went from {glue:text}`ch2_loss_first` to
# {glue:text}`ch2_loss_last`. At the `smoke` profile that is barely a start: the point here is the
# shape of the pictures, not the effect, which {ref}`ch-long-range` measures on a stored run.
#
# ### Explore the trained model's trace
#
# The same explorer over the trained model's trace: on this page it switches among views drawn in
# advance; in JupyterLab every control redraws the figure.

# %% tags=["nbval-ignore-output"]
widgets.explorer(tr1)

# %% mystnb={"image": {"alt": "The trained model's read weights, token by slot, for several segments side by side, with the write events marked."}}
plots.small_multiples(tr1)

# %% [markdown]
# ## What AMP changes on a GPU
#
# On CUDA the `Trainer` runs the forward pass under `torch.autocast` in bfloat16 (float16 with a
# gradient scaler where bf16 is missing). Matrix multiplies in the encoder, controller,
# bottleneck and head then run in bf16, but the bank converts everything it receives to fp32
# (`queries.float()`, `req.key.float()`, ...) and keeps its state in fp32: slot contents are
# accumulated over hundreds of segments, and bf16's 8-bit mantissa would round small residual
# updates and retention factors near 1 away. We can check the numbers on the CPU, which
# supports bf16 autocast too.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    ref = trained(batch.tokens, return_trace=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = trained(batch.tokens, return_trace=True)
print(
    "logits dtype   fp32:", ref.logits.dtype, "  autocast:", amp.logits.dtype
)
print(
    "memory dtype   fp32:",
    ref.memory.keys.dtype,
    "  autocast:",
    amp.memory.keys.dtype,
)

# %% tags=["hide-input"]
logit_err = float((amp.logits.float() - ref.logits).abs().max())
same_order = float((amp.trace.write_pos == ref.trace.write_pos).float().mean())
agree = float((amp.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean())
same_slots = float(
    (amp.trace.read_index == ref.trace.read_index).float().mean()
)
glue("ch2_amp_logit_err", f"{logit_err:.3f}", display=False)
glue("ch2_amp_order", f"{100 * same_order:.1f}", display=False)
glue("ch2_amp_agree", f"{100 * agree:.1f}", display=False)
glue("ch2_amp_slots", f"{100 * same_slots:.1f}", display=False)
print(
    f"max |logit difference| {logit_err:.3f}; argmax "
    f"agrees on {100 * agree:.1f}% of tokens; "
    f"reads pick the same slots {100 * same_slots:.1f}% of the "
    f"time; writes keep their order {100 * same_order:.1f}%"
)

# %% [markdown]
# Under bf16 autocast the logits differ from fp32 by at most {glue:text}`ch2_amp_logit_err`, the
# predicted token agrees on {glue:text}`ch2_amp_agree`% of positions, and the reads address the
# same slots {glue:text}`ch2_amp_slots`% of the time. The state itself stays fp32; what changes is
# its bf16 inputs, and where two write gates are nearly tied, their order (kept in
# {glue:text}`ch2_amp_order`% of cases), which decides which of them gets the stalest slot. So
# compare AMP and fp32 runs by what they predict and recall, not slot by slot. On a GPU the same
# code path runs with `amp="auto"` in `TrainConfig`.

# %% tags=["remove-cell"]
# checks: shapes, finiteness, AMP keeps memory in fp32
B, T = batch.tokens.shape
S = -(-T // cfg.segment_len)
assert out.logits.shape == (B, T, cfg.vocab_size)
assert tr0.read_weight.shape == (
    B,
    S,
    cfg.segment_len,
    cfg.mem_heads,
    cfg.top_k,
)
assert tr1.write_strength.shape == (B, S, cfg.num_slots)
assert all(torch.isfinite(v) for v in out.aux_losses.values())
assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
assert (
    amp.memory.keys.dtype == torch.float32
    and amp.logits.dtype == torch.bfloat16
)
assert agree > 0.8, agree
print("chapter 2 checks passed")

# %% [markdown]
# ## What we learned
#
# - MemNet = encoder (with a token shift) → windowed causal controller → memory interface →
#   top-$k$ multi-head reads → LayerNorm and residual fusion → head, with gated writes through
#   a bottleneck at the end of each segment.
# - A trace of one forward pass shows reads, writes, ages and usage per slot and segment; an
#   untrained model writes everywhere weakly and reads diffusely.
# - Mixed precision touches the controller, not the memory: the bank stays fp32.
#
# What is open: writes reach the slots once per segment; inside a window a read sees the window's
# earlier writes as candidates, but the bank's bookkeeping (ages, usage, allocation) moves only at
# the window's end.
#
# ## Exercises
#
# 1. Set `writes_per_segment=2` in the config. How do the write heatmaps change?
# 2. Turn on `read_entropy_weight=0.01` and train again. Do reads get sparser?
# 3. Remove the token shift (zero `model.encoder.shift.weight`) and train. What happens to the loss?
