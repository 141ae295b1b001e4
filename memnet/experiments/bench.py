"""Experiment: the cost of memory. Time, memory and state size of MemNet against the baselines.

Everything is measured in one process, so the ratios between models share the machine's state:

- **training** (forward + backward, B=1) time per token and autograd memory against sequence
  length, for MemNet, FullTransformer (torch SDPA), WindowedTransformer and LSTM of the same
  width and parameter budget; MemNet also against the number of slots and against top_k;
- **streaming inference**: MemNet reads tokens one call at a time through ``MemNet.stream`` (an
  in-place bank) up to ``stream_tokens`` tokens seen; at checkpoints we record the per-token
  latency and the state's bytes. The FullTransformer has no KV-cache API, so its side is an
  incremental-decoding measurement with its own layers: the time to decode one window of new
  tokens against a KV cache of length t (filled with random keys and values, which do not
  change the cost), and the cache's size;
- **the top-k read at a large bank** (``read_slots``, B=1): achieved bandwidth of the exact
  top-k read (bytes of unit keys read / time; the compiled kernel of :mod:`memnet.native` where it
  is available, and the torch path beside it) against the machine's copy bandwidth
  (``dst.copy_(src)``, counted as bytes read + written, the STREAM convention) measured in the
  same run, for the queries of one token (H heads) and of a whole segment, and the time of a
  full streaming step (read + write) there;
- **training throughput against the published peers** (part ``peers``; on CPU, when the run uses
  fewer threads than the machine's cores, again with every core as ``peers_cores``): tokens/s of a
  whole training step (forward + backward + AdamW step, the same loop for every model) on one batch
  of ``peers_B`` sequences of ``peers_T`` tokens, for MemNet at each of ``peers_slots`` slots, the DNC, RMT and
  Titans (MAC) of :mod:`memnet.peers` and the LSTM, WindowedTransformer and FullTransformer, all at
  the bench's width and MemNet's parameter budget (at ``peers_slots[0]`` slots, which is also the
  DNC's number of cells and RMT's number of memory tokens), timed interleaved like the
  sequence-length sweep. A peer whose package does not import is recorded as not run with the
  import error; so are the sparse DNCs of the ``dnc`` package (SAM, SDNC), with the error of their
  first pass (on CPU their sparse index needs faiss GPU resources or a compiled FLANN);
- optionally ``torch.compile`` of the controller and of the per-segment memory step
  (:meth:`MemNet.compile_memory`): compile time and the steady-state speedup of each.

Memory: on CUDA, ``torch.cuda.max_memory_allocated``. On CPU there is no allocator statistic, so
we report **autograd memory**: the bytes of the distinct tensors autograd saves for the backward
pass (``torch.autograd.graph.saved_tensors_hooks``), measured during the forward. It is what grows
with sequence length; parameters, gradients and transient buffers are not in it.

Times are the minimum over repeats after a warm-up (the least disturbed run on shared cores); in
the sequence-length sweep a short pass is repeated until ``min_time_s`` seconds are timed.

Only a run of every part is stored (atomically, as data/bench/<profile>/results.json; over a
results.json of another experiment or profile it goes to ``partial/`` of that folder instead); the
output folder is checked to be writable before anything is measured.

    python -m memnet.bench --profile laptop
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..baselines import FullTransformer, LSTMBaseline, WindowedTransformer, count_params
from ..config import MemNetConfig
from ..encoder import sinusoidal_positions
from .. import fused, native
from ..addressing import cosine_scores_topk
from ..memory import StreamingMemory
from ..model import MemNet, truncated_backward
from ..train import amp_dtype, autocast, resolve_device
from .common import (DATA_DIR, DistinctList, check_device, check_out, check_seeds, device_arg, format_table,
                     positive_int, provenance, result_folder, seed_everything, writable_folder, write_json)

STREAM_REPEATS = 17  # interleaved timed calls per side at every streaming checkpoint
# sequence-length sweep: a point whose pass takes less than this gets one untimed pass before its timed ones in
# every round. The point before it in a round may be a pass of 65k tokens that freed gigabytes; the next short
# pass then pays for fresh pages (on this kind of virtual machine the FullTransformer's 1k-token pass measured 2.4x
# slower right after MemNet's 65k pass than after its own)
WARMUP_BELOW_S = 2.0

ALL_PARTS = ("seq_len", "windows", "cores", "slots", "top_k", "streaming", "read", "peers", "compile")  # what run() measures
COMPILE_POINTS = ("controller", "memory_step", "memory_step_best_window")  # what measure_compile can time
MODELS = {"memnet": MemNet, "full": FullTransformer, "windowed": WindowedTransformer, "lstm": LSTMBaseline}
PEER_NAMES = ("dnc", "rmt", "titans")  # the models of memnet.peers (an optional extra)
SPARSE_DNC = ("sam", "sdnc")  # the dnc package's sparse DNCs: probed, recorded as not run where they fail
PEERS_LR = 1e-3  # AdamW's learning rate in the peers part (the step's cost does not depend on it)


@dataclass
class Profile:
    """What a profile measures. Lengths are tokens; B=1 throughout, except the peers part (B=peers_B)."""

    vocab_size: int = 256
    d_model: int = 64
    segment_len: int = 32
    num_slots: int = 64
    top_k: int = 4
    mem_heads: int = 4
    n_layers: int = 2
    n_heads: int = 4
    seq_lens: tuple = (1024, 4096, 16384, 65536)
    windows: tuple = (32, 64, 128, 256)  # MemNet (and the windowed model) at window_T with these segment lengths
    window_T: int = 16384
    window_writes: int = 32  # writes per segment in the window sweep (every token writes at 32)
    window_repeats: int = 2  # timed passes per point in the window sweep and on every core (after one untimed)
    models: tuple = ("memnet", "full", "windowed", "lstm")
    max_len: dict = field(default_factory=lambda: {"full": 16384})  # longer points are skipped (with the reason)
    slots: tuple = (64, 1024, 16384, 262144, 1_000_000)
    slots_seq_len: int = 64
    top_ks: tuple = (1, 4, 16, 64)
    top_k_slots: int = 4096
    top_k_seq_len: int = 1024
    tbptt_chunk: int = 32  # segments per chunk of the bounded-memory truncated backward, timed at the longest length
    stream_tokens: int = 1_048_576  # MemNet streams this many tokens
    stream_call: int = 1024  # tokens per stream() call
    checkpoints: tuple = (1024, 4096, 16384, 65536, 262144, 1_048_576)
    kv_max: int = 1_048_576  # the FullTransformer's cache is measured up to this length
    read_slots: int = 1_000_000
    compile: bool = True  # time torch.compile at compile_points (each compiles for tens of seconds on a CPU)
    compile_points: tuple = COMPILE_POINTS
    repeats: int = 3
    seq_len_rounds: int | None = 3  # rounds of the interleaved sequence-length sweep (None: repeats); each
    # point's time is its fastest round, so more rounds make the flatness check robust to a slow spell
    # (5 rounds took 5.3 of the 11.5 minutes of a laptop run that must fit in 10)
    min_time_s: float = 2.0  # sequence-length sweep: short passes repeat until this much is timed
    amp: str = "auto"
    threads: int | None = 1  # torch CPU threads for every model (None: torch's default)
    seeds: tuple = (0,)
    # training throughput (forward + backward + AdamW step) against the published peers: a batch of
    # peers_B sequences of peers_T tokens; MemNet at each of peers_slots slots; the other models (peers_models,
    # from PEER_NAMES and MODELS) are built at peers_slots[0] slots: the DNC's cells, RMT's memory tokens
    peers_B: int = 16
    peers_T: int = 512
    peers_slots: tuple = (64, 1024)
    peers_models: tuple = ("dnc", "rmt", "titans", "lstm", "windowed", "full")


PROFILES = {
    "smoke": Profile(vocab_size=32, d_model=32, segment_len=8, num_slots=16, top_k=2, mem_heads=2, n_layers=1, tbptt_chunk=8,
                     n_heads=2, seq_lens=(64, 256), windows=(8, 16), window_T=256, window_writes=8, window_repeats=1, max_len={"full": 256}, slots=(16, 256), slots_seq_len=32,
                     top_ks=(1, 4), top_k_slots=64, top_k_seq_len=64, stream_tokens=1024, stream_call=64,
                     checkpoints=(256, 1024), kv_max=1024, read_slots=4096, compile=False, repeats=1, seq_len_rounds=None,
                     min_time_s=0.0, peers_B=2, peers_T=32, peers_slots=(16, 256)),
    # about 10 minutes on a laptop (11.0 in the stored run, 1.6 of them compiling): two compile points (the memory
    # step at the default window, where compiling pays most, and at the fastest window, MemNet's best time against
    # the FullTransformer), one timed pass per window-sweep point after the warm-up and three windows, a single
    # segment per point of the slot sweep, shorter top-k and short sequence-length timings
    "laptop": Profile(compile_points=("memory_step", "memory_step_best_window"), window_repeats=1, slots_seq_len=32,
                      min_time_s=0.5, windows=(32, 128, 256), top_k_seq_len=512),
    "gpu": Profile(d_model=128, segment_len=64, num_slots=128, seq_lens=(1024, 4096, 16384, 65536, 262144),
                   windows=(64, 128, 256), window_T=65536, window_writes=64,
                   max_len={"full": 65536}, slots=(128, 4096, 65536, 1_000_000, 4_000_000), slots_seq_len=1024,
                   top_k_slots=65536, top_k_seq_len=4096, stream_call=4096, read_slots=4_000_000, repeats=5,
                   threads=None),
}


def make_config(p: Profile, **over) -> MemNetConfig:
    kw = dict(vocab_size=p.vocab_size, d_model=p.d_model, num_slots=p.num_slots, top_k=p.top_k, mem_heads=p.mem_heads,
              segment_len=p.segment_len, n_layers=p.n_layers, n_heads=p.n_heads)
    kw.update(over)
    return MemNetConfig(**kw)


# ---------------------------------------------------------------------------- timing and memory
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Wall time of fn(): min and median seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"min_s": ts[0], "median_s": ts[len(ts) // 2], "repeats": repeats}


class SavedTensorBytes:
    """Context manager: bytes of the distinct storages autograd saves for backward while active."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def _pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            self.storages[st.data_ptr()] = st.nbytes()
        except Exception:  # tensors without storage (e.g. some wrapper subclasses)
            self.storages[id(t)] = t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def train_step(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor, dtype) -> torch.Tensor:
    """One forward + backward (no optimizer step): cross-entropy, plus MemNet's auxiliary losses.
    Returns the loss, detached."""
    model.zero_grad(set_to_none=True)
    with autocast(tokens.device, dtype):
        out = model(tokens)
        loss = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), targets.reshape(-1))
        aux = getattr(out, "aux_losses", None) or {}
        loss = loss + sum(aux.values()) if aux else loss
    loss.backward()
    return loss.detach()


def optim_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor, targets: torch.Tensor,
               dtype) -> torch.Tensor:
    """One training step: forward + backward (:func:`train_step`), then ``opt.step()``. tokens,
    targets: (B, T). Returns the loss, detached."""
    loss = train_step(model, tokens, targets, dtype)
    opt.step()
    return loss


@contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch CPU threads (None: leave as is), restored afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def first_pass(model: torch.nn.Module, T: int, vocab: int, device: torch.device, dtype):
    """One forward + backward on a random sequence of T tokens (seeded by T) that warms up and
    records autograd memory: returns the tokens, targets, its seconds and the autograd MB."""
    g = torch.Generator().manual_seed(T)
    x = torch.randint(0, vocab, (1, T), generator=g).to(device)
    y = torch.randint(0, vocab, (1, T), generator=g).to(device)
    _sync(device)
    t0 = time.perf_counter()
    with SavedTensorBytes() as saved:
        train_step(model, x, y, dtype)
    _sync(device)
    return x, y, time.perf_counter() - t0, saved.nbytes / 2**20


def measure_training(model: torch.nn.Module, T: int, vocab: int, device: torch.device, repeats: int,
                     dtype) -> dict:
    """Time per token and memory of forward + backward on one random sequence of T tokens.

    The first pass (:func:`first_pass`) records autograd memory and warms up; `repeats` timed
    passes follow. With repeats=0 (the largest points, where one pass takes tens of seconds) the
    first pass is timed."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x, y, first, autograd_mb = first_pass(model, T, vocab, device, dtype)
    t = (time_it(lambda: train_step(model, x, y, dtype), device, repeats, warmup=0) if repeats > 0 else
         {"min_s": first, "median_s": first, "repeats": 0})
    rec = {"T": T, "time_s": t["min_s"], "median_s": t["median_s"], "us_per_token": 1e6 * t["min_s"] / T,
           "tokens_per_s": T / t["min_s"], "autograd_mb": autograd_mb, "repeats": t["repeats"]}
    if device.type == "cuda":
        rec["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return rec


# ---------------------------------------------------------------------------- sweeps
def sweep_seq_len(p: Profile, device: torch.device, dtype, progress: bool) -> tuple[list[dict], dict]:
    """Every model at every length, timed **interleaved**: after one untimed pass per point (which
    records autograd memory), `repeats` rounds each time every point once (a short point as many
    passes as fill its share of `min_time_s`, after one untimed pass when a pass is shorter than
    ``WARMUP_BELOW_S``). A slow spell of a shared machine then lands on every point of a round
    rather than on one point's whole measurement, which is what the flatness and the ratios
    between models compare. `seq_len_rounds` rounds (default `repeats`)."""
    cfg = make_config(p)
    models, params, points, rows = {}, {}, [], {}
    for name in p.models:
        seed_everything(0)
        models[name] = MODELS[name](cfg).to(device)
        params[name] = count_params(models[name])
        for T in p.seq_lens:
            limit = p.max_len.get(name)
            if limit is not None and T > limit:
                rows[name, T] = {"model": name, "T": T, "skipped": f"over this profile's max_len for {name} ({limit}): "
                                 "its time grows with T^2 and one point would exceed the profile's budget"}
            else:
                points.append((name, T))
    inputs, times, passes, warm = {}, {}, {}, {}
    rounds = p.repeats if p.seq_len_rounds is None else p.seq_len_rounds
    for name, T in points:  # the untimed first pass: autograd memory, warm-up, and the pass count of a round
        x, y, first, autograd_mb = first_pass(models[name], T, p.vocab_size, device, dtype)
        inputs[name, T] = (x, y)
        rows[name, T] = {"model": name, "T": T, "autograd_mb": autograd_mb}
        passes[name, T] = max(1, math.ceil(p.min_time_s / max(rounds, 1) / max(first, 1e-6)))
        warm[name, T] = 1 if first < WARMUP_BELOW_S else 0
        times[name, T] = [] if rounds > 0 else [first]
    for _ in range(rounds):
        for name, T in points:
            x, y = inputs[name, T]
            t = time_it(lambda: train_step(models[name], x, y, dtype), device, passes[name, T], warmup=warm[name, T])
            times[name, T].append(t["min_s"])
    for name, T in points:
        ts = sorted(times[name, T])
        rows[name, T].update({"time_s": ts[0], "median_s": ts[len(ts) // 2], "us_per_token": 1e6 * ts[0] / T,
                              "tokens_per_s": T / ts[0], "repeats": len(ts) * (passes[name, T] if rounds else 1)})
        if device.type == "cuda":
            rows[name, T]["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20  # over the whole sweep
        if progress:
            r = rows[name, T]
            print(f"  train {name:<9} T={T:<7} {r['us_per_token']:9.1f} us/token  autograd {r['autograd_mb']:9.1f} MB",
                  flush=True)
    return [rows[name, T] for name in p.models for T in p.seq_lens], params


def sweep_windows(p: Profile, device: torch.device, dtype, progress: bool) -> list[dict]:
    """MemNet and the WindowedTransformer at `window_T` tokens for each segment length in `windows`
    (`window_writes` writes per segment): the controller's cost grows with the window, the memory's
    per-token cost shrinks with it (one read and one write per segment)."""
    rows = []
    for L in p.windows:
        cfg = make_config(p, segment_len=L, writes_per_segment=min(p.window_writes, L))
        for name in ("memnet", "windowed"):
            seed_everything(0)
            model = MODELS[name](cfg).to(device)
            rec = measure_training(model, p.window_T, p.vocab_size, device, p.window_repeats, dtype)
            rows.append({"model": name, "segment_len": L, "writes_per_segment": cfg.writes, **rec})
            if progress:
                print(f"  window {name:<9} L={L:<5} T={p.window_T:<7} {rec['us_per_token']:9.1f} us/token", flush=True)
            del model
    return rows


def all_cores(p: Profile, device: torch.device, dtype, threads: int, windows: list[dict], progress: bool) -> dict:
    """The 16k-token comparison again with `threads` CPU threads (all the machine's cores): the
    FullTransformer, MemNet at the profile's window and at the fastest window of the sweep."""
    best = min((r for r in windows if r["model"] == "memnet"), key=lambda r: r["us_per_token"], default=None)
    rows = []
    with torch_threads(threads):
        configs = [("full", make_config(p)), ("memnet", make_config(p))]
        if best is not None and best["segment_len"] != p.segment_len:
            configs.append(("memnet", make_config(p, segment_len=best["segment_len"],
                                                  writes_per_segment=best["writes_per_segment"])))
        for name, cfg in configs:
            seed_everything(0)
            model = MODELS[name](cfg).to(device)
            rec = measure_training(model, p.window_T, p.vocab_size, device, p.window_repeats, dtype)
            rows.append({"model": name, "segment_len": cfg.segment_len, "writes_per_segment": cfg.writes, **rec})
            if progress:
                print(f"  {threads} threads: {name:<7} L={cfg.segment_len:<4} T={p.window_T} {rec['us_per_token']:9.1f} us/token",
                      flush=True)
            del model
    return {"threads": threads, "T": p.window_T, "rows": rows}


def measure_tbptt(p: Profile, device: torch.device, progress: bool) -> dict:
    """MemNet forward+backward at the longest length with ``truncated_backward`` (one chunk of
    ``tbptt_chunk`` segments held by autograd at a time): time per token, one timed run after a warm-up
    at the chunk's length. Autograd then holds one chunk: the training row at the chunk's length."""
    cfg = make_config(p)
    seed_everything(0)
    model = MemNet(cfg).to(device)
    T, chunk = p.seq_lens[-1], p.tbptt_chunk
    g = torch.Generator().manual_seed(T)
    x = torch.randint(0, p.vocab_size, (1, T), generator=g).to(device)
    y = torch.randint(0, p.vocab_size, (1, T), generator=g).to(device)
    truncated_backward(model, x[:, :chunk * cfg.segment_len], y[:, :chunk * cfg.segment_len], chunk)
    _sync(device)
    t0 = time.perf_counter()
    truncated_backward(model, x, y, chunk)
    _sync(device)
    dt = time.perf_counter() - t0
    with SavedTensorBytes() as saved:  # what one chunk keeps for its backward
        truncated_backward(model, x[:, :chunk * cfg.segment_len], y[:, :chunk * cfg.segment_len], chunk)
    rec = {"T": T, "chunk_segments": chunk, "chunk_tokens": chunk * cfg.segment_len, "time_s": dt,
           "us_per_token": 1e6 * dt / T, "autograd_mb_per_chunk": saved.nbytes / 2**20}
    if progress:
        print(f"  truncated backward T={T} chunks of {chunk} segments: {rec['us_per_token']:.1f} us/token, "
              f"autograd {rec['autograd_mb_per_chunk']:.1f} MB per chunk", flush=True)
    return rec


def sweep_memnet(p: Profile, device: torch.device, dtype, what: str, progress: bool) -> list[dict]:
    """MemNet training cost against num_slots (what="slots") or top_k (what="top_k")."""
    rows = []
    values = p.slots if what == "slots" else p.top_ks
    for v in values:
        over = {"num_slots": v, "top_k": min(p.top_k, v)} if what == "slots" else {"num_slots": p.top_k_slots, "top_k": v}
        cfg = make_config(p, **over)
        T = p.slots_seq_len if what == "slots" else p.top_k_seq_len
        seed_everything(0)
        model = MemNet(cfg).to(device)
        rec = measure_training(model, T, p.vocab_size, device, p.repeats if cfg.num_slots < 100_000 else 0, dtype)
        rows.append({"num_slots": cfg.num_slots, "top_k": cfg.top_k, **rec})
        if progress:
            print(f"  train memnet N={cfg.num_slots:<8} k={cfg.top_k:<3} T={T:<6} {rec['us_per_token']:9.1f} us/token  "
                  f"autograd {rec['autograd_mb']:9.1f} MB", flush=True)
        del model
    return rows


@torch.no_grad()
def stream_memnet(p: Profile, device: torch.device, dtype, progress: bool) -> list[dict]:
    """Stream random tokens through MemNet.stream; latency per token and state bytes at checkpoints.

    At each checkpoint, ``STREAM_REPEATS`` calls on copies of the current state are timed in pairs
    with calls on copies of a state that has seen one call only, on the same tokens, the pair's
    order alternating: ``us_per_token`` is the minimum of the former, ``vs_start`` the median over
    pairs of the pair's ratio (now / start), ``vs_start_of_minima`` the ratio of the two minima.
    The two calls of a pair run back to back and see about the same load, so their ratio cancels
    most of a shared machine's swings (+-30% within seconds), and the median drops the pairs that a
    swing split; the ratio of minima compares two single calls, the luckiest of each side (with 17
    calls per side a checkpoint whose two sides are the same state came out 1.21x in one run)."""
    cfg = make_config(p)
    seed_everything(0)
    model = MemNet(cfg).to(device).eval()
    mem = StreamingMemory(model.memory)
    g = torch.Generator().manual_seed(1)
    draw = lambda: torch.randint(0, p.vocab_size, (1, p.stream_call), generator=g).to(device)

    def timed(m: StreamingMemory, x: torch.Tensor) -> float:
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            model.stream(x, m)
        _sync(device)
        return time.perf_counter() - t0

    model.stream(draw(), mem)
    start = mem.clone()  # the reference: a state after one call
    seen = p.stream_call
    rows = []
    for checkpoint in p.checkpoints:
        if checkpoint > p.stream_tokens:
            break
        while seen < checkpoint:
            model.stream(draw(), mem)
            seen += p.stream_call
        now, ref = [], []
        sides = [(mem, now), (start, ref)]
        for i in range(STREAM_REPEATS):
            x = draw()
            for state, times in sides if i % 2 == 0 else sides[::-1]:  # which side runs first alternates
                times.append(timed(state.clone(), x))
        rows.append({"tokens_seen": seen, "us_per_token": 1e6 * min(now) / p.stream_call,
                     "us_per_token_start": 1e6 * min(ref) / p.stream_call,
                     "vs_start": statistics.median(a / b for a, b in zip(now, ref)),
                     "vs_start_of_minima": min(now) / min(ref),
                     "state_bytes": mem.nbytes(), "segments": mem.segments})
        if progress:
            print(f"  stream memnet   seen={seen:<8} {rows[-1]['us_per_token']:8.1f} us/token "
                  f"({rows[-1]['vs_start']:.2f}x a fresh state, median of pairs)  state {mem.nbytes() / 2**20:.2f} MB", flush=True)
    return rows


@torch.no_grad()
def full_decode(model: FullTransformer, cache: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor,
                t: int, prev: torch.Tensor | None = None) -> torch.Tensor:
    """Decode L new tokens (1, L) against a KV cache of length t with the FullTransformer's own layers.

    cache: per block (K, V) of shape (1, heads, >= t + L, head_dim); the new keys and values are
    written at [t, t+L). prev: (1, 1) the token before the new ones (the encoder's token shift
    reads it), None at the start. Returns logits (1, L, V)."""
    L = tokens.shape[1]
    enc = model.encoder
    e = enc.tok(tokens)
    before = enc.tok(prev) if prev is not None else torch.zeros_like(e[:, :1])  # (1, 1, D)
    x = e + enc.shift(torch.cat([before, e[:, :-1]], 1))
    x = x + sinusoidal_positions(t + L, x.shape[-1], x.device)[t:].to(x.dtype)
    allowed = torch.ones(L, t + L, dtype=torch.bool, device=x.device).tril(diagonal=t)  # query i sees keys <= t+i
    for blk, (K, V) in zip(model.controller.blocks, cache):
        D = x.shape[-1]
        q, k, v = blk.qkv(blk.ln1(x)).split(D, dim=-1)
        q, k, v = (z.view(1, L, blk.n_heads, D // blk.n_heads).transpose(1, 2) for z in (q, k, v))
        K[:, :, t:t + L], V[:, :, t:t + L] = k, v
        a = F.scaled_dot_product_attention(q, K[:, :, :t + L], V[:, :, :t + L], attn_mask=allowed)
        x = x + blk.proj(a.transpose(1, 2).reshape(1, L, D))
        x = x + blk.mlp(blk.ln2(x))
    return model.head(model.controller.ln_f(x))


@torch.no_grad()
def stream_full_kv(p: Profile, device: torch.device, dtype, progress: bool) -> list[dict]:
    """FullTransformer incremental decoding: per-token time of one window against a cache of length t."""
    cfg = make_config(p)
    seed_everything(0)
    model = FullTransformer(cfg).to(device).eval()
    L, D = p.segment_len, p.d_model
    hd = D // p.n_heads
    rows = []
    for t in p.checkpoints:
        if t > p.kv_max:
            rows.append({"tokens_seen": t, "skipped": f"over this profile's kv_max ({p.kv_max})",
                         "cache_bytes": 2 * p.n_layers * t * D * 4})
            continue
        cache = [(torch.randn(1, p.n_heads, t + L, hd, device=device), torch.randn(1, p.n_heads, t + L, hd, device=device))
                 for _ in range(p.n_layers)]
        x = torch.randint(0, p.vocab_size, (1, L + 1)).to(device)

        def step():
            with autocast(device, dtype):
                full_decode(model, cache, x[:, 1:], t, x[:, :1])

        tm = time_it(step, device, p.repeats)
        rows.append({"tokens_seen": t, "us_per_token": 1e6 * tm["min_s"] / L,
                     "cache_bytes": sum(k[:, :, :t].nbytes + v[:, :, :t].nbytes for k, v in cache)})
        if progress:
            print(f"  stream full-kv  seen={t:<8} {rows[-1]['us_per_token']:8.1f} us/token  "
                  f"cache {rows[-1]['cache_bytes'] / 2**20:.1f} MB", flush=True)
        cache = None  # free the cache before the next length
    return rows


@torch.no_grad()
def read_bandwidth(p: Profile, device: torch.device, progress: bool, cores: int | None = None) -> dict:
    """The chunked exact top-k read over `read_slots` unit keys against a measured copy bandwidth;
    with `cores`, the copy and one token's read again with that many CPU threads."""
    N, D, H, L = p.read_slots, p.d_model, p.mem_heads, p.segment_len
    cfg = make_config(p, num_slots=N)
    seed_everything(0)
    model = MemNet(cfg).to(device).eval()
    t0 = time.perf_counter()
    mem = StreamingMemory(model.memory)
    g = torch.Generator().manual_seed(2)
    mem.keys.copy_(torch.randn(N, D, generator=g))  # a full bank: every slot written once
    mem.values.copy_(torch.randn(N, D, generator=g))
    mem.norm = mem.keys.norm(dim=-1)
    mem.unit = mem.keys / mem.norm.unsqueeze(-1)
    setup_s = time.perf_counter() - t0
    bank_bytes = mem.unit.numel() * mem.unit.element_size()

    def copy_s() -> float:  # seconds to copy the bank into a fresh buffer
        dst = torch.empty_like(mem.unit)
        return time_it(lambda: dst.copy_(mem.unit), device, max(p.repeats, 3))["min_s"]

    copy = copy_s()
    res = {"num_slots": N, "slot_dim": D, "bank_bytes": bank_bytes, "state_bytes": mem.nbytes(), "setup_s": setup_s,
           "copy_s": copy, "copy_gbps": 2 * bank_bytes / copy / 1e9,
           "copy_read_gbps": bank_bytes / copy / 1e9}  # counting only the bytes the copy reads
    queries = {name: F.normalize(torch.randn(1, Q, D, generator=g), dim=-1).to(device)
               for name, Q in (("token", H), ("segment", L * H + cfg.writes))}
    # the path the package takes (the compiled kernel where it applies) and, when that is the kernel,
    # the torch path (chunked matrix product + top-k) on the same queries
    res["read_path"] = native.status() if device.type == "cpu" else "torch"
    paths = [("", True)] + ([("torch_", False)] if res["read_path"] == "native" else [])
    for name, q in queries.items():
        res[f"read_{name}_queries"] = q.shape[1]
        for prefix, use_native in paths:
            tm = time_it(lambda: cosine_scores_topk(q, mem.unit[None], p.top_k, native=use_native), device, p.repeats)
            key = f"read_{prefix}{name}"
            res[f"{key}_s"] = tm["min_s"]
            res[f"{key}_gbps"] = bank_bytes / tm["min_s"] / 1e9
            res[f"{key}_vs_copy"] = res[f"{key}_gbps"] / res["copy_gbps"]
            res[f"{key}_vs_copy_read"] = res[f"{key}_gbps"] / res["copy_read_gbps"]
    if cores is not None:  # the same measurements on every core: both sides get the same threads
        with torch_threads(cores):
            res["cores"] = {"threads": cores, "copy_gbps": 2 * bank_bytes / copy_s() / 1e9}
            for prefix, use_native in paths:
                tm = time_it(lambda: cosine_scores_topk(queries["token"], mem.unit[None], p.top_k, native=use_native),
                             device, p.repeats)
                res["cores"][f"read_{prefix}token_gbps"] = bank_bytes / tm["min_s"] / 1e9
                res["cores"][f"read_{prefix}token_vs_copy"] = res["cores"][f"read_{prefix}token_gbps"] / res["cores"]["copy_gbps"]
    # a full streaming step (read + retention + write + bookkeeping) of one segment at this size
    x = torch.randint(0, p.vocab_size, (1, L), generator=g).to(device)
    tm = time_it(lambda: model.stream(x, mem), device, max(1, p.repeats - 1))
    res["stream_segment_s"] = tm["min_s"]
    res["stream_us_per_token"] = 1e6 * tm["min_s"] / L
    if progress:
        print(f"  read N={N} ({res['read_path']}): copy {res['copy_gbps']:.1f} GB/s; top-k read of one token {res['read_token_gbps']:.1f} GB/s "
              f"({100 * res['read_token_vs_copy']:.0f}%), of a segment {res['read_segment_gbps']:.2f} GB/s "
              f"({100 * res['read_segment_vs_copy']:.0f}%); a streamed segment {res['stream_segment_s']:.2f} s", flush=True)
        if "read_torch_token_gbps" in res:
            print(f"  read N={N} (torch): one token {res['read_torch_token_gbps']:.1f} GB/s "
                  f"({100 * res['read_torch_token_vs_copy']:.0f}%), a segment {res['read_torch_segment_gbps']:.2f} GB/s", flush=True)
        if "cores" in res:
            c = res["cores"]
            print(f"  read N={N} on {c['threads']} threads: copy {c['copy_gbps']:.1f} GB/s; one token "
                  f"{c['read_token_gbps']:.1f} GB/s ({100 * c['read_token_vs_copy']:.0f}%)", flush=True)
    return res


def _compiled_point(model: MemNet, compile_fn: Callable[[MemNet], None], what: str, T: int, p: Profile,
                    device: torch.device, dtype, repeats: int, torch_step: bool = False) -> dict:
    """Forward+backward time per token at T before and after `compile_fn(model)`, and the compile time
    (the first pass after it, which compiles every graph the pass needs). With `torch_step` also the
    eager time with the memory step as torch operations (``memory.fused = False``:
    :meth:`MultiHeadMemoryBank.reference_step`, what ``compile_memory`` compiles), next to the eager
    time of the step as it runs by default (on CPU the compiled kernel of :mod:`memnet.fused`)."""
    eager = measure_training(model, T, p.vocab_size, device, repeats, dtype)
    res = {"what": what, "T": T, "segment_len": model.cfg.segment_len, "eager_us_per_token": eager["us_per_token"]}
    if torch_step:
        model.memory.fused = False
        res["torch_step_us_per_token"] = measure_training(model, T, p.vocab_size, device, repeats, dtype)["us_per_token"]
        model.memory.fused = True
        res["fused_step"] = fused.applies([next(model.parameters())])  # whether the default eager step was the kernel
    try:
        compile_fn(model)
        g = torch.Generator().manual_seed(T)
        x = torch.randint(0, p.vocab_size, (1, T), generator=g).to(device)
        y = torch.randint(0, p.vocab_size, (1, T), generator=g).to(device)
        t0 = time.perf_counter()
        train_step(model, x, y, dtype)
        _sync(device)
        res["compile_s"] = time.perf_counter() - t0
        comp = measure_training(model, T, p.vocab_size, device, repeats, dtype)
        res["compiled_us_per_token"] = comp["us_per_token"]
        res["speedup"] = eager["us_per_token"] / comp["us_per_token"]
    except Exception as e:  # no compiler toolchain, unsupported backend: say so rather than fail the benchmark
        res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return res


def measure_compile(p: Profile, device: torch.device, dtype, progress: bool, windows: list[dict] | None = None) -> dict:
    """torch.compile, measured where it could help: the controller (``model.controller``, one call
    over all windows) and the per-segment memory step (:meth:`MemNet.compile_memory`, the body of
    the loop over segments), both at the second sequence length with the profile's segment length,
    and the memory step again at ``window_T`` with the fastest window of the window sweep (when
    it ran), where it sets the ratio to the FullTransformer. ``compile_s`` is the first pass after
    compiling: seconds with a cold inductor cache, a few with a warm one (the same shapes
    compiled before on the machine)."""
    if not set(p.compile_points) <= set(COMPILE_POINTS):
        raise ValueError(f"Profile.compile_points must be among {COMPILE_POINTS}, got {p.compile_points!r}")
    T = p.seq_lens[min(1, len(p.seq_lens) - 1)]
    points = [("controller", make_config(p), T, p.repeats,
               lambda m: setattr(m, "controller", torch.compile(m.controller)), "torch.compile(model.controller)"),
              ("memory_step", make_config(p), T, p.repeats, lambda m: m.compile_memory(), "model.compile_memory()")]
    best = min((r for r in windows or [] if r["model"] == "memnet"), key=lambda r: r["us_per_token"], default=None)
    if best is not None:
        points.append(("memory_step_best_window", make_config(p, segment_len=best["segment_len"],
                                                              writes_per_segment=best["writes_per_segment"]),
                       p.window_T, p.window_repeats, lambda m: m.compile_memory(), "model.compile_memory()"))
    res = {}
    for name, cfg, T_, repeats, fn, what in (pt for pt in points if pt[0] in p.compile_points):
        seed_everything(0)
        res[name] = _compiled_point(MemNet(cfg).to(device), fn, what, T_, p, device, dtype, repeats,
                                    torch_step=name != "controller")
        if progress:
            print(f"  compile {name}: {res[name]}", flush=True)
    return res


# ---------------------------------------------------------------------------- the published peers
def probe_sparse_dnc(device: torch.device) -> dict[str, str]:
    """Why each sparse DNC of the ``dnc`` package (SAM, SDNC) is not in the peers part: the error of
    one tiny forward pass on `device` (the package builds them; on CPU the first pass fails, its
    sparse index needing faiss GPU resources or a compiled FLANN, see :class:`memnet.peers.DNCPeer`),
    the import error when the package is missing, or, where the pass runs, that :mod:`memnet.peers`
    has no adapter for it."""
    from .. import peers

    missing = peers.available()["dnc"]
    if missing:
        return {name: f"package missing: {missing}" for name in SPARSE_DNC}
    import dnc

    gpu_id = (device.index or 0) if device.type == "cuda" else -1
    out = {}
    for name, cls in (("sam", dnc.SAM), ("sdnc", dnc.SDNC)):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints its fallback from faiss to FLANN
                model = cls(8, 8, nr_cells=8, cell_size=8, read_heads=1, batch_first=True, gpu_id=gpu_id)
                model(torch.zeros(1, 2, 8, device=device), (None, None, None), reset_experience=True)  # (B, T, D)
            out[name] = f"its first pass runs on {device.type} here, but memnet.peers has no adapter for it"
        except Exception as e:  # the failure is the measurement: recorded, not raised
            out[name] = (f"no {device.type} path in dnc 1.1.0 (the sparse index needs faiss GPU resources or a "
                         f"compiled FLANN): {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    return out


def peers_config(p: Profile, slots: int) -> MemNetConfig:
    """The bench's MemNet config at `slots` slots (top_k capped at the slots): what MemNet of the peers
    part is built from, and at ``peers_slots[0]`` what the other models are sized to."""
    return make_config(p, num_slots=slots, top_k=min(p.top_k, slots))


def peer_entries(p: Profile) -> list[tuple[str, str, Callable[[], torch.nn.Module]]]:
    """The models of the peers part, in order: (name, model, builder). MemNet once per entry of
    ``peers_slots`` (name ``memnet_<slots>``), then ``peers_models``, built at ``peers_slots[0]`` slots."""
    base = peers_config(p, p.peers_slots[0])
    entries: list[tuple[str, str, Callable[[], torch.nn.Module]]] = [
        (f"memnet_{N}", "memnet", lambda N=N: MemNet(peers_config(p, N))) for N in p.peers_slots]
    for name in p.peers_models:
        if name in PEER_NAMES:
            def build(name: str = name) -> torch.nn.Module:
                from .. import peers

                return peers.PEERS[name](base)
        elif name in MODELS and name != "memnet":
            build = lambda name=name: MODELS[name](base)
        else:
            raise ValueError(f"Profile.peers_models must be among {PEER_NAMES + tuple(m for m in MODELS if m != 'memnet')}, "
                             f"got {name!r}")
        entries.append((name, name, build))
    return entries


def memory_size(model: torch.nn.Module, name: str) -> str:
    """What a model of the peers part remembers with, in words: MemNet's slots, the DNC's cells,
    RMT's memory tokens, Titans' neural memories."""
    if name == "memnet":
        return f"{model.cfg.num_slots} slots"
    if name == "dnc":
        return f"{model.cfg.num_slots} cells"
    if name == "rmt":
        return f"{model.num_memory_tokens} memory tokens"
    if name == "titans":
        from ..peers import _neural_memories

        k = len(_neural_memories(model.mac))
        return f"neural memory (MLP, depth 2) in {k} layer{'s' if k != 1 else ''}"
    return {"lstm": "(h, c)", "windowed": "none", "full": "whole sequence"}.get(name, "")


def measure_peers(p: Profile, device: torch.device, dtype, progress: bool) -> dict:
    """Training throughput of MemNet and the published peers: tokens/s of :func:`optim_step`
    (forward + backward + AdamW) on one batch (peers_B, peers_T) of random tokens, the same batch
    and loop for every model.

    Every model is built (seed 0) and takes two untimed steps: the first records autograd memory
    (``autograd_mb``; None, with the reason, for a model that refuses saved-tensor hooks) and fills
    AdamW's state, the second gives the loss (``finite_loss``) and decides the warm-up; then `repeats` rounds each time every model once, interleaved like
    the sequence-length sweep (one untimed step before a step shorter than ``WARMUP_BELOW_S``), so
    that a slow spell of a shared machine lands on every model of a round. A model's time is its
    fastest round. A peer whose package does not import, or whose first step raises, is a row with
    ``not_run`` and the reason; so are the sparse DNCs (:func:`probe_sparse_dnc`)."""
    from .. import peers

    B, T = p.peers_B, p.peers_T
    g = torch.Generator().manual_seed(T)
    x = torch.randint(0, p.vocab_size, (B, T), generator=g).to(device)  # (B, T)
    y = torch.randint(0, p.vocab_size, (B, T), generator=g).to(device)  # (B, T)
    missing = peers.available()
    rows: dict[str, dict] = {}
    live: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, int]] = {}
    for name, kind, build in peer_entries(p):
        if kind in PEER_NAMES and missing[kind]:
            rows[name] = {"name": name, "model": kind, "not_run": f"package missing: {missing[kind]}"}
            continue
        try:
            seed_everything(0)
            model = build().to(device)
            opt = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=PEERS_LR)
            autograd_mb, hooks_error = None, None
            try:
                with SavedTensorBytes() as saved:
                    optim_step(model, opt, x, y, dtype)  # fills AdamW's state: every later step is alike
                autograd_mb = saved.nbytes / 2**20
            except RuntimeError as e:  # torch.func inside the model (Titans' neural memory) refuses saved-tensor hooks
                hooks_error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            _sync(device)
            t0 = time.perf_counter()
            loss = optim_step(model, opt, x, y, dtype)
            _sync(device)
            first = time.perf_counter() - t0
        except Exception as e:
            if kind not in PEER_NAMES:  # MemNet and the baselines must run
                raise
            rows[name] = {"name": name, "model": kind,
                          "not_run": f"its first step failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
            continue
        rows[name] = {"name": name, "model": kind, "memory": memory_size(model, kind), "params": count_params(model),
                      "autograd_mb": autograd_mb, "finite_loss": bool(torch.isfinite(loss).item())}
        if hooks_error is not None:
            rows[name]["autograd_mb_not_measured"] = hooks_error
        live[name] = (model, opt, 1 if first < WARMUP_BELOW_S else 0)
    times: dict[str, list[float]] = {name: [] for name in live}
    rounds = max(1, p.repeats)
    for _ in range(rounds):
        for name, (model, opt, warm) in live.items():
            t = time_it(lambda: optim_step(model, opt, x, y, dtype), device, 1, warmup=warm)
            times[name].append(t["min_s"])
    for name in live:
        ts = sorted(times[name])
        rows[name].update({"time_s": ts[0], "median_s": ts[len(ts) // 2], "us_per_token": 1e6 * ts[0] / (B * T),
                           "tokens_per_s": B * T / ts[0], "repeats": len(ts)})
        if progress:
            r = rows[name]
            mb = "not measured" if r["autograd_mb"] is None else f"{r['autograd_mb']:.1f} MB"
            print(f"  peers {name:<12} {r['memory']:<40} {r['tokens_per_s']:9.0f} tokens/s  autograd {mb}", flush=True)
    live.clear()
    for name, why in probe_sparse_dnc(device).items():
        rows[name] = {"name": name, "model": name, "not_run": why}
    if progress:
        for r in rows.values():
            if "not_run" in r:
                print(f"  peers {r['name']:<12} not run: {r['not_run']}", flush=True)
    return {"B": B, "T": T, "threads": torch.get_num_threads(), "rounds": rounds,
            "optimizer": f"AdamW(lr={PEERS_LR}, weight_decay=0.01)",
            "budget": rows[f"memnet_{p.peers_slots[0]}"]["params"],
            "rows": list(rows.values())}


def peers_summary(peers_result: dict) -> dict:
    """The numbers of the peers part the chapter quotes, from its recorded times: tokens/s of every
    model that ran; MemNet (at the first of its slot counts) tokens/s over the DNC's
    (``memnet_vs_dnc_tokens_per_s``); MemNet's step time at every other slot count over its time at
    the first (``memnet_slots_time_ratio``, keyed by slots); MemNet's time per token over the
    WindowedTransformer's (``memnet_vs_windowed_time_per_token``); every model's time per token
    over MemNet's (``time_vs_memnet``); and the models not run, with the reason."""
    ran = {r["name"]: r for r in peers_result["rows"] if "not_run" not in r}
    mem = [r for r in peers_result["rows"] if r["model"] == "memnet"]
    base = mem[0]
    s: dict = {"B": peers_result["B"], "T": peers_result["T"], "threads": peers_result["threads"],
               "memnet": base["name"], "tokens_per_s": {n: r["tokens_per_s"] for n, r in ran.items()},
               "not_run": {r["name"]: r["not_run"] for r in peers_result["rows"] if "not_run" in r}}
    if "dnc" in ran:
        s["memnet_vs_dnc_tokens_per_s"] = base["tokens_per_s"] / ran["dnc"]["tokens_per_s"]
    s["memnet_slots_time_ratio"] = {r["name"].split("_", 1)[1]: r["time_s"] / base["time_s"] for r in mem[1:]}
    if "windowed" in ran:
        s["memnet_vs_windowed_time_per_token"] = base["us_per_token"] / ran["windowed"]["us_per_token"]
    s["time_vs_memnet"] = {n: r["us_per_token"] / base["us_per_token"] for n, r in ran.items() if n != base["name"]}
    return s


# ---------------------------------------------------------------------------- summary
def _point(rows: list[dict], model: str, T: int) -> dict | None:
    return next((r for r in rows if r.get("model") == model and r["T"] == T and "skipped" not in r), None)


def summarize(result: dict) -> dict:
    """The ratios and spreads the chapter reports (no claim is checked against a threshold here),
    computed from the measured rows."""
    rows = result["seq_len"]
    mem = [r for r in rows if r["model"] == "memnet" and "skipped" not in r]
    per_tok = [r["us_per_token"] for r in mem]
    med = sorted(per_tok)[len(per_tok) // 2]
    s: dict = {"memnet_us_per_token_range": [min(per_tok), max(per_tok)],
               "memnet_flatness": max(per_tok) / min(per_tok) - 1.0,  # largest over smallest, minus one
               "memnet_median_dev": max(abs(v / med - 1.0) for v in per_tok),  # "within +-x%" of the median
               "memnet_seq_lens": [r["T"] for r in mem]}
    s["ratios"] = {}
    for name in result["params"]:
        if name == "memnet":
            continue
        s["ratios"][name] = {str(r["T"]): _point(rows, name, r["T"])["time_s"] / r["time_s"]
                             for r in mem if _point(rows, name, r["T"]) is not None}
    st = result["streaming"]["memnet"]
    lat = [r["us_per_token"] for r in st]
    s["stream_latency_spread"] = max(lat) / min(lat) - 1.0
    s["stream_vs_start_max_dev"] = max(abs(r["vs_start"] - 1.0) for r in st)
    if all("vs_start_of_minima" in r for r in st):  # runs stored before the paired median lack it
        s["stream_vs_start_of_minima_max_dev"] = max(abs(r["vs_start_of_minima"] - 1.0) for r in st)
    s["stream_state_bytes"] = sorted({r["state_bytes"] for r in st})
    kv = [r for r in result["streaming"]["full_kv"] if "skipped" not in r]
    if kv:
        s["kv_growth"] = {"from": kv[0]["tokens_seen"], "to": kv[-1]["tokens_seen"],
                          "cache_ratio": kv[-1]["cache_bytes"] / kv[0]["cache_bytes"],
                          "latency_ratio": kv[-1]["us_per_token"] / kv[0]["us_per_token"]}
    full = {r["T"]: r for r in rows if r["model"] == "full" and "skipped" not in r}
    if result.get("windows"):
        wins = [r for r in result["windows"] if r["model"] == "memnet"]
        best = min(wins, key=lambda r: r["us_per_token"])
        s["window_best"] = {"segment_len": best["segment_len"], "us_per_token": best["us_per_token"]}
        if best["T"] in full:
            s["window_best"]["full_ratio"] = full[best["T"]]["us_per_token"] / best["us_per_token"]
            # the same ratio for the memory-free windowed model at that window: the ceiling of any memory's ratio
            win = next((r for r in result["windows"] if r["model"] == "windowed"
                        and r["segment_len"] == best["segment_len"]), None)
            if win is not None:
                s["window_best"]["windowed_full_ratio"] = full[best["T"]]["us_per_token"] / win["us_per_token"]
    step = result.get("compile", {}).get("memory_step_best_window", {})
    if "compiled_us_per_token" in step and step["T"] in full:
        s["compiled_step_full_ratio"] = full[step["T"]]["us_per_token"] / step["compiled_us_per_token"]
    if result.get("cores"):
        c = result["cores"]
        full_c = next(r for r in c["rows"] if r["model"] == "full")
        s["cores"] = {"threads": c["threads"], "T": c["T"],
                      "full_ratio": {str(r["segment_len"]): full_c["us_per_token"] / r["us_per_token"]
                                     for r in c["rows"] if r["model"] == "memnet"}}
    if "cores" in result["read"]:
        s["read_token_vs_copy_cores"] = result["read"]["cores"]["read_token_vs_copy"]
    s["read_token_vs_copy"] = result["read"]["read_token_vs_copy"]
    s["read_token_vs_copy_read"] = result["read"]["read_token_vs_copy_read"]
    s["read_segment_vs_copy"] = result["read"]["read_segment_vs_copy"]
    s["read_path"] = result["read"].get("read_path", "torch")
    if "read_torch_token_vs_copy" in result["read"]:
        s["read_torch_token_vs_copy"] = result["read"]["read_torch_token_vs_copy"]
    if "peers" in result:  # runs stored before the peers part lack it
        s["peers"] = peers_summary(result["peers"])
    if "peers_cores" in result:
        s["peers_cores"] = peers_summary(result["peers_cores"])
    return s


def run(profile: str = "laptop", device: str = "auto", seeds: list[int] | None = None, out_dir: Path | None = None,
        save: bool = True, progress: bool = True, parts: tuple[str, ...] | None = None,
        threads: int | None = None) -> dict:
    """Run every measurement of the profile in this process; returns (and stores) the results.

    parts: a subset of ("seq_len", "windows", "cores", "slots", "top_k", "streaming", "read",
    "peers", "compile"), all by default (a partial run is never stored). threads: torch CPU threads for the
    run (default: the profile's; restored afterwards). On CPU, when the run uses fewer threads than
    torch's default (all cores), the "cores" part and the read repeat the 16k comparison and the
    read with every core."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    all_parts = ALL_PARTS
    if parts is not None and not tuple(parts):
        raise ValueError(f"parts must name at least one of {all_parts} (None: all), got none")
    parts = tuple(parts or all_parts)
    for part in parts:
        if part not in all_parts:
            raise ValueError(f"parts must be among {all_parts}, got {part!r}")
    p = PROFILES[profile]
    seeds = check_seeds(seeds if seeds is not None else p.seeds)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    dev = resolve_device(check_device(device))
    dtype = amp_dtype(dev, p.amp)
    if save and parts == all_parts:  # fail now, not after the measurements, when the folder cannot be written
        out_dir = writable_folder(Path(out_dir) if out_dir is not None else DATA_DIR / "bench" / profile, "out_dir")
    seed_everything(seeds[0])
    default_threads = torch.get_num_threads()
    if threads is None:
        threads = p.threads
    with torch_threads(threads if dev.type == "cpu" else None):
        cores = default_threads if dev.type == "cpu" and default_threads > torch.get_num_threads() else None
        return _run(p, profile, dev, dtype, seeds, out_dir, save, progress, parts, all_parts, cores)


# glibc malloc, pinned by steady_allocator(): mallopt's parameter codes (malloc.h) and the values set
MALLOPT_CODES = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3}
STEADY_MALLOC = {"M_MMAP_THRESHOLD": 32 * 2**20, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 256 * 2**20}


def steady_allocator() -> dict | None:
    """Pin glibc's malloc for the rest of the process, so that a pass's cost does not depend on the
    passes before it: allocations under 32 MB come from a heap that is never trimmed (``mallopt``
    ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``, ``M_TOP_PAD``); by default glibc moves its mmap
    threshold up after large frees and gives the heap's top back to the system, so a 1k-token pass
    right after a 65k-token one paid for fresh pages again, pass after pass (MemNet's 1k-token point
    read 150-180 us/token after its own 65k pass and 190-300 after the LSTM's, on the same machine
    minutes apart). Every point then measures what repeated passes of its own length cost, as in
    training. Returns the settings applied, or None where glibc is not the allocator."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    applied = {}
    for name, value in STEADY_MALLOC.items():
        if libc.mallopt(ctypes.c_int(MALLOPT_CODES[name]), ctypes.c_int(value)) == 1:  # 1: accepted
            applied[name] = value
    return applied or None


def _run(p: Profile, profile: str, dev: torch.device, dtype, seeds: list[int], out_dir: Path | None, save: bool,
         progress: bool, parts: tuple[str, ...], all_parts: tuple[str, ...], cores: int | None) -> dict:
    t_all = time.perf_counter()
    malloc = steady_allocator() if dev.type == "cpu" else None
    result: dict = {"experiment": "bench", "profile": profile, "profile_settings": asdict(p),
                    "config": make_config(p).to_dict(), "threads": torch.get_num_threads(), "malloc": malloc,
                    # how MemNet's memory step ran: the compiled kernel of memnet.fused on CPU, else the torch step
                    "memory_step": fused.status() if dev.type == "cpu" else f"torch step ({dev.type})"}
    step_t: dict = {}

    def timed(part: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        out = fn()
        step_t[part] = time.perf_counter() - t0
        return out

    if "seq_len" in parts:
        def seq_len_part():
            result["seq_len"], result["params"] = sweep_seq_len(p, dev, dtype, progress)
            if dtype is None:  # truncated_backward runs in fp32
                result["tbptt"] = measure_tbptt(p, dev, progress)
        timed("seq_len", seq_len_part)
    if "windows" in parts:
        result["windows"] = timed("windows", lambda: sweep_windows(p, dev, dtype, progress))
    if "cores" in parts and cores is not None:
        result["cores"] = timed("cores", lambda: all_cores(p, dev, dtype, cores, result.get("windows", []), progress))
    if "slots" in parts:
        result["slots"] = timed("slots", lambda: sweep_memnet(p, dev, dtype, "slots", progress))
    if "top_k" in parts:
        result["top_k"] = timed("top_k", lambda: sweep_memnet(p, dev, dtype, "top_k", progress))
    if "streaming" in parts:
        result["streaming"] = timed("streaming", lambda: {"memnet": stream_memnet(p, dev, dtype, progress),
                                                          "full_kv": stream_full_kv(p, dev, dtype, progress)})
    if "read" in parts:
        result["read"] = timed("read", lambda: read_bandwidth(p, dev, progress, cores))
    if "peers" in parts:
        result["peers"] = timed("peers", lambda: measure_peers(p, dev, dtype, progress))
        if cores is not None:  # the same step on every core: the small operations of the peers parallelise less
            def peers_cores():
                with torch_threads(cores):
                    return measure_peers(p, dev, dtype, progress)
            result["peers_cores"] = timed("peers_cores", peers_cores)
    if "compile" in parts and p.compile:
        result["compile"] = timed("compile", lambda: measure_compile(p, dev, dtype, progress, result.get("windows")))
    if set(all_parts) - {"compile", "cores", "peers"} <= set(parts):
        result["summary"] = summarize(result)
    wall = time.perf_counter() - t_all
    result["part_wall_s"] = {k: round(v, 1) for k, v in step_t.items()}
    result["provenance"] = provenance(dev, seeds, wall, experiment="bench", amp=str(dtype), threads=torch.get_num_threads(),
                                      note="times: min over repeats after a warm-up; B=1 (the peers part: B=peers_B)"
                                      + ("; glibc malloc pinned (steady_allocator)" if malloc else ""))
    if save and parts == all_parts:  # never over another experiment's or profile's result: that goes to partial/
        out_dir = Path(out_dir) if out_dir is not None else DATA_DIR / "bench" / profile
        write_json(result_folder(out_dir, result, run_keys) / "results.json", result)
    return result


def run_keys(result: dict) -> list[tuple]:
    """The runs of a stored result: one, the whole measurement (only a run of every part is stored)."""
    return [("every part",)]


def summary_table(result: dict) -> str:
    """The training table (us/token and autograd MB per model and length), streaming and read lines."""
    rows = result.get("seq_len", [])
    names = list(result.get("params", {}))
    Ts = sorted({r["T"] for r in rows})
    at = {(r["model"], r["T"]): r for r in rows}
    cell = lambda r: "skipped" if "skipped" in r else f"{r['us_per_token']:.1f} ({r['autograd_mb']:.0f})"
    lines = [format_table(
        ["model", "params"] + [str(T) for T in Ts],
        [[name, result["params"][name]] + [cell(at[name, T]) for T in Ts] for name in names],
        f"training, forward+backward, B=1: microseconds per token (autograd MB); {result['threads']} threads")]
    s = result.get("summary")
    if s:
        lines.append("")
        lines.append("time ratio other / MemNet: " + "; ".join(
            f"{n}: " + ", ".join(f"{T}: {v:.2f}x" for T, v in r.items()) for n, r in s["ratios"].items()))
        lines.append(f"MemNet per-token time from {s['memnet_seq_lens'][0]} to {s['memnet_seq_lens'][-1]} tokens: "
                     f"{s['memnet_us_per_token_range'][0]:.1f}..{s['memnet_us_per_token_range'][1]:.1f} us "
                     f"(max/min - 1 = {100 * s['memnet_flatness']:.0f}%; within +-{100 * s['memnet_median_dev']:.0f}% "
                     "of the median)")
    if "tbptt" in result:
        t = result["tbptt"]
        lines.append(f"MemNet with truncated_backward at T={t['T']} (chunks of {t['chunk_segments']} segments): "
                     f"{t['us_per_token']:.1f} us/token, autograd {t['autograd_mb_per_chunk']:.1f} MB per chunk")
    if result.get("windows"):
        ws = result["windows"]
        lines.append("")
        lines.append(f"at T={ws[0]['T']}, us/token vs window (segment_len, writes per segment): " + ", ".join(
            f"{r['model']} L={r['segment_len']} (W={r['writes_per_segment']}): {r['us_per_token']:.1f}" for r in ws))
        if s and "window_best" in s and "full_ratio" in s["window_best"]:
            lines.append(f"FullTransformer / MemNet at the fastest window (L={s['window_best']['segment_len']}): "
                         f"{s['window_best']['full_ratio']:.2f}x"
                         + (f" (the windowed model without memory there: {s['window_best']['windowed_full_ratio']:.2f}x)"
                            if "windowed_full_ratio" in s["window_best"] else ""))
    if result.get("cores"):
        c = result["cores"]
        lines.append(f"on {c['threads']} threads at T={c['T']}: " + ", ".join(
            f"{r['model']} L={r['segment_len']}: {r['us_per_token']:.1f} us/token" for r in c["rows"]))
        if s and "cores" in s:
            lines.append("  FullTransformer / MemNet: " + ", ".join(f"L={L}: {v:.2f}x" for L, v in s["cores"]["full_ratio"].items()))
    if "slots" in result:
        lines.append("")
        lines.append("MemNet vs slots: " + ", ".join(f"N={r['num_slots']}: {r['us_per_token']:.0f} us/tok "
                                                     f"({r['autograd_mb']:.0f} MB)" for r in result["slots"]))
    if "top_k" in result:
        lines.append("MemNet vs top_k: " + ", ".join(f"k={r['top_k']}: {r['us_per_token']:.1f} us/tok"
                                                     for r in result["top_k"]))
    if "streaming" in result:
        lines.append("")
        kv = {r["tokens_seen"]: r for r in result["streaming"]["full_kv"]}
        lines.append(format_table(
            ["tokens seen", "MemNet us/tok", "vs start", "of minima", "state MB", "Full us/tok", "KV cache MB"],
            [[r["tokens_seen"], f"{r['us_per_token']:.1f}", f"{r['vs_start']:.2f}",
              f"{r.get('vs_start_of_minima', float('nan')):.2f}", f"{r['state_bytes'] / 2**20:.2f}",
              f"{k['us_per_token']:.1f}" if "us_per_token" in k else "skipped",
              f"{k.get('cache_bytes', float('nan')) / 2**20:.1f}"]
             for r in result["streaming"]["memnet"] for k in [kv.get(r["tokens_seen"], {})]]))
    if "read" in result:
        r = result["read"]
        lines.append("")
        lines.append(f"top-k read at N={r['num_slots']} (B=1, bank {r['bank_bytes'] / 2**20:.0f} MB): copy "
                     f"{r['copy_gbps']:.1f} GB/s; one token ({r['read_token_queries']} queries) "
                     f"{r['read_token_gbps']:.1f} GB/s = {100 * r['read_token_vs_copy']:.0f}% of copy; one segment "
                     f"({r['read_segment_queries']} queries) {r['read_segment_gbps']:.2f} GB/s = "
                     f"{100 * r['read_segment_vs_copy']:.0f}%; streamed segment {r['stream_segment_s']:.2f} s "
                     f"({r['stream_us_per_token']:.0f} us/token); counting only the copy's reads "
                     f"({r['copy_read_gbps']:.1f} GB/s) one token's read is {100 * r['read_token_vs_copy_read']:.0f}%; "
                     f"read path: {r.get('read_path', 'torch')}")
        if "read_torch_token_gbps" in r:
            lines.append(f"  torch path (chunked matrix product + top-k): one token {r['read_torch_token_gbps']:.1f} GB/s = "
                         f"{100 * r['read_torch_token_vs_copy']:.0f}% of copy; one segment {r['read_torch_segment_gbps']:.2f} GB/s")
        if "cores" in r:
            c = r["cores"]
            lines.append(f"  on {c['threads']} threads: copy {c['copy_gbps']:.1f} GB/s; one token's read "
                         f"{c['read_token_gbps']:.1f} GB/s = {100 * c['read_token_vs_copy']:.0f}% of copy"
                         + (f" (torch path {c['read_torch_token_gbps']:.1f} GB/s = {100 * c['read_torch_token_vs_copy']:.0f}%)"
                            if "read_torch_token_gbps" in c else ""))
    for c in result.get("compile", {}).values():
        head = f"{c['what']} at T={c['T']} (L={c['segment_len']}): eager {c['eager_us_per_token']:.1f} us/token"
        if "torch_step_us_per_token" in c:
            head += (f" ({'compiled kernel' if c.get('fused_step') else 'torch'} step; the step as torch operations "
                     f"{c['torch_step_us_per_token']:.1f})")
        if "error" in c:
            lines.append(f"{head}; not compiled: {c['error']}")
        else:
            lines.append(f"{head}, compiled {c['compiled_us_per_token']:.1f} us/token ({c['speedup']:.2f}x) "
                         f"after {c['compile_s']:.0f} s of compiling")
    if s and "compiled_step_full_ratio" in s:
        lines.append(f"FullTransformer / MemNet with the compiled memory step: {s['compiled_step_full_ratio']:.2f}x")
    for key in ("peers", "peers_cores"):
        if key in result:
            lines.append("")
            lines.extend(peers_table(result[key]))
    return "\n".join(lines)


def peers_table(peers_result: dict) -> list[str]:
    """The peers part's lines: a table of tokens/s per model (not-run models with their reason below
    it) and the ratios of :func:`peers_summary`."""
    s = peers_summary(peers_result)
    ran = [r for r in peers_result["rows"] if "not_run" not in r]
    lines = [format_table(
        ["model", "memory", "params", "tokens/s", "us/token", "autograd MB", f"time / {s['memnet']}"],
        [[r["name"], r["memory"], r["params"], f"{r['tokens_per_s']:.0f}", f"{r['us_per_token']:.1f}",
          "-" if r["autograd_mb"] is None else f"{r['autograd_mb']:.0f}", f"{s['time_vs_memnet'].get(r['name'], 1.0):.2f}x"
          + ("" if r["finite_loss"] else " (loss not finite)")] for r in ran],
        f"training throughput, forward+backward+{peers_result['optimizer']}, B={s['B']}, T={s['T']}: tokens/s; "
        f"{s['threads']} threads, fastest of {peers_result['rounds']} interleaved rounds")]
    lines += [f"  {name}: not run: {why}" for name, why in s["not_run"].items()]
    ratios = []
    if "memnet_vs_dnc_tokens_per_s" in s:
        ratios.append(f"tokens/s {s['memnet']} / dnc: {s['memnet_vs_dnc_tokens_per_s']:.2f}x")
    ratios += [f"time memnet_{N} / {s['memnet']}: {v:.2f}x" for N, v in s["memnet_slots_time_ratio"].items()]
    if "memnet_vs_windowed_time_per_token" in s:
        ratios.append(f"time per token {s['memnet']} / windowed: {s['memnet_vs_windowed_time_per_token']:.2f}x")
    if ratios:
        lines.append("; ".join(ratios))
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="laptop", choices=sorted(PROFILES))
    ap.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--out", type=Path, default=None, help="folder for results (default data/bench/<profile>)")
    ap.add_argument("--parts", action=DistinctList, what="part", default=None, choices=ALL_PARTS,
                    help="measure only these parts (not stored)")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: the profile's)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.parts is None or tuple(a.parts) == ALL_PARTS:  # a partial run is never stored: no folder to check
        check_out(ap, a, "bench")
    res = run(a.profile, a.device, None, a.out, not a.no_save, not a.no_progress, tuple(a.parts) if a.parts else None,
              a.threads)
    print(summary_table(res))
    print(f"\nwall time {res['provenance']['wall_s']:.0f} s on {res['provenance']['device']}")


if __name__ == "__main__":
    main()
