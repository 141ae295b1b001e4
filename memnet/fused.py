"""The memory step in one compiled call forward and one backward (CPU, float32).

:meth:`memnet.memory.MultiHeadMemoryBank.step` (read with the memory as it stands, then write)
is, as torch operations, several hundred small calls per segment forward and backward: each costs
microseconds of dispatch and autograd bookkeeping for a few thousand flops, so that at a window of
32 tokens the step, not the controller, sets MemNet's speed. :class:`FusedStep` computes the same
step in C (``memnet/csrc/memory_step.c``, compiled on first use like :mod:`memnet.native`): the
forward in one call, the hand-derived backward in another, as a ``torch.autograd.Function``.

It is the same function: the same normalisations, clamps and tie rules (the top-k keeps the lowest
index among equal scores, slots before a window's writes), the writes applied in the same order.
Values and gradients agree with the torch step up to float rounding (``tests/test_fused.py``), and
selections agree exactly wherever scores are not within rounding of a tie.

The bank takes this path (:meth:`MultiHeadMemoryBank.step`) when every tensor is on the CPU, the
kernel is available and the step is not being traced by ``torch.compile``; elsewhere (GPU, no C
compiler, ``MEMNET_NATIVE=0`` or ``MEMNET_FUSED=0`` in the environment) the torch step runs. On the
GPU ``MemNet.compile_memory()`` compiles the torch step instead.

Differentiable outputs: the new keys and values, the read vectors, the read weights, the read mass
and the retention gate; the gradient reaches the state's keys and values, the queries, every field
of the write request but ``pos``, and the bank's three parameters. The counts (age, usage,
retained, segments), indices, write strength and events carry no gradient, as in the torch step.
"""
from __future__ import annotations

import ctypes
import math
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import native

SOURCE_PATH = Path(__file__).with_name("csrc") / "memory_step.c"
# no fused multiply-add contraction: the allocation scores and the clamps compute as the torch
# step's separate float32 operations do, so that ties break the same way
FLAGS = [*native.FLAGS, "-ffp-contract=off"]
DECAY_CODES = {"learned": 0, "fixed": 1, "none": 2}
ALLOCATION_CODES = {"lru": 0, "faded": 1, "weakest": 2}
# the pointers each entry point reads, in the order of its C enum
FORWARD_POINTERS = ("keys", "values", "age", "usage", "retained", "segments", "q", "k", "v", "g", "e", "u", "decay",
                    "pos", "valid", "lrs", "lws", "dl",
                    "new_keys", "new_values", "new_age", "new_usage", "new_retained", "new_segments", "vectors",
                    "read_index", "read_src", "read_weight", "mass", "strength", "events", "alloc", "retention",
                    "write_index")
BACKWARD_POINTERS = ("keys", "values", "q", "k", "v", "g", "e", "u", "decay", "valid", "lrs", "lws", "dl",
                     "read_src", "read_index", "write_index", "alloc",
                     "g_new_keys", "g_new_values", "g_vectors", "g_read_weight", "g_mass", "g_retention",
                     "g_keys", "g_values", "g_q", "g_k", "g_v", "g_g", "g_e", "g_u", "g_decay", "g_lrs", "g_lws",
                     "g_dl")
ROWS_PER_THREAD = 4  # batch rows per thread, at least, before a call is split over threads


def _build() -> ctypes.CDLL:
    """The step's library (:func:`memnet.native.build_library` of SOURCE_PATH), signatures declared."""
    dll = native.build_library("memory_step", SOURCE_PATH.read_text(), FLAGS)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for f in (dll.memnet_step_forward, dll.memnet_step_backward):
        f.argtypes = [p, p, i64, i64, p, p]
        f.restype = ctypes.c_int
    return dll


_step = native.LazyLibrary("memnet.fused: the compiled memory step", _build, ("MEMNET_NATIVE", "MEMNET_FUSED"),
                           "the torch step computes the same")


def library() -> ctypes.CDLL | None:
    """The compiled step, built on first call; None when disabled (``MEMNET_NATIVE=0`` or
    ``MEMNET_FUSED=0``) or when it cannot be built (:func:`status` says why)."""
    return _step.get()


def status() -> str:
    """'native' when the compiled step is in use, else why not."""
    return _step.status()


def applies(tensors: list[Tensor]) -> bool:
    """Whether the compiled step can take a step of these tensors: all on the CPU, not inside
    ``torch.compile``, and the kernel available."""
    if torch.compiler.is_compiling():
        return False
    if any(t.device.type != "cpu" for t in tensors):
        return False
    return library() is not None


def _rows(t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """`t` in `dtype` with each batch row contiguous (the batch stride may be anything): a slice
    ``x[:, s]`` of a contiguous (B, S, ...) tensor passes as it is."""
    t = t if t.dtype == dtype else t.to(dtype)
    if t.is_contiguous():
        return t
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return t.contiguous()
        expected *= size
    return t


def _call(fn, consts: "_Constants", B: int, tensors: list[Tensor | None]) -> int:
    """Run the entry point `fn` on the pointers (and batch strides) of `tensors`, the batch split
    over torch's threads when it is large enough; the largest flag it returns."""
    n = len(tensors)
    ptrs = (ctypes.c_void_p * n)(*[None if t is None else t.data_ptr() for t in tensors])
    strides = (ctypes.c_int64 * n)(*[0 if t is None or t.dim() == 0 else t.stride(0) for t in tensors])
    parts = max(1, min(torch.get_num_threads(), B // ROWS_PER_THREAD))
    bounds = [B * i // parts for i in range(parts + 1)]
    at = (consts.dims_ptr, consts.floats_ptr)
    p, s = ctypes.addressof(ptrs), ctypes.addressof(strides)
    if parts == 1:
        return fn(*at, 0, B, p, s)
    return max(native._in_parts(lambda i: fn(*at, bounds[i], bounds[i + 1], p, s), parts))


class _Constants:
    """The sizes, modes and constants of a step (the C side's dims[] and floats[]), made once per
    configuration and shape (:func:`_constants`) so that a step builds nothing of them."""

    def __init__(self, key: tuple):
        from .memory import FADED_MIN, RETENTION_LOGIT_MAX

        N, D, K, decay_mode, allocation, eps, full, threshold, usage_decay, L, H, W, window = key
        self.K = K
        self.dims = (ctypes.c_int64 * 9)(N, D, L, H, K, W, int(window), DECAY_CODES[decay_mode],
                                         ALLOCATION_CODES[allocation])
        self.floats = (ctypes.c_float * 7)(eps, full, threshold, usage_decay, FADED_MIN, RETENTION_LOGIT_MAX,
                                           math.log(100.0))
        self.dims_ptr, self.floats_ptr = ctypes.addressof(self.dims), ctypes.addressof(self.floats)
        self.learned = decay_mode == "learned"


_CONSTANTS: dict[tuple, _Constants] = {}  # held here, not by a bank: a copied or pickled model carries no addresses


def _constants(cfg, L: int, H: int, W: int, window: bool) -> _Constants:
    key = (cfg.num_slots, cfg.slot_dim, cfg.top_k, cfg.decay_mode, cfg.allocation, cfg.eps, cfg.full_key_norm,
           cfg.write_threshold, cfg.usage_decay, L, H, W, window)
    found = _CONSTANTS.get(key)
    if found is None:
        found = _CONSTANTS[key] = _Constants(key)
    return found


def _forward(consts: _Constants, given: dict[str, Tensor]) -> tuple[int, dict[str, Tensor]]:
    """The C forward on the `given` inputs (FORWARD_POINTERS' first 18): its flag and every output."""
    keys, q, g = given["keys"], given["q"], given["g"]
    B, N, D = keys.shape
    L, H, W, K = q.shape[1], q.shape[2], g.shape[1], consts.K
    f32, i64 = torch.float32, torch.int64
    out = dict(new_keys=torch.empty(B, N, D), new_values=torch.empty(B, N, D), new_age=torch.empty(B, N),
               new_usage=torch.empty(B, N), new_retained=torch.empty(B, N), new_segments=torch.empty(B),
               vectors=torch.empty(B, L, H, D), read_index=torch.empty(B, L, H, K, dtype=i64),
               read_src=torch.empty(B, L, H, K, dtype=i64), read_weight=torch.empty(B, L, H, K, dtype=f32),
               mass=torch.empty(B, N), strength=torch.empty(B, N), events=torch.empty(B, N, dtype=torch.bool),
               alloc=torch.empty(B, W, dtype=i64), retention=torch.empty(B, N),
               write_index=torch.empty(B, W, K, dtype=i64))
    everything = {**given, **out, "valid": given["valid"].view(torch.uint8), "events": out["events"].view(torch.uint8)}
    flag = _call(library().memnet_step_forward, consts, B, [everything[n] for n in FORWARD_POINTERS])
    return flag, out


class FusedStep(torch.autograd.Function):
    """One memory step whose forward has run (:func:`step`): hands its outputs to autograd and
    computes the gradients by the compiled backward."""

    @staticmethod
    def forward(ctx, consts: _Constants, out: dict, keys: Tensor, values: Tensor, q: Tensor, k: Tensor, v: Tensor,
                g: Tensor, e: Tensor, u: Tensor, decay: Tensor, lrs: Tensor, lws: Tensor, dl: Tensor, valid: Tensor):
        ctx.save_for_backward(keys, values, q, k, v, g, e, u, decay, valid, lrs, lws, dl,
                              out["read_src"], out["read_index"], out["write_index"], out["alloc"])
        ctx.consts = consts
        ctx.mark_non_differentiable(out["new_age"], out["new_usage"], out["new_retained"], out["new_segments"],
                                    out["read_index"], out["strength"], out["events"], out["alloc"])
        ctx.set_materialize_grads(False)
        return (out["new_keys"], out["new_values"], out["new_age"], out["new_usage"], out["new_retained"],
                out["new_segments"], out["vectors"], out["read_index"], out["read_weight"], out["mass"],
                out["strength"], out["events"], out["alloc"], out["retention"])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_new_keys, g_new_values, _age, _usage, _retained, _segments, g_vectors, _index,
                 g_read_weight, g_mass, _strength, _events, _alloc, g_retention):
        (keys, values, q, k, v, g, e, u, decay, valid, lrs, lws, dl,
         read_src, read_index, write_index, alloc) = ctx.saved_tensors
        B, N, D = keys.shape
        H = q.shape[2]
        c = lambda t: None if t is None else _rows(t)
        grads = dict(g_keys=torch.empty(B, N, D), g_values=torch.empty(B, N, D), g_q=torch.empty(q.shape),
                     g_k=torch.empty(k.shape), g_v=torch.empty(v.shape), g_g=torch.empty(g.shape),
                     g_e=torch.empty(e.shape), g_u=torch.empty(u.shape), g_decay=torch.empty(decay.shape),
                     g_lrs=torch.empty(B, H), g_lws=torch.empty(B, 1), g_dl=torch.empty(B, N))
        everything = dict(keys=keys, values=values, q=q, k=k, v=v, g=g, e=e, u=u, decay=decay,
                          valid=valid.view(torch.uint8), lrs=lrs, lws=lws, dl=dl, read_src=read_src,
                          read_index=read_index, write_index=write_index, alloc=alloc,
                          g_new_keys=c(g_new_keys), g_new_values=c(g_new_values), g_vectors=c(g_vectors),
                          g_read_weight=c(g_read_weight), g_mass=c(g_mass), g_retention=c(g_retention), **grads)
        _call(library().memnet_step_backward, ctx.consts, B, [everything[n] for n in BACKWARD_POINTERS])
        learned = ctx.consts.learned
        return (None, None, grads["g_keys"], grads["g_values"], grads["g_q"], grads["g_k"], grads["g_v"],
                grads["g_g"], grads["g_e"], grads["g_u"], grads["g_decay"] if learned else None,
                grads["g_lrs"].sum(0), grads["g_lws"].sum(0), grads["g_dl"].sum(0) if learned else None, None)


def step(bank, state, queries: Tensor, req, valid: Tensor):
    """:meth:`memnet.memory.MultiHeadMemoryBank.step` by the compiled kernel: the same arguments
    (state, queries (B, L, H, D), the :class:`~memnet.memory.WriteRequest` and valid (B, L)) and the
    same :class:`~memnet.memory.StepResult`. Call it where :func:`applies` holds. A step whose
    scores hold NaN is taken by the torch step (whose sort places NaN as its own rule says)."""
    from .memory import MemoryState, ReadResult, StepResult, WriteResult

    B, L, H = queries.shape[:3]
    W = req.gate.shape[1]
    consts = _constants(bank.cfg, L, H, W, bank.cfg.window_reads and req.pos is not None)
    pos = req.pos if req.pos is not None else torch.zeros(B, W, dtype=torch.int64)
    given = dict(keys=_rows(state.keys), values=_rows(state.values), age=_rows(state.age), usage=_rows(state.usage),
                 retained=_rows(state.retained), segments=_rows(state.segments), q=_rows(queries), k=_rows(req.key),
                 v=_rows(req.value), g=_rows(req.gate), e=_rows(req.erase), u=_rows(req.update),
                 decay=_rows(req.decay), pos=_rows(pos, torch.int64), valid=_rows(valid, torch.bool),
                 lrs=bank.log_read_sharpness, lws=bank.log_write_sharpness, dl=bank.decay_logit)
    with torch.no_grad():
        flag, out = _forward(consts, given)
    if flag:
        return bank.reference_step(state, queries, req, valid)
    (new_keys, new_values, age, usage, retained, segments, vectors, read_index, read_weight, mass, strength, events,
     alloc, retention) = FusedStep.apply(consts, out, *(given[n] for n in (
         "keys", "values", "q", "k", "v", "g", "e", "u", "decay", "lrs", "lws", "dl", "valid")))
    new = MemoryState(new_keys, new_values, age, usage, retained, segments, signature=state.signature)
    return StepResult(new, ReadResult(vectors, read_index, read_weight),
                      WriteResult(strength, events, alloc, retention), mass)
