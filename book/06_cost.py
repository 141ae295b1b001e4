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
# (ch-cost)=
# # 6. The cost of memory
#
# **Question.** An explicit memory should be cheap: a constant cost per token however long the
# sequence, a constant state however many tokens came before, and reads that stay fast as the
# bank grows. Is MemNet's cost per token flat from a thousand to 64 thousand tokens, how close does
# it come to the same Transformer without memory, is it ten times faster than a Transformer attending
# over everything at 16 thousand tokens, and what does a bank of a million slots cost?

# %% tags=["parameters"]
profile = "stored"
device = "auto"
seed = 0
save = False

# %%
import ipywidgets as W
import torch
from myst_nb import glue

from memnet import MemNet, MemNetConfig, book, fused, plots, widgets
from memnet.experiments import bench
from memnet.memory import StreamingMemory, stable_topk, torch_stable_topk
from torch.utils._python_dispatch import TorchDispatchMode

settings = book.setup(profile, device, seed, save)

# %% [markdown]
# ## Where the cost of a token goes
#
# MemNet's controller attends only inside its window of $L$ tokens, so it costs $O(L)$ per token
# whatever the sequence length $T$. Once per segment the memory is read (every head's query
# against the $N$ slot keys: one pass over the bank, $O(N D)$) and written (retention of every slot,
# a content top-k of the write keys, allocation of the stalest slots, erase and add). Per token
# that is $O(L + N D / L)$: **independent of $T$**. A FullTransformer pays $O(T)$ per token for
# attention in training, and at inference keeps a KV cache of $2 \times$ layers $\times T \times d$
# numbers that it must read for every new token (fused attention kernels such as FlashAttention
# {cite}`dao2022flashattention` save memory, not the $O(T)$ work). An LSTM has constant cost and state, but a
# sequential recurrence (and, in chapter 3, no recall beyond its capacity).
#
# Four things make MemNet's cost what the equation says in practice:
#
# - **Exact top-k in O(N).** Reads keep the top-k slots with ties to the lowest index (empty slots
#   tie exactly; the split-versus-whole agreement of chapter 2 depends on that rule). A full stable
#   sort costs $O(N \log N)$. On CPU, `stable_topk` hands the selection to a compiled kernel
#   (`memnet.native.select_rows`) that reads each row once and keeps a sorted list of k: a segment
#   asks for the top k of thousands of short rows (every token's heads against the slots), and
#   `torch.topk` pays a fixed cost per row. Elsewhere `torch_stable_topk` finds the k-th value with
#   `topk` and resolves ties at it in index order. Both give the sort's answer, and banks larger
#   than a chunk are scored chunk by chunk. Sparse reads and writes are what let
#   {cite:t}`rae2016sam` scale a memory-augmented network.
# - **One gradient per segment, not per slice.** The segment loop used to take `x[:, s]` of each
#   per-segment tensor; autograd's backward of each slice materialises a zero tensor of the whole
#   sequence, $O(S^2)$ over the loop. Unbinding once makes the backward linear in $S$.
# - **One call each way for all segments.** On CPU the read and the write of a segment, written as
#   torch operations, are hundreds of small calls forward and backward; `memnet.fused` computes
#   the same step in C, and runs the loop over a call's segments inside one C call forward and one
#   backward (below, "The memory step, one call each way").
# - **An in-place bank for streaming.** The functional write builds new $(N, D)$ keys and values
#   every segment because retention scales every slot. `MemNet.stream` folds retention into a
#   per-slot log scale, caches unit keys, scores reads and content writes in one chunked pass,
#   and rewrites only the rows a segment writes. It agrees with `forward` up to float rounding
#   (`tests/test_model.py`).

# %%
book.show_source(stable_topk)
book.show_source(torch_stable_topk)

# %% [markdown]
# A tiny check that the O(N) top-k gives the stable sort's answer where it matters: scores with
# ties (as empty slots give), and the constant size of a streaming state.

# %% tags=["nbval-check-output"]
scores = torch.tensor(
    [[0.0, 0.5, 0.0, 0.5, -0.0, 0.9, 0.0, 0.5] * 40]
)  # 320 slots, many exact ties
top, index = stable_topk(scores, 4)
top_t, index_t = torch_stable_topk(scores, 4)
ref = scores.sort(dim=-1, descending=True, stable=True)
def scores_of(t):  # float32 values to 3 decimals (0.9 rather than 0.8999999761581421)
    return [round(v, 3) for v in t.tolist()]


print("stable_topk       :", index[0].tolist(), scores_of(top[0]))
print("torch_stable_topk :", index_t[0].tolist(), scores_of(top_t[0]))
print("stable sort       :", ref.indices[0, :4].tolist(), scores_of(ref.values[0, :4]))
cfg_demo = bench.make_config(bench.PROFILES["smoke"])
torch.manual_seed(seed)
demo = MemNet(cfg_demo).eval()
mem = StreamingMemory(demo.memory)
sizes = []
for i in range(3):
    demo.stream(
        torch.randint(0, cfg_demo.vocab_size, (1, 4 * cfg_demo.segment_len)),
        mem,
    )
    sizes.append(mem.nbytes())
print(
    f"streaming state after 4, 8, 12 segments: {sizes} "
    f"bytes (N={cfg_demo.num_slots}, D={cfg_demo.slot_dim})"
)

# %% [markdown]
# ## The run
#
# Every measurement below comes from **one process**, so the ratios between models share the
# machine's state. Times are the minimum over repeats after a warm-up, B=1, with the thread count
# stored in the run. On CPU there is no allocator statistic for peak memory; we report
# **autograd memory**, the bytes of the distinct tensors autograd saves for the backward pass
# (recorded with `torch.autograd.graph.saved_tensors_hooks`): it is what grows with sequence
# length (parameters, gradients and transient buffers are not in it). On CUDA the run also has
# `torch.cuda.max_memory_allocated`. Re-run with `python -m memnet.bench --profile laptop`.

# %%
run = book.load_or_train(profile, device, seed, save, experiment="bench")
res = run.result
glue("ch6_run", run.describe(), display=False)
print(run.describe())
book.show_report(bench.summary_table(res))

# %% [markdown]
# Figures in this chapter come from: {glue:text}`ch6_run`.
#
# ## Time and memory against sequence length

# %% tags=["hide-input"] mystnb={"image": {"alt": "Training time per token and autograd memory against sequence length, on log-log axes, for MemNet and the baselines."}}
fig, axes = plots.new_figure(1, 2, figsize=(plots.COLUMN_WIDTH, 3.3))
plots.bench_vs_length(res, "us_per_token", ax=axes[0, 0], legend="below")
plots.bench_vs_length(res, "autograd_mb", ax=axes[0, 1], legend=None)
axes[0, 0].set_title(
    "training (forward + backward), B=1", fontsize=plots.TITLE_SIZE
)
axes[0, 1].set_title("autograd memory (x: skipped)", fontsize=plots.TITLE_SIZE)
s = res["summary"]
Ts = s["memnet_seq_lens"]
glue("ch6_T0", f"{Ts[0]:,}", display=False)
glue("ch6_T1", f"{Ts[-1]:,}", display=False)
glue("ch6_flat", f"{100 * s['memnet_flatness']:.0f}", display=False)
glue("ch6_flat_med", f"{100 * s['memnet_median_dev']:.0f}", display=False)
glue("ch6_us_lo", f"{s['memnet_us_per_token_range'][0]:.0f}", display=False)
glue("ch6_us_hi", f"{s['memnet_us_per_token_range'][1]:.0f}", display=False)
mem_rows = {r["T"]: r for r in res["seq_len"] if r["model"] == "memnet"}
glue(
    "ch6_mem_mb_per_ktok",
    f"{mem_rows[Ts[-1]]['autograd_mb'] / (Ts[-1] / 1024):.0f}",
    display=False,
)
tb = res.get("tbptt", {})
glue(
    "ch6_tbptt_mb",
    f"{tb.get('autograd_mb_per_chunk', float('nan')):.0f}",
    display=False,
)
glue(
    "ch6_tbptt_us",
    f"{tb.get('us_per_token', float('nan')):.0f}",
    display=False,
)
fig

# %% [markdown]
# From {glue:text}`ch6_T0` to {glue:text}`ch6_T1` tokens MemNet's training time per token stays
# between {glue:text}`ch6_us_lo` and {glue:text}`ch6_us_hi` microseconds: within
# ±{glue:text}`ch6_flat_med`% of their median, the largest {glue:text}`ch6_flat`% above the
# smallest. Timings are sensitive to the machine's load: on cores shared with other jobs the same
# point can measure several times its time on a quiet machine. The sweep
# therefore times its points interleaved, every model at every length once per round, and keeps
# each point's fastest round, so that a slow spell lands on all points of a round rather than on
# one point's whole measurement. Interleaving has a cost of its own: a short pass right after a
# 65k-token one ran slower for several passes, because glibc's allocator, after the long pass freed
# gigabytes, had handed pages back to the system and the short pass paid for fresh ones (the
# FullTransformer's 1k-token point read about 2.4 times its own steady time). The benchmark
# therefore pins the allocator for its process (`bench.steady_allocator`: a fixed mmap threshold, a
# heap that is never trimmed) and gives every short point an untimed pass in each round, so that
# each point measures what repeated passes of its own length cost, as in training. Its autograd
# memory grows linearly, about {glue:text}`ch6_mem_mb_per_ktok` MB per thousand tokens: backprop
# through every segment keeps every segment's activations. Truncated BPTT
# {cite}`williams1990tbptt` bounds that: `memnet.model.truncated_backward(model, tokens, targets, k)` runs k segments at a time, calls
# `backward` on each chunk and passes the memory on detached, so autograd holds one chunk
# ({glue:text}`ch6_tbptt_mb` MB here) whatever the length; at {glue:text}`ch6_T1` tokens it ran at
# {glue:text}`ch6_tbptt_us` microseconds per token. `MemNetConfig.tbptt_segments = k` cuts the
# gradient path the same way inside one call (the two agree, `tests/test_model.py`) but keeps
# the call's activations. The default of both is no truncation: gradients flow through every
# segment of a call. The FullTransformer's time per token grows with $T$, and the points it skips
# (x on the axis) would exceed the profile's budget.
#
# ## The ratios

# %% tags=["hide-input"]
ratio_rows = []
for name, r in s["ratios"].items():
    for T, v in r.items():
        ratio_rows.append((name, int(T), v))
print(f"{'model':<10}{'T':>8}{'time / MemNet time':>20}")
for name, T, v in ratio_rows:
    print(f"{name:<10}{T:>8}{v:>20.2f}")
full16 = s["ratios"].get("full", {})
Tmax_full = max((int(T) for T in full16), default=None)
glue("ch6_full_T", f"{Tmax_full:,}" if Tmax_full else "n/a", display=False)
glue(
    "ch6_full_ratio",
    f"{full16[str(Tmax_full)]:.2f}" if Tmax_full else "n/a",
    display=False,
)
glue(
    "ch6_win_ratio",
    f"{s['ratios']['windowed'][str(Ts[-1])]:.2f}",
    display=False,
)
glue(
    "ch6_lstm_ratio", f"{s['ratios']['lstm'][str(Ts[-1])]:.2f}", display=False
)

# %% [markdown]
# A ratio above 1 means the other model is slower than MemNet at that length. At
# {glue:text}`ch6_full_T` tokens the FullTransformer (torch SDPA, same width and parameter
# budget) takes {glue:text}`ch6_full_ratio` times MemNet's time. The WindowedTransformer (MemNet
# without memory) takes {glue:text}`ch6_win_ratio` times and the LSTM {glue:text}`ch6_lstm_ratio`
# times MemNet's time at the longest length: what the memory costs is the gap to the windowed
# model. In chapter 3 that cost buys recall far beyond the
# window, which neither the windowed Transformer nor the LSTM had.
#
# ## How long a window?
#
# Per token, MemNet pays for its controller, which grows with the window $L$, and for one read and
# one write per segment, which are shared by the $L$ tokens of the segment. The run measures
# MemNet and the WindowedTransformer at {glue:text}`ch6_win_T` tokens for several windows, with
# {glue:text}`ch6_win_W` writes per segment (at a window of {glue:text}`ch6_win_W` every token writes,
# as in the table above).

# %% tags=["hide-input"] mystnb={"image": {"alt": "Time per token against the window length for MemNet and the windowed Transformer, with the FullTransformer at the same length for reference."}}
wins = res["windows"]
wb = s["window_best"]
glue("ch6_win_T", f"{wins[0]['T']:,}", display=False)
glue("ch6_win_W", wins[-1]["writes_per_segment"], display=False)
glue("ch6_win_best_L", wb["segment_len"], display=False)
glue("ch6_win_best_us", f"{wb['us_per_token']:.0f}", display=False)
glue(
    "ch6_win_best_ratio",
    f"{wb.get('full_ratio', float('nan')):.1f}",
    display=False,
)
glue(
    "ch6_win_verdict",
    "at least" if wb.get("full_ratio", 0) >= 10 else "short of",
    display=False,
)
ceiling = ""
if "windowed_full_ratio" in wb:
    wf = wb["windowed_full_ratio"]
    ceiling = (
        "The windowed Transformer, MemNet's controller "
        "without memory and with a wider feed-forward layer "
        f"to match the parameter budget, is {wf:.1f} times "
        "faster than the FullTransformer at that window"
    )
    ceiling += (
        ": MemNet is faster still, because the windowed "
        "model spends the parameters of MemNet's memory "
        "interface on that wider layer, which at this "
        "window costs more per token than the memory does."
        if wf < wb["full_ratio"]
        else ": the ratio a memory of zero cost would reach with the same "
        "parameter budget."
    )
glue("ch6_win_ceiling", ceiling, display=False)
mem_w = {
    r["segment_len"]: r["us_per_token"] for r in wins if r["model"] == "memnet"
}
win_w = {
    r["segment_len"]: r["us_per_token"]
    for r in wins
    if r["model"] == "windowed"
}
L0, L1 = min(mem_w), max(mem_w)
gaps = {
    L: (mem_w[L] - win_w[L]) * L / 1000 for L in sorted(mem_w)
}  # ms per segment above the windowed model


def gap_phrase(L: int) -> str:
    g = gaps[L]
    if g > 0:
        return f"{g:.2f} ms per segment at a window of {L}"
    return (
        f"nothing at a window of {L}, where MemNet was {-g:.2f} "
        "ms per segment faster than the windowed model "
        "(its controller is smaller: the memory's "
        "parameters come out of the same budget)"
    )


glue(
    "ch6_win_gap_line",
    "MemNet's memory overhead per segment (its time per "
    "token above the windowed model's, times the window) is "
    + " and ".join(gap_phrase(L) for L in (L0, L1))
    + ".",
    display=False,
)
full_T = next(
    (
        r["us_per_token"]
        for r in res["seq_len"]
        if r["model"] == "full"
        and r["T"] == wins[0]["T"]
        and "skipped" not in r
    ),
    None,
)
if (
    full_T is not None
):  # the memory's budget per segment for 10x: (full / 10 - windowed) * L
    budget = {L: (full_T / 10 - win_w[L]) * L / 1000 for L in sorted(win_w)}
    room = {L: b for L, b in budget.items() if b > 0}
    none = [L for L, b in budget.items() if b <= 0]
    budget_line = (
        "To be ten times faster than the FullTransformer "
        "here, MemNet's memory may cost a tenth of the "
        "FullTransformer's time per token, less "
        "the windowed model's, times the window: "
    )
    if room:
        budget_line += "at most " + book.join_words(
            [
                f"{b:.2f} ms per segment at a window of {L}"
                for L, b in room.items()
            ]
        )
    if none:
        budget_line += (
            (", and nothing at all" if room else "nothing at all")
            + " at a window of "
            + " or ".join(str(L) for L in none)
            + ", where the controller alone is already too slow"
        )
    budget_line += "."
else:
    budget_line = ""
glue("ch6_win_budget", budget_line, display=False)


class CountCalls(TorchDispatchMode):
    """Counts the operator calls that reach a kernel (below autograd, views
    included)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def calls_per_segment(
    L: int, W: int, use_fused: bool, segments: tuple = (2, 6)
) -> tuple[float, float]:
    """Operator calls that one more segment adds to MemNet's forward and to its
    backward: the difference between two lengths over their segments; the memory
    step as torch operations (use_fused False) or by the compiled kernel of
    memnet.fused (where it is available)."""
    cfg = MemNetConfig.from_dict(
        {**res["config"], "segment_len": L, "writes_per_segment": min(W, L)}
    )
    model = MemNet(cfg)
    model.memory.fused = use_fused
    counts = []
    for S in segments:
        x = torch.randint(
            0,
            cfg.vocab_size,
            (1, S * L),
            generator=torch.Generator().manual_seed(S),
        )
        with CountCalls() as fwd:
            loss = model(x).logits.logsumexp(-1).mean()
        with CountCalls() as bwd:
            loss.backward()
        counts.append((fwd.n, bwd.n))
    dS = segments[1] - segments[0]
    return (counts[1][0] - counts[0][0]) / dS, (
        counts[1][1] - counts[0][1]
    ) / dS


count_L = L0
calls_f, calls_b = calls_per_segment(
    count_L, wins[-1]["writes_per_segment"], use_fused=False
)
fused_f, fused_b = calls_per_segment(
    count_L, wins[-1]["writes_per_segment"], use_fused=True
)
glue("ch6_calls_L", count_L, display=False)
glue("ch6_calls_f", f"{calls_f:.0f}", display=False)
glue("ch6_calls_b", f"{calls_b:.0f}", display=False)
glue(
    "ch6_fused_calls",
    (
        "no operator call at all, forward or backward"
        if fused_f == fused_b == 0
        else f"{fused_f:.0f} operator calls forward and {fused_b:.0f} backward"
    ),
    display=False,
)
cores = res.get("cores")  # absent where the run already used every core
if cores:
    full_c = next(
        r["us_per_token"] for r in cores["rows"] if r["model"] == "full"
    )
    cores_line = (
        f"With every core in use ({cores['threads']} threads) "
        "the FullTransformer's fused attention uses the "
        "extra cores well "
        f"({full_c:.0f} microseconds per token at this length) and MemNet's less: "
        "the FullTransformer then takes "
        + " and ".join(
            f"{v:.1f} (window {L})"
            for L, v in s["cores"]["full_ratio"].items()
        )
        + " times MemNet's time."
    )
else:
    cores_line = (
        "The every-core check is not in this run: it "
        "already ran with torch's default thread count, "
        "or on a GPU."
    )
glue("ch6_cores_line", cores_line, display=False)
plots.bench_windows(res)

# %% [markdown]
# {glue:text}`ch6_win_gap_line` A longer segment has more reads, but shares them among more
# tokens, and its controller costs more per token. The fastest window measured,
# {glue:text}`ch6_win_best_L` tokens, trains at {glue:text}`ch6_win_best_us` microseconds per token,
# {glue:text}`ch6_win_best_ratio` times faster than the FullTransformer at this length,
# {glue:text}`ch6_win_verdict` the tenfold of the question. {glue:text}`ch6_win_ceiling`
# {glue:text}`ch6_win_budget` A longer window also means fewer memory updates per token, which
# changes the model, not only its cost. {glue:text}`ch6_cores_line`
#
# ## The memory step, one call each way
#
# Written as torch operations, the read and the write of one segment are many small calls: counted
# in the cell above at a window of {glue:text}`ch6_calls_L`, one more segment adds
# {glue:text}`ch6_calls_f` operator calls to the forward and {glue:text}`ch6_calls_b` to the
# backward (calls that reach a kernel, views included). Each costs microseconds of dispatch and
# autograd bookkeeping, for arithmetic on a few dozen slots that takes less. So on the CPU the
# memory step runs as one C function forward and one backward, with a hand-derived gradient
# (`memnet.fused`, source in `memnet/csrc/memory_step.c`, compiled on first use like the top-k
# kernel). It is the same function: the same normalisations and clamps, the same tie rule, the
# writes applied in the same order; `tests/test_fused.py` checks selections, values and every
# gradient against the torch step (`reference_step`, still what runs on a GPU and what
# `torch.compile` traces) on random states with exact ties, padding, every decay and allocation
# mode and truncated backprop.
#
# Since the controller never sees a read (the reads join its stream after it, in the fusion
# layers), everything the memory needs for all segments of a call is known before the first
# segment is read. `MultiHeadMemoryBank.scan` therefore hands the whole loop over segments to C:
# the state passes from segment to segment through buffers of the call's length, and the backward
# walks the segments last to first, passing the state's gradient back through two buffers that
# take turns (cut every `tbptt_segments` segments where truncated backprop asks for it). One more
# segment then costs {glue:text}`ch6_fused_calls`; the test suite checks that the scan and the
# loop of single steps give the same logits, state and trace bit for bit and the same gradients.
# (With `decay_mode="evidence"` the scan also carries each row's read evidence from segment to
# segment and makes the retention logit of it before every segment.)
#
# Inside, the kernel normalises the bank's keys once per segment and holds them transposed, so
# that the scores of eight queries (four without AVX-512) are sums in vector lanes from one pass
# over the keys; the
# content writes score the same columns, each slot's score scaled by what its retention leaves of
# it. It keeps each query's top k in a short sorted list, testing sixteen candidates at once
# against the list's last entry, and erases and adds only in the rows a write reaches. The
# backward takes the few scores each read and write kept (k per query, saved by the forward),
# never the segment's whole score matrix, and touches the rest of the bank once, for its
# retention and the gradient the state carries. Each sequence of the batch runs all its segments
# in turn, so the state one segment writes is still in cache when the next reads it.
#
# The buffers of the call's length are large: at 1,024 slots, 16 sequences and 16 segments the
# keys and values of every segment's state take about 140 MB. Allocated afresh, they
# would be fresh pages from the operating system every step, each faulted in and cleared before
# the scan writes it. `memnet.fused.BufferPool` keeps them between calls and hands one
# out again only once no tensor holds it any more (autograd lets go of the saved state after the
# backward), so a training loop reuses the same memory every step.

# %% tags=["remove-input"]
step = (res.get("compile") or {}).get("memory_step", {})
win32 = (
    1.0 / s["ratios"]["windowed"][str(Ts[-1])]
)  # MemNet's time over the windowed model's, B=1
pe = s.get("peers", {})
win16 = pe.get("memnet_vs_windowed_time_per_token")
print(
    "MemNet / WindowedTransformer, time per token "
    f"at window {res['config']['segment_len']}: "
    f"{win32:.2f}x at B=1 (T={Ts[-1]:,})"
    + (f", {win16:.2f}x at B={pe['B']} (T={pe['T']})" if win16 else "")
)
if "torch_step_us_per_token" in step:
    print(
        f"at T={step['T']:,}, window {step['segment_len']}: "
        "the step as torch operations "
        f"{step['torch_step_us_per_token']:.0f} us/token, "
        f"the C step {step['eager_us_per_token']:.0f}"
        + (
            f", the compiled torch step {step['compiled_us_per_token']:.0f}"
            if "compiled_us_per_token" in step
            else ""
        )
    )
glue("ch6_vs_win_1", f"{win32:.2f}", display=False)
glue("ch6_vs_win_T", f"{Ts[-1]:,}", display=False)
glue("ch6_seg_L", res["config"]["segment_len"], display=False)
glue(
    "ch6_vs_win_B",
    (
        (
            f" and {win16:.2f} times at a batch of {pe['B']} "
            f"sequences of {pe['T']} tokens (the training "
            "throughput below)"
        )
        if win16
        else ""
    ),
    display=False,
)
step_line = ""
if "torch_step_us_per_token" in step and step.get("fused_step"):
    step_line = (
        f"At {step['T']:,} tokens and a window of "
        f"{step['segment_len']}, MemNet trains at "
        f"{step['torch_step_us_per_token']:.0f} microseconds "
        "per token with the step as torch operations "
        f"and {step['eager_us_per_token']:.0f} with the C step, "
        f"{step['torch_step_us_per_token'] / step['eager_us_per_token']:.1f} "
        "times faster"
    )
    if "compiled_us_per_token" in step:
        step_line += (
            "; torch.compile of the torch step "
            f"({step['compiled_us_per_token']:.0f} microseconds per "
            "token, after its compilation) is the path for a GPU"
        )
    step_line += "."
glue("ch6_step_line", step_line, display=False)

# %% [markdown]
# {glue:text}`ch6_step_line` With the C step, MemNet's time per token is {glue:text}`ch6_vs_win_1`
# times the windowed Transformer's at a window of {glue:text}`ch6_seg_L` and one sequence of
# {glue:text}`ch6_vs_win_T` tokens{glue:text}`ch6_vs_win_B`:
# what remains of the memory's cost is its arithmetic and the model's own extra layers (the
# interface projections, the read's LayerNorm and fusion), not the dispatch of small operations.
#
# ## Slots and top-k

# %% tags=["hide-input"] mystnb={"image": {"alt": "Time per token against the number of slots."}}
sl = res["slots"]
glue("ch6_N0", f"{sl[0]['num_slots']:,}", display=False)
glue("ch6_N1", f"{sl[-1]['num_slots']:,}", display=False)
glue(
    "ch6_slot_growth",
    f"{sl[-1]['us_per_token'] / sl[0]['us_per_token']:.0f}",
    display=False,
)
tk = res["top_k"]
glue("ch6_k0", tk[0]["top_k"], display=False)
glue("ch6_k1", tk[-1]["top_k"], display=False)
glue(
    "ch6_k_change",
    f"{100 * (tk[-1]['us_per_token'] / tk[0]['us_per_token'] - 1):+.0f}",
    display=False,
)
glue("ch6_k_N", f"{tk[0]['num_slots']:,}", display=False)
plots.bench_vs_slots(res)

# %% [markdown]
# Training cost grows with the number of slots once the bank, not the controller, dominates:
# from {glue:text}`ch6_N0` to {glue:text}`ch6_N1` slots the time per token grows
# {glue:text}`ch6_slot_growth`-fold. The functional write is differentiable and builds new
# $(N, D)$ keys and values every segment; autograd keeps them, so a million-slot bank is
# trainable only for short sequences on a CPU. With {glue:text}`ch6_k_N` slots, going from top
# {glue:text}`ch6_k0` to top {glue:text}`ch6_k1` changes the time per token by
# {glue:text}`ch6_k_change`%: the pass over the bank costs the same for any k; what grows with k is
# the gathering and mixing of the kept slots.
#
# ## Streaming inference: a constant state against a growing KV cache

# %% tags=["hide-input"] mystnb={"image": {"alt": "State kept while streaming, MemNet's fixed bank against a Transformer's growing key-value cache, against the tokens seen."}}
st_rows = res["streaming"]["memnet"]
lat = [r["us_per_token"] for r in st_rows]
glue("ch6_stream_T", f"{st_rows[-1]['tokens_seen']:,}", display=False)
glue(
    "ch6_stream_spread",
    f"{100 * s['stream_latency_spread']:.0f}",
    display=False,
)
glue(
    "ch6_stream_dev",
    f"{100 * s['stream_vs_start_max_dev']:.0f}",
    display=False,
)
same = (
    st_rows[0]["tokens_seen"] == res["profile_settings"]["stream_call"]
)  # the first checkpoint: the start state itself
glue(
    "ch6_stream_self",
    (
        f"The first checkpoint compares the start state with itself, so its ratio, "
        f"{st_rows[0]['vs_start']:.2f}, is the measurement's own noise on this machine."
        if same
        else ""
    ),
    display=False,
)
glue("ch6_state_kb", f"{st_rows[0]['state_bytes'] / 1024:.0f}", display=False)
kvg = s.get("kv_growth", {})
glue(
    "ch6_kv_ratio",
    f"{kvg.get('cache_ratio', float('nan')):.0f}",
    display=False,
)
glue(
    "ch6_kv_lat_ratio",
    f"{kvg.get('latency_ratio', float('nan')):.0f}",
    display=False,
)
kv_last = [r for r in res["streaming"]["full_kv"] if "us_per_token" in r][-1]
glue("ch6_kv_mb", f"{kv_last['cache_bytes'] / 2**20:.0f}", display=False)
plots.bench_streaming(res)

# %% [markdown]
# MemNet streamed {glue:text}`ch6_stream_T` tokens through `MemNet.stream`, one call of
# `stream_call` tokens at a time. Its state is {glue:text}`ch6_state_kb` kB at every checkpoint.
# Its latency per token varies by {glue:text}`ch6_stream_spread`% (largest over smallest, minus one)
# from the first checkpoint to the last, but on shared cores that mostly measures the machine's
# load. So at every checkpoint the benchmark also times calls on a copy of the current state in
# back-to-back pairs with calls on a copy of a state that has seen one call, on the same tokens
# (which of the two runs first alternates): the two calls of a pair see about the same load, and
# the median over pairs of their ratio (the "vs start" column above) is within
# {glue:text}`ch6_stream_dev`% of 1 at every checkpoint. The ratio of the two sides' fastest
# calls ("of minima") compares two single lucky calls and moves more.
# {glue:text}`ch6_stream_self` The FullTransformer side is an
# incremental-decoding measurement with its own layers (`bench.full_decode`, checked against its
# forward pass in `tests/test_bench.py`): the time to decode one window against a KV cache of
# length t, the cache filled with random keys and values (which do not change the cost). Its cache
# grows {glue:text}`ch6_kv_ratio`-fold over the same range, to {glue:text}`ch6_kv_mb` MB, and
# its latency per token {glue:text}`ch6_kv_lat_ratio`-fold.
#
# ## A million slots: the read against the machine's copy bandwidth

# %% tags=["hide-input"] mystnb={"image": {"alt": "Read bandwidth of exact top-k reads of a large bank, for one token and one segment, against a plain memory copy."}}
rd = res["read"]
glue("ch6_read_N", f"{rd['num_slots']:,}", display=False)
glue("ch6_bank_mb", f"{rd['bank_bytes'] / 2**20:.0f}", display=False)
glue("ch6_copy", f"{rd['copy_gbps']:.1f}", display=False)
glue("ch6_read_tok", f"{rd['read_token_gbps']:.1f}", display=False)
glue(
    "ch6_read_tok_pct", f"{100 * rd['read_token_vs_copy']:.0f}", display=False
)
glue("ch6_copy_read", f"{rd['copy_read_gbps']:.1f}", display=False)
glue(
    "ch6_read_tok_pct_read",
    f"{100 * rd['read_token_vs_copy_read']:.0f}",
    display=False,
)
glue("ch6_read_seg", f"{rd['read_segment_gbps']:.2f}", display=False)
glue(
    "ch6_read_seg_pct",
    f"{100 * rd['read_segment_vs_copy']:.0f}",
    display=False,
)
glue("ch6_read_seg_q", rd["read_segment_queries"], display=False)
glue("ch6_stream_seg_s", f"{rd['stream_segment_s']:.2f}", display=False)
path = rd.get("read_path", "torch")
has_torch = (
    "read_torch_token_gbps" in rd
)  # the torch path measured beside the kernel
glue(
    "ch6_read_path",
    (
        "the compiled kernel"
        if path == "native"
        else f"the torch path (kernel {path})"
    ),
    display=False,
)
glue(
    "ch6_read_verdict",
    "above" if rd["read_token_vs_copy"] >= 0.5 else "below",
    display=False,
)
glue(
    "ch6_read_torch_line",
    (
        "The torch path on the same queries, a chunked "
        "matrix product then a top-k of each chunk's "
        f"scores, reaches {rd['read_torch_token_gbps']:.1f} GB/s "
        f"({100 * rd['read_torch_token_vs_copy']:.0f}% of copy) for one token and "
        f"{rd['read_torch_segment_gbps']:.2f} GB/s "
        "for a segment: the matrix library's kernel "
        "for a tall bank times four queries does not stream memory at full speed."
        if has_torch
        else ""
    ),
    display=False,
)
rc = rd.get("cores")
glue(
    "ch6_read_cores_line",
    (
        f"With every core in use ({rc['threads']} threads) "
        f"the copy reaches {rc['copy_gbps']:.1f} GB/s "
        "and one token's "
        f"read {rc['read_token_gbps']:.1f} GB/s, "
        f"{100 * rc['read_token_vs_copy']:.0f}% of it"
        + (
            f" (the torch path {100 * rc['read_torch_token_vs_copy']:.0f}%)."
            if "read_torch_token_vs_copy" in rc
            else "."
        )
        if rc
        else ""
    ),
    display=False,
)
what = "kernel" if path == "native" else "top-k read"
bars = [
    ("copy (read + write)", rd["copy_gbps"], "C7"),
    (
        f"{what}, one token ({rd['read_token_queries']} queries)",
        rd["read_token_gbps"],
        "C0",
    ),
    (
        f"{what}, one segment ({rd['read_segment_queries']} queries)",
        rd["read_segment_gbps"],
        "C0",
    ),
]
if has_torch:
    bars[2:2] = [("torch path, one token", rd["read_torch_token_gbps"], "C1")]
    bars.append(
        ("torch path, one segment", rd["read_torch_segment_gbps"], "C1")
    )
fig, axes = plots.new_figure(1, 1, figsize=(6.5, 0.5 * len(bars) + 1.0))
ax = axes[0, 0]
ax.barh(
    [b[0] for b in bars][::-1],
    [b[1] for b in bars][::-1],
    color=[b[2] for b in bars][::-1],
)
ax.axvline(
    rd["copy_gbps"] / 2, color="k", ls="--", lw=0.8, label="50% of copy"
)
ax.set_xlabel("GB/s")
ax.set_title(
    f"exact top-k read, N = {rd['num_slots']:,} slots, "
    f"B=1 ({rd['bank_bytes'] / 2**20:.0f} MB of unit keys)",
    fontsize=9,
)
plots.legend_outside(ax, "below")
fig

# %% [markdown]
# With {glue:text}`ch6_read_N` slots (B=1) the unit keys take {glue:text}`ch6_bank_mb` MB. The
# machine copies at {glue:text}`ch6_copy` GB/s (bytes read plus written, the STREAM convention
# {cite}`mccalpin1995stream`), measured in the same run. The exact top-k read for one token's
# queries, through {glue:text}`ch6_read_path`, streams the bank at {glue:text}`ch6_read_tok` GB/s,
# {glue:text}`ch6_read_tok_pct`% of copy: {glue:text}`ch6_read_verdict` half of it;
# counting only the bytes the copy reads ({glue:text}`ch6_copy_read` GB/s) it is
# {glue:text}`ch6_read_tok_pct_read`%. (A read moves bytes one way and the copy's figure counts
# them both ways, so a read that streams as fast as the memory allows can exceed it.)
# {glue:text}`ch6_read_torch_line`
#
# A read of few queries is bound by memory: about two flops per four bytes of key. The kernel in
# `memnet.native` is written for that case. It reads each row of the bank once, scores it against
# the queries four at a time in registers, keeps each query's top k in a small sorted list (ties to
# the lowest row, the rule of the torch path), and asks for the rows it will need a few kilobytes
# ahead, which is what lets one core's stream approach its copy bandwidth. It is a few dozen lines
# of C, compiled on first use with the system's compiler and loaded with `ctypes`; without a
# compiler the torch path answers, and `tests/test_native.py` checks that the two agree. A whole
# segment's {glue:text}`ch6_read_seg_q` queries (reads and content writes, scored in one pass)
# reach {glue:text}`ch6_read_seg` GB/s ({glue:text}`ch6_read_seg_pct`% of copy): with that many
# queries per key the pass is bound by arithmetic, not memory, and a full streamed segment at this
# size takes {glue:text}`ch6_stream_seg_s` s. {glue:text}`ch6_read_cores_line` An approximate
# index {cite}`johnson2019faiss` would cut the arithmetic at the price of the exact answer (and
# the tie rule) this book relies on; we keep the exact read.
#
# ## Compiling the torch step

# %% tags=["remove-input"]
comp = res.get("compile") or {}
for name, c in comp.items():
    where = f"T={c['T']:,}, window {c['segment_len']}"
    if "error" in c:
        print(f"{c['what']} ({where}): not compiled here: {c['error']}")
    else:
        print(
            f"{c['what']} ({where}): {c['eager_us_per_token']:.0f} "
            f"-> {c['compiled_us_per_token']:.0f} us/token "
            f"({c['speedup']:.2f}x), first pass {c['compile_s']:.0f} s"
        )
if not comp:
    print("torch.compile was not measured in this run")
ok = {k: c for k, c in comp.items() if "speedup" in c}
compile_line = ""
if "memory_step" in ok:
    c = ok["memory_step"]
    eager = "the C step" if c.get("fused_step") else "the eager torch step"
    compile_line = (
        f"At a window of {c['segment_len']} the compiled torch step trains at "
        f"{c['compiled_us_per_token']:.0f} microseconds "
        f"per token, against {c['eager_us_per_token']:.0f} "
        f"with {eager}"
    )
    if "torch_step_us_per_token" in c:
        compile_line += (
            f" and {c['torch_step_us_per_token']:.0f} with the torch step uncompiled"
        )
    if "memory_step_best_window" in ok:
        b = ok["memory_step_best_window"]
        compile_line += (
            f"; at the fastest window ({b['segment_len']}) "
            f"{b['compiled_us_per_token']:.0f} against "
            f"{b['eager_us_per_token']:.0f}"
        )
        if "compiled_step_full_ratio" in s:
            compile_line += (
                ", where the FullTransformer takes "
                f"{s['compiled_step_full_ratio']:.1f} times MemNet's "
                "compiled time"
            )
    compile_line += "."
if "controller" in ok:
    x = ok["controller"]["speedup"]
    compile_line += (
        f" Compiling the controller instead makes the whole step {x:.2f} times faster"
        + (
            ": its few large operations were fused kernels already."
            if x < 1.2
            else " in this run."
        )
    )
glue("ch6_compile_line", compile_line, display=False)
firsts = sorted(c["compile_s"] for c in ok.values())
span = (
    (
        f"{firsts[0]:.0f}"
        if round(firsts[0]) == round(firsts[-1])
        else f"{firsts[0]:.0f} to {firsts[-1]:.0f}"
    )
    if firsts
    else ""
)
glue(
    "ch6_compile_first",
    f"the first pass took {span} s here, " if firsts else "",
    display=False,
)

# %% [markdown]
# `torch.compile` is optional and nothing depends on it. `model.compile_memory()` compiles the
# torch step (`reference_step`: the read, then the write), so that its small operations and their
# backward run as a few generated kernels; the loop over segments stays in Python, and every new
# shape compiles on its first call. Inside the compiled step the top-k selections take the stable
# sort, with the same tie rule, and `tests/test_model.py` checks that logits, memory, trace and
# gradients agree with the eager step. On a GPU, where the C step does not run, this is the fast
# path; on a CPU the C step needs no compilation pass. {glue:text}`ch6_compile_line` The first
# pass pays for the compilation ({glue:text}`ch6_compile_first`tens of seconds with a cold
# compiler cache). Times of a loop of small operations move most between runs on a shared
# machine (the torch step at the default window has measured anywhere from under 200 to over 370
# microseconds per token on this machine's class under load), so read these ratios as their order
# of magnitude.
#
# ## Training throughput against the published memory models
#
# Chapter 3 compares MemNet's recall with three published memory models, each through a thin
# adapter in `memnet.peers`: the Differentiable Neural Computer {cite}`graves2016dnc` of the `dnc`
# package, the Recurrent Memory Transformer {cite}`bulatov2022rmt` and Titans' memory as context
# {cite}`behrouz2024titans`. Here is what a training step costs each of them, with the memory-free
# models beside them: forward, backward and an AdamW update on one batch, the same batch for every
# model, in the same process and interleaved rounds as the sweeps above.

# %% tags=["remove-input"] mystnb={"image": {"alt": "Training tokens per second of every model of the comparison, measured in the same run, on a log scale."}}
if "peers" in res:
    book.show_report("\n".join(bench.peers_table(res["peers"])))
    ran = [r for r in res["peers"]["rows"] if "not_run" not in r]
    fig, axes = plots.new_figure(1, 1, figsize=(6.5, 0.32 * len(ran) + 1.0))
    ax = axes[0, 0]
    ax.barh(
        [r["name"] for r in ran][::-1],
        [r["tokens_per_s"] for r in ran][::-1],
        color=[plots.MODEL_COLORS.get(r["model"], "C7") for r in ran][::-1],
    )
    ax.set_xscale("log")
    plots.plain_log_axes(ax, log_axis="x")
    ax.set_xlabel("training tokens per second (log scale)")
    ax.set_title(
        f"B={pe['B']} sequences of T={pe['T']} tokens, {pe['threads']} thread(s)",
        fontsize=9,
    )
    glue(
        "ch6_peers_line",
        (
            f"MemNet with {pe['memnet'].split('_')[1]} slots trains "
            f"at {pe['tokens_per_s'][pe['memnet']]:,.0f} tokens per "
            "second"
            + (
                f", {pe['memnet_vs_dnc_tokens_per_s']:.1f} times "
                f"the DNC's {pe['tokens_per_s']['dnc']:,.0f} with "
                "as many memory cells"
                if "memnet_vs_dnc_tokens_per_s" in pe
                else ""
            )
            + "; with "
            + " and ".join(
                f"{int(N):,} slots its step takes {v:.2f} times as long"
                for N, v in pe["memnet_slots_time_ratio"].items()
            )
            + "."
        ),
        display=False,
    )
    pc = s.get("peers_cores")
    glue(
        "ch6_peers_cores_line",
        (
            f"With every core ({pc['threads']} threads) MemNet trains "
            f"at {pc['tokens_per_s'][pc['memnet']]:,.0f} tokens "
            "per second"
            + (
                f", {pc['memnet_vs_dnc_tokens_per_s']:.1f} times "
                f"the DNC's {pc['tokens_per_s']['dnc']:,.0f}"
                if "memnet_vs_dnc_tokens_per_s" in pc
                else ""
            )
            + (
                " (the windowed model: "
                f"{pc['tokens_per_s']['windowed'] / pc['tokens_per_s']['dnc']:.1f}"
                " times)"
                if {"windowed", "dnc"} <= set(pc["tokens_per_s"])
                else ""
            )
            + f"; from {pe['threads']} to {pc['threads']} threads the throughput grows "
            + book.join_words(
                [
                    f"{pc['tokens_per_s'][n] / pe['tokens_per_s'][n]:.2f}-fold "
                    f"({label})"
                    for n, label in (
                        (pc["memnet"], "MemNet"),
                        ("windowed", "the windowed model"),
                        ("dnc", "the DNC"),
                    )
                    if n in pc["tokens_per_s"] and n in pe["tokens_per_s"]
                ]
            )
            + "."
            if pc
            else ""
        ),
        display=False,
    )
    by_reason: dict = {}  # the models not run, grouped by why
    for name, why in pe["not_run"].items():
        by_reason.setdefault(why, []).append(name.upper())
    glue(
        "ch6_peers_not_run",
        " ".join(
            f"{' and '.join(names)}: {why}"
            + ("" if why.endswith((".", "?")) else ".")
            for why, names in by_reason.items()
        ),
        display=False,
    )
else:
    print("the training-throughput part is not in this run")
    glue(
        "ch6_peers_line",
        "The training-throughput part is not in this run.",
        display=False,
    )
    glue("ch6_peers_not_run", "", display=False)
    glue("ch6_peers_cores_line", "", display=False)
    fig = None
fig

# %% [markdown]
# {glue:text}`ch6_peers_line` {glue:text}`ch6_peers_cores_line` The package's sparse variants did not run here:
# {glue:text}`ch6_peers_not_run` The DNC reads and writes its whole memory with dense soft
# attention, through a temporal link matrix of cells by cells, one token at a time; MemNet reads a
# few slots per head and writes once per segment.
#
# ## Explore the costs
#
# Pick a metric and slide over the sequence lengths: the left panel marks the length on
# the log-log curves, the right compares the models at that length. Every view is drawn in advance, so
# the controls work on this page as in JupyterLab.

# %% tags=["nbval-ignore-output"]
lengths = sorted({r["T"] for r in res["seq_len"]})
metric_w = W.Dropdown(
    options=[
        (v, k)
        for k, v in plots.BENCH_METRICS.items()
        if any(k in r for r in res["seq_len"])
    ],
    value="us_per_token",
    description="metric",
)
length_w = W.SelectionSlider(
    options=lengths, value=lengths[-1], description="tokens"
)


def draw(metric: str, length: int):
    fig, axes = plots.new_figure(
        1, 2, figsize=(plots.COLUMN_WIDTH, 3.0), width_ratios=[1.2, 1]
    )
    plots.bench_vs_length(
        res, metric, ax=axes[0, 0], highlight=length, legend=None
    )
    rows = [r for r in res["seq_len"] if r["T"] == length]
    names = [plots.MODEL_LABELS.get(r["model"], r["model"]) for r in rows]
    vals = [r.get(metric, 0.0) if "skipped" not in r else 0.0 for r in rows]
    axes[0, 1].barh(
        names, vals, color=[plots.MODEL_COLORS.get(r["model"]) for r in rows]
    )
    axes[0, 1].invert_yaxis()
    axes[0, 1].set_title(
        f"{length:,} tokens (no bar: skipped)", fontsize=plots.TITLE_SIZE
    )
    axes[0, 1].set_xlabel(plots.BENCH_METRICS[metric])
    return fig


widgets.live_figure([metric_w, length_w], draw)

# %% [markdown]
# The same comparison at every length at once:

# %% mystnb={"image": {"alt": "Time per token of every model at each sequence length, one panel per length, on a log scale."}}
fig, axes = plots.new_figure(
    1, len(lengths), figsize=(plots.COLUMN_WIDTH, 2.8), sharey=True
)
for ax, T in zip(axes[0], lengths):
    rows = [r for r in res["seq_len"] if r["T"] == T]
    ax.bar(
        [r["model"] for r in rows],
        [r.get("us_per_token", 0.0) for r in rows],
        color=[plots.MODEL_COLORS.get(r["model"]) for r in rows],
    )
    ax.set_yscale("log")
    plots.plain_log_axes(ax)
    ax.set_title(f"{T:,} tokens", fontsize=plots.TITLE_SIZE)
    ax.tick_params(axis="x", labelsize=8, rotation=90)
axes[0, 0].set_ylabel("us per token (no bar: skipped)")
fig

# %% tags=["remove-cell"]
# checks: the run has every part, and what holds by construction holds
p = res["profile_settings"]
assert {r["model"] for r in res["seq_len"]} == set(p["models"])
assert all("skipped" in r or r["us_per_token"] > 0 for r in res["seq_len"])
assert (
    len({r["state_bytes"] for r in res["streaming"]["memnet"]}) == 1
), "the streaming state must not grow"
kv_sizes = [r["cache_bytes"] for r in res["streaming"]["full_kv"]]
assert (
    kv_sizes == sorted(kv_sizes) and kv_sizes[-1] > kv_sizes[0]
), "the KV cache must grow"
assert [r["num_slots"] for r in res["slots"]] == list(p["slots"])
assert 0 < rd["read_token_gbps"] and 0 < rd["copy_gbps"]
mem_mb = [mem_rows[T]["autograd_mb"] for T in Ts]
assert all(
    b > a for a, b in zip(mem_mb, mem_mb[1:])
), "autograd memory grows with length"
if (
    fused.status() == "native"
):  # the C step replaces the per-segment loop of calls (counted above, this machine)
    assert fused_f + fused_b < (calls_f + calls_b) / 5, (
        fused_f,
        fused_b,
        calls_f,
        calls_b,
    )
if step.get(
    "fused_step"
):  # the sentence says the C step is faster than the torch step
    assert step["eager_us_per_token"] < step["torch_step_us_per_token"]
print(f"chapter 6 checks passed ({run.profile} run)")

# %% [markdown]
# ## What we learned
#
# - MemNet's cost per token does not depend on how long the sequence is: the controller sees one
#   window, and the memory costs one pass over the bank per segment. Training memory grows with
#   the length of a call, because backprop keeps every segment; `truncated_backward` bounds it to
#   one chunk of segments.
# - At inference the state is the bank, the same size after a thousand tokens or a million, where a
#   Transformer's KV cache, and the time to read it, grow with every token.
# - A read of a few queries from a large bank is a scan bound by memory bandwidth. The matrix
#   library's product is built for wide matrices and leaves much of that bandwidth unused; a small
#   kernel that scores each row once and keeps the top k as it goes gets close to a plain copy.
# - The ratios are measured in one process on the same cores. Written as torch operations, a
#   segment's read and write are hundreds of small calls whose dispatch, not their arithmetic, set
#   MemNet's speed at short windows; one C call forward and one backward for all segments
#   (`memnet.fused`), checked against the torch step value for value and gradient for gradient,
#   remove that loop of calls. A longer window shares what remains among more tokens;
#   `model.compile_memory()` is the path on a GPU.
# - Against the published memory models, the cost of a training step follows from how each reads:
#   a few slots per head once per segment (MemNet), a dense soft read of every cell at every token
#   (the DNC), or attention over memory tokens carried between segments (RMT, Titans).
#
# What is open: an in-place differentiable write for training with large banks, the C step on a
# GPU (a fused kernel rather than the compiled torch step), and approximate (product-quantised)
# indices once a bank outgrows a memory-bound exact scan.
#
# ## Exercises
#
# 1. Re-run at `profile = "laptop"` with `save = True` on a quiet machine and compare the ratios.
# 2. Set `window_writes` to 8 in `bench.PROFILES["laptop"]` and re-run the window sweep
#    (`python -m memnet.bench --parts seq_len windows`): how much of the memory's cost per segment
#    is the write, and how much the read?
# 3. At which number of queries per segment does the top-k read stop being bound by memory on your
#    machine? Measure `cosine_scores_topk` with 1, 4, 16, 64 and 256 queries.
