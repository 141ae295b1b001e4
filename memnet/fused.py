"""The memory step in one compiled call forward and one backward (CPU, float32).

:meth:`memnet.memory.MultiHeadMemoryBank.step` (read with the memory as it stands, then write)
is, as torch operations, several hundred small calls per segment forward and backward: each costs
microseconds of dispatch and autograd bookkeeping for a few thousand flops, so that at a window of
32 tokens the step, not the controller, sets MemNet's speed. :class:`FusedStep` computes the same
step in C (``memnet/csrc/memory_step.c``, compiled on first use like :mod:`memnet.native`): the
forward in one call, the hand-derived backward in another, as a ``torch.autograd.Function``.

It is the same function: the same normalisations, clamps and tie rules (the top-k keeps the lowest
index among equal scores, slots before a window's writes), the writes applied in the same order.
Scores are summed with fused multiply-adds, as a matrix product's are, and a write scores the read's
normalised keys times each slot's retained scale (mathematically the retained key normalised), so
values and gradients agree with the torch step up to float rounding (``tests/test_fused.py``), and
selections agree exactly wherever scores are not within rounding of a tie.

:func:`scan` runs a whole call's segments (the loop of :func:`memnet.memory.run_segments`) as one C
call forward and one backward (:class:`FusedScan`), the same step on each segment: what
:meth:`memnet.memory.MultiHeadMemoryBank.scan`, so ``MemNet.forward``, takes on the CPU. Its
state chains and gradient buffers come from :class:`BufferPool`, reused from call to call.

The bank takes this path (:meth:`MultiHeadMemoryBank.step`) when every tensor is on the CPU, the
kernel is available and the step is not being traced by ``torch.compile``; elsewhere (GPU, no C
compiler, ``MEMNET_NATIVE=0`` or ``MEMNET_FUSED=0`` in the environment) the torch step runs. On the
GPU ``MemNet.compile_memory()`` compiles the torch step instead.

Differentiable outputs: the new keys and values, the read vectors, the read weights, the read mass
and the retention gate; the gradient reaches the state's keys and values, the queries, every field
of the write request but ``pos``, and the bank's three parameters. The counts (age, usage,
retained, segments), indices, write strength and events carry no gradient, as in the torch step.
With ``decay_mode = "evidence"`` the retention's evidence term is computed in torch and enters the
kernel as each row's slot-wise logit (the kernel's gradient of it reaches the two evidence weights),
and the state's evidence is updated in torch from the kernel's reads and write events.
"""
from __future__ import annotations

import ctypes
import math
import sys
import threading
from pathlib import Path

import numpy as np

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import native

SOURCE_PATH = Path(__file__).with_name("csrc") / "memory_step.c"
# no fused multiply-add contraction: the allocation scores and the clamps compute as the torch
# step's separate float32 operations do, so that ties break the same way
FLAGS = [*native.FLAGS, "-ffp-contract=off"]
# "evidence" is "learned" to the kernel: its evidence term enters as the row's slot-wise logit (step())
DECAY_CODES = {"learned": 0, "fixed": 1, "none": 2, "evidence": 0}
ALLOCATION_CODES = {"lru": 0, "faded": 1, "weakest": 2}
# the pointers each entry point reads, in the order of its C enum
FORWARD_POINTERS = ("keys", "values", "age", "usage", "retained", "segments", "q", "k", "v", "g", "e", "u", "decay",
                    "pos", "valid", "lrs", "lws", "dl",
                    "new_keys", "new_values", "new_age", "new_usage", "new_retained", "new_segments", "vectors",
                    "read_index", "read_src", "read_weight", "mass", "strength", "events", "alloc", "retention",
                    "write_index", "read_top", "write_top")
BACKWARD_POINTERS = ("keys", "values", "q", "k", "v", "g", "e", "u", "decay", "valid", "lrs", "lws", "dl",
                     "read_src", "read_index", "write_index", "alloc",
                     "g_new_keys", "g_new_values", "g_vectors", "g_read_weight", "g_mass", "g_retention",
                     "g_keys", "g_values", "g_q", "g_k", "g_v", "g_g", "g_e", "g_u", "g_decay", "g_lrs", "g_lws",
                     "g_dl", "read_top", "write_top")
ROWS_PER_THREAD = 4  # batch rows per thread, at least, before a call is split over threads


def _build() -> ctypes.CDLL:
    """The step's library (:func:`memnet.native.build_library` of SOURCE_PATH), signatures declared."""
    dll = native.build_library("memory_step", SOURCE_PATH.read_text(), FLAGS)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for f in (dll.memnet_step_forward, dll.memnet_step_backward):
        f.argtypes = [p, p, i64, i64, p, p]
        f.restype = ctypes.c_int
    dll.memnet_scan_forward.argtypes = [p, p, i64, i64, i64, p, p, p, p, p, p, i64, p, i64]
    dll.memnet_scan_backward.argtypes = [p, p, i64, i64, i64, i64, p, p, p]
    dll.memnet_scan_forward.restype = dll.memnet_scan_backward.restype = ctypes.c_int
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


def _inner(t: Tensor, lead: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """`t` in `dtype` with its dims after the first `lead` contiguous (the strides of the leading
    dims may be anything: a slice ``x[:, s]`` or an expanded mask passes as it is)."""
    t = t if t.dtype == dtype else t.to(dtype)
    expected = 1
    for size, stride in zip(reversed(t.shape[lead:]), reversed(t.stride()[lead:])):
        if size != 1 and stride != expected:
            return t.contiguous()
        expected *= size
    return t


def _rows(t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """`t` in `dtype` with each batch row contiguous."""
    return _inner(t, 1, dtype)


def _blocks(t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """`t` (B, S, ...) in `dtype` with each (row, segment) block contiguous."""
    return _inner(t, 2, dtype)


def _call(fn, consts: "_Constants", B: int, ptrs: list[int], strides: list[int], head: tuple = (),
          segment_bytes: list[int] | None = None, extra: tuple = ()) -> int:
    """Run the entry point `fn` on the pointers `ptrs` (0 for an absent gradient) and batch strides
    `strides` of its tensors, the batch split over torch's threads when it is large enough; the
    largest flag it returns. A scan takes its integers `head` before the pointers, the bytes each
    pointer advances per segment (`segment_bytes`) after the strides, and then `extra`."""
    n = len(ptrs)
    p_arr, s_arr = (ctypes.c_void_p * n)(*ptrs), (ctypes.c_int64 * n)(*strides)  # alive until the call returns
    tail = ()
    if segment_bytes is not None:
        g_arr = (ctypes.c_int64 * n)(*segment_bytes)
        tail = (ctypes.addressof(g_arr),)
    tail = (*tail, *extra)
    p, s = ctypes.addressof(p_arr), ctypes.addressof(s_arr)
    at = (consts.dims_ptr, consts.floats_ptr)
    parts = max(1, min(torch.get_num_threads(), B // ROWS_PER_THREAD))
    if parts == 1:
        return fn(*at, 0, B, *head, p, s, *tail)
    bounds = [B * i // parts for i in range(parts + 1)]
    return max(native._in_parts(lambda i: fn(*at, bounds[i], bounds[i + 1], *head, p, s, *tail), parts))


class _Constants:
    """The sizes, modes and constants of a step (the C side's dims[] and floats[]) and the shapes of
    what it allocates, made once per configuration and shape (:func:`_constants`) so that a step
    builds nothing of them."""

    def __init__(self, key: tuple):
        from .memory import FADED_MIN, RETENTION_LOGIT_MAX

        N, D, K, decay_mode, allocation, eps, full, threshold, usage_decay, L, H, W, window = key
        self.K = K
        self.dims = (ctypes.c_int64 * 9)(N, D, L, H, K, W, int(window), DECAY_CODES[decay_mode],
                                         ALLOCATION_CODES[allocation])
        self.floats = (ctypes.c_float * 7)(eps, full, threshold, usage_decay, FADED_MIN, RETENTION_LOGIT_MAX,
                                           math.log(100.0))
        self.dims_ptr, self.floats_ptr = ctypes.addressof(self.dims), ctypes.addressof(self.floats)
        self.learned = decay_mode in ("learned", "evidence")
        f32, i64, b8 = torch.float32, torch.int64, torch.bool
        # per batch row: the forward's outputs (FORWARD_POINTERS after the inputs) and the backward's gradients
        self.outputs = [((N, D), f32), ((N, D), f32), ((N,), f32), ((N,), f32), ((N,), f32), ((), f32),
                        ((L, H, D), f32), ((L, H, K), i64), ((L, H, K), i64), ((L, H, K), f32), ((N,), f32),
                        ((N,), f32), ((N,), b8), ((W,), i64), ((N,), f32), ((W, K), i64), ((L, H, K), f32),
                        ((W, K), f32)]
        self.grads = [(N, D), (N, D), (L, H, D), (W, D), (W, D), (W,), (W, D), (W,), (D,), (H,), (1,), (N,)]
        self.out_strides = [math.prod(shape) for shape, _ in self.outputs]
        self.grad_strides = [math.prod(shape) for shape in self.grads]


_CONSTANTS: dict[tuple, _Constants] = {}  # held here, not by a bank: a copied or pickled model carries no addresses


def _constants(cfg, L: int, H: int, W: int, window: bool) -> _Constants:
    key = (cfg.num_slots, cfg.slot_dim, cfg.top_k, cfg.decay_mode, cfg.allocation, cfg.eps, cfg.full_key_norm,
           cfg.write_threshold, cfg.usage_decay, L, H, W, window)
    found = _CONSTANTS.get(key)
    if found is None:
        found = _CONSTANTS[key] = _Constants(key)
    return found


def _forward(consts: _Constants, inputs: list[Tensor]) -> tuple[int, list[Tensor]]:
    """The C forward on `inputs` (the first 18 of FORWARD_POINTERS, in order): its flag and its
    outputs (the rest of FORWARD_POINTERS, in order)."""
    B = inputs[0].shape[0]
    outs = [torch.empty((B, *shape), dtype=dtype) for shape, dtype in consts.outputs]
    ptrs = [t.data_ptr() for t in inputs] + [o.data_ptr() for o in outs]
    strides = [t.stride(0) for t in inputs] + consts.out_strides
    return _call(library().memnet_step_forward, consts, B, ptrs, strides), outs


# the forward's outputs by position (FORWARD_POINTERS after its 18 inputs)
(_NEW_KEYS, _NEW_VALUES, _NEW_AGE, _NEW_USAGE, _NEW_RETAINED, _NEW_SEGMENTS, _VECTORS, _READ_INDEX, _READ_SRC,
 _READ_WEIGHT, _MASS, _STRENGTH, _EVENTS, _ALLOC, _RETENTION, _WRITE_INDEX, _READ_TOP, _WRITE_TOP) = range(18)


class FusedStep(torch.autograd.Function):
    """One memory step whose forward has run (:func:`step`): hands its outputs to autograd and
    computes the gradients by the compiled backward."""

    @staticmethod
    def forward(ctx, consts: _Constants, out: list, keys: Tensor, values: Tensor, q: Tensor, k: Tensor, v: Tensor,
                g: Tensor, e: Tensor, u: Tensor, decay: Tensor, lrs: Tensor, lws: Tensor, dl: Tensor, valid: Tensor):
        ctx.save_for_backward(keys, values, q, k, v, g, e, u, decay, valid, lrs, lws, dl, out[_READ_SRC],
                              out[_READ_INDEX], out[_WRITE_INDEX], out[_ALLOC], out[_READ_TOP], out[_WRITE_TOP])
        ctx.consts = consts
        ctx.mark_non_differentiable(out[_NEW_AGE], out[_NEW_USAGE], out[_NEW_RETAINED], out[_NEW_SEGMENTS],
                                    out[_READ_INDEX], out[_STRENGTH], out[_EVENTS], out[_ALLOC])
        ctx.set_materialize_grads(False)
        return (out[_NEW_KEYS], out[_NEW_VALUES], out[_NEW_AGE], out[_NEW_USAGE], out[_NEW_RETAINED],
                out[_NEW_SEGMENTS], out[_VECTORS], out[_READ_INDEX], out[_READ_WEIGHT], out[_MASS], out[_STRENGTH],
                out[_EVENTS], out[_ALLOC], out[_RETENTION])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_new_keys, g_new_values, _age, _usage, _retained, _segments, g_vectors, _index,
                 g_read_weight, g_mass, _strength, _events, _alloc, g_retention):
        saved = ctx.saved_tensors  # the 17 inputs of BACKWARD_POINTERS, then the kept scores
        consts = ctx.consts
        B = saved[0].shape[0]
        upstream = [None if t is None else _rows(t)
                    for t in (g_new_keys, g_new_values, g_vectors, g_read_weight, g_mass, g_retention)]
        grads = [torch.empty((B, *shape)) for shape in consts.grads]
        ins, tops = saved[:17], saved[17:]
        ptrs = ([t.data_ptr() for t in ins] + [0 if t is None else t.data_ptr() for t in upstream]
                + [t.data_ptr() for t in grads] + [t.data_ptr() for t in tops])
        strides = ([t.stride(0) for t in ins] + [0 if t is None else t.stride(0) for t in upstream]
                   + consts.grad_strides + [t.stride(0) for t in tops])
        _call(library().memnet_step_backward, consts, B, ptrs, strides)
        g_keys, g_values, g_q, g_k, g_v, g_g, g_e, g_u, g_decay, g_lrs, g_lws, g_dl = grads
        learned = consts.learned
        # g_dl per row: the gradient of each row's slot-wise logit (an expanded decay_logit's sums in autograd)
        return (None, None, g_keys, g_values, g_q, g_k, g_v, g_g, g_e, g_u, g_decay if learned else None,
                g_lrs.sum(0), g_lws.sum(0), g_dl if learned else None, None)


def step(bank, state, queries: Tensor, req, valid: Tensor):
    """:meth:`memnet.memory.MultiHeadMemoryBank.step` by the compiled kernel: the same arguments
    (state, queries (B, L, H, D), the :class:`~memnet.memory.WriteRequest` and valid (B, L)) and the
    same :class:`~memnet.memory.StepResult`. Call it where :func:`applies` holds. A step whose
    scores hold NaN is taken by the torch step (whose sort places NaN as its own rule says)."""
    from .memory import MemoryState, ReadResult, StepResult, WriteResult, read_hits, update_evidence

    B, L, H = queries.shape[:3]
    W = req.gate.shape[1]
    consts = _constants(bank.cfg, L, H, W, bank.cfg.window_reads and req.pos is not None)
    pos = req.pos if req.pos is not None else torch.zeros(B, W, dtype=torch.int64)
    keys, values, q, k, v, g, e, u, decay = (_rows(t) for t in (state.keys, state.values, queries, req.key, req.value,
                                                                 req.gate, req.erase, req.update, req.decay))
    valid = _rows(valid, torch.bool)
    lrs, lws = bank.log_read_sharpness, bank.log_write_sharpness
    # (B, N) each row's slot-wise retention logit (bank.slot_logit): the bank's, shared by every row
    # (a batch stride of 0), or with "evidence" each row's own
    dl = bank.slot_logit(state.evidence, state.age).expand(B, -1)
    inputs = [keys, values, _rows(state.age), _rows(state.usage), _rows(state.retained), _rows(state.segments), q, k, v,
              g, e, u, decay, _rows(pos, torch.int64), valid, lrs, lws, dl]
    with torch.no_grad():
        flag, out = _forward(consts, inputs)
    if flag:
        return bank.reference_step(state, queries, req, valid)
    (new_keys, new_values, age, usage, retained, segments, vectors, read_index, read_weight, mass, strength, events,
     alloc, retention) = FusedStep.apply(consts, out, keys, values, q, k, v, g, e, u, decay, lrs, lws, dl, valid)
    evidence = state.evidence
    if bank.cfg.decay_mode == "evidence":  # the reads' hits, as the torch step's bookkeeping takes them
        hits = read_hits(read_index, read_weight, out[_READ_TOP], valid, bank.cfg.num_slots)
        evidence = update_evidence(evidence, hits, events)
    new = MemoryState(new_keys, new_values, age, usage, retained, segments, evidence, signature=state.signature)
    return StepResult(new, ReadResult(vectors, read_index, read_weight, out[_READ_TOP]),
                      WriteResult(strength, events, alloc, retention), mass)


# ---------------------------------------------------------------------------- the scan over segments
class BufferPool:
    """Float32 buffers of the scan's (B, S+1, N, D) state chains and (B, 2, N, D) gradient turns,
    kept between calls and handed out again once nothing holds them.

    A fresh buffer of that size is fresh pages from the system each call: at 1,024 slots, B=16 and
    16 segments the two chains are 140 MB, and faulting them in and clearing them took about as long
    as the scan's arithmetic. Each buffer is a numpy array whose memory a tensor shares
    (``torch.from_numpy``); the tensor's storage holds a reference to the array until the last tensor
    on it (a view, a tensor autograd saved) is gone, so an array with no reference but the pool's is
    free. Free arrays beyond `keep_bytes` in all are let go, least recently used first."""

    def __init__(self, keep_bytes: int = 1 << 30):
        self.keep_bytes = keep_bytes
        self._arrays: list[np.ndarray] = []  # most recently handed out last
        self._lock = threading.Lock()
        # the count sys.getrefcount gives for an array nothing but the pool's list holds, as read by
        # _free (measured here, in the same way, rather than assumed of the interpreter)
        probe = [np.empty(0, dtype=np.float32)]
        self._alone = sys.getrefcount(probe[0])

    def _free(self, i: int) -> bool:
        """Whether nothing but the pool holds array i."""
        return sys.getrefcount(self._arrays[i]) <= self._alone

    def take(self, shape: tuple[int, ...]) -> Tensor:
        """A float32 tensor of `shape` (contents undefined)."""
        shape = tuple(int(x) for x in shape)
        with self._lock:
            at = next((i for i in range(len(self._arrays)) if self._arrays[i].shape == shape and self._free(i)), None)
            found = np.empty(shape, dtype=np.float32) if at is None else self._arrays.pop(at)
            self._arrays.append(found)
            # let go of the least recently used free arrays while the free ones exceed keep_bytes
            excess = sum(self._arrays[i].nbytes for i in range(len(self._arrays)) if self._free(i)) - self.keep_bytes
            i = 0
            while excess > 0 and i < len(self._arrays) - 1:
                if self._free(i):
                    excess -= self._arrays.pop(i).nbytes
                else:
                    i += 1
            return torch.from_numpy(found)

    def held_bytes(self) -> int:
        """Bytes of every array the pool keeps, free or in use."""
        return sum(a.nbytes for a in self._arrays)


_POOL = BufferPool()


def _bytes(t: Tensor) -> int:
    """How many bytes a (B, S, ...) tensor's segment s+1 lies after its segment s."""
    return t.stride(1) * t.element_size()


def _aged(age: Tensor) -> Tensor:
    """The age term of decay_mode "evidence" (:meth:`memnet.memory.MultiHeadMemoryBank.slot_logit`)."""
    from .memory import EVIDENCE_AGE_CAP

    return age.clamp(max=EVIDENCE_AGE_CAP) / EVIDENCE_AGE_CAP


class FusedScan(torch.autograd.Function):
    """S memory steps whose forward has run (:func:`scan`): hands the differentiable outputs to
    autograd and computes every gradient by one call of the compiled backward, last segment first.

    `slot_logit` is the tensor whose values the steps' retention used as each row's slot-wise logit:
    the bank's decay logit (N,), or with decay_mode "evidence" the (B, S, N) logits the forward made
    from the evidence and age each row carried (`evidence`: that chain, (B, S+1, N)); the gradient
    reaches the decay logit and, with "evidence", the evidence and age weights."""

    @staticmethod
    def forward(ctx, consts: _Constants, chain: list, outs: list, detach_every: int, slot_logit: Tensor,
                evidence, keys: Tensor, values: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor, e: Tensor,
                u: Tensor, decay: Tensor, lrs: Tensor, lws: Tensor, decay_logit: Tensor, ew, aw, valid: Tensor):
        ctx.save_for_backward(chain[0], chain[1], q, k, v, g, e, u, decay, valid, lrs, lws, slot_logit,
                              *(outs[i - 6] for i in (_READ_SRC, _READ_INDEX, _WRITE_INDEX, _ALLOC, _READ_TOP,
                                                      _WRITE_TOP)))
        ctx.consts, ctx.detach_every = consts, detach_every
        ctx.evidence = None if evidence is None else (evidence, chain[2])  # the evidence and age chains
        ctx.set_materialize_grads(False)
        S = q.shape[1]
        return (chain[0][:, S].clone(), chain[1][:, S].clone(), outs[_VECTORS - 6], outs[_READ_WEIGHT - 6],
                outs[_MASS - 6], outs[_RETENTION - 6])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_keys, g_values, g_vectors, g_read_weight, g_mass, g_retention):
        saved = ctx.saved_tensors
        consts = ctx.consts
        keys, values, q, slot_logit = saved[0], saved[1], saved[2], saved[12]
        B, S = q.shape[:2]
        N, D = keys.shape[2:]
        final = [None if t is None else _rows(t) for t in (g_keys, g_values)]
        upstream = [None if t is None else _blocks(t) for t in (g_vectors, g_read_weight, g_mass, g_retention)]
        turns = [_POOL.take((B, 2, N, D)) for _ in range(2)]  # the state's gradient, passed segment to segment
        grads = [torch.empty((B, S, *shape)) for shape in consts.grads[2:]]
        ins, tops = saved[:17], saved[17:]
        per_row = slot_logit.dim() == 3  # "evidence": a logit per row and segment; else the bank's, shared
        ptrs = ([t.data_ptr() for t in ins] + [0 if t is None else t.data_ptr() for t in final + upstream]
                + [t.data_ptr() for t in turns + grads] + [t.data_ptr() for t in tops])
        strides = ([t.stride(0) for t in ins[:10]] + [0, 0, slot_logit.stride(0) if per_row else 0]
                   + [t.stride(0) for t in ins[13:]] + [0 if t is None else t.stride(0) for t in final + upstream]
                   + [t.stride(0) for t in turns + grads] + [t.stride(0) for t in tops])
        seg = ([_bytes(t) for t in ins[:10]] + [0, 0, _bytes(slot_logit) if per_row else 0]
               + [_bytes(t) for t in ins[13:]] + [0, 0] + [0 if t is None else _bytes(t) for t in upstream]
               + [_bytes(t) for t in turns + grads] + [_bytes(t) for t in tops])
        _call(library().memnet_scan_backward, consts, B, ptrs, strides, (S, ctx.detach_every or 0), seg)
        g_q, g_k, g_v, g_g, g_e, g_u, g_decay, g_lrs, g_lws, g_dl = grads
        learned = consts.learned
        g_base = g_ew = g_aw = None
        if learned:
            g_base = g_dl.sum((0, 1))
        if ctx.evidence is not None:  # logit = base + scale * (ew * evidence + aw * aged)
            from .memory import EVIDENCE_SCALE

            evidence, age = ctx.evidence
            g_ew = EVIDENCE_SCALE * (g_dl * evidence[:, :S]).sum()
            g_aw = EVIDENCE_SCALE * (g_dl * _aged(age[:, :S])).sum()
        return (None, None, None, None, None, None, turns[0][:, 0], turns[1][:, 0], g_q, g_k, g_v, g_g, g_e, g_u,
                g_decay if learned else None, g_lrs.sum((0, 1)), g_lws.sum((0, 1)), g_base, g_ew, g_aw, None)


def scan(bank, state, queries: Tensor, req, valid: Tensor, detach_every: int | None = None):
    """The loop over a call's S segments (:func:`memnet.memory.run_segments` with the bank's step)
    in one compiled call forward and one backward: queries (B, S, L, H, D), the segments' writes as one
    :class:`~memnet.memory.WriteRequest` of (B, S, W, ...) fields, valid (B, S, L). Returns the final
    state and the :class:`~memnet.memory.Segments`, the same values (bit for bit: the same C step on the
    same inputs) as the loop; None where a score is NaN (the loop then takes that segment by the torch
    step). With decay_mode "evidence" the evidence a row carries, and the retention logit made of it,
    are updated between segments inside the same call. Call it where :func:`applies` holds."""
    from .memory import EVIDENCE_AGE_CAP, EVIDENCE_SCALE, MemoryState, Segments

    cfg = bank.cfg
    B, S, L, H = queries.shape[:4]
    N, W = cfg.num_slots, req.gate.shape[2]
    consts = _constants(cfg, L, H, W, cfg.window_reads and req.pos is not None)
    pos = req.pos if req.pos is not None else torch.zeros(B, S, W, dtype=torch.int64)
    q, k, v, g, e, u, decay = (_blocks(t) for t in (queries, req.key, req.value, req.gate, req.erase, req.update,
                                                     req.decay))
    valid = _blocks(valid, torch.bool)
    lrs, lws = bank.log_read_sharpness, bank.log_write_sharpness
    base = bank.decay_logit  # (N,): the slot-wise logit of every row and segment, unless "evidence"
    # the state as a chain (B, S+1, ...): segment s reads entry s and writes entry s+1
    chain = [_POOL.take((B, S + 1, *shape)) if i < 2 else torch.empty((B, S + 1, *shape), dtype=dtype)
             for i, (shape, dtype) in enumerate(consts.outputs[:6])]  # keys and values from the pool
    with torch.no_grad():
        for buf, t in zip(chain, (state.keys, state.values, state.age, state.usage, state.retained, state.segments)):
            buf[:, 0].copy_(t)
    outs = [torch.empty((B, S, *shape), dtype=dtype) for shape, dtype in consts.outputs[6:]]
    inputs = [q, k, v, g, e, u, decay, _blocks(pos, torch.int64), valid]
    ptrs = ([t.data_ptr() for t in chain] + [t.data_ptr() for t in inputs] + [lrs.data_ptr(), lws.data_ptr(),
            base.data_ptr()] + [t[:, 1].data_ptr() for t in chain] + [t.data_ptr() for t in outs])
    strides = ([t.stride(0) for t in chain] + [t.stride(0) for t in inputs] + [0, 0, 0]
               + [t.stride(0) for t in chain] + [t.stride(0) for t in outs])
    seg = ([_bytes(t) for t in chain] + [_bytes(t) for t in inputs] + [0, 0, 0] + [_bytes(t) for t in chain]
           + [_bytes(t) for t in outs])
    evidence, ew, aw, slot_logit = None, None, None, base
    ev_args = (0, 0, 0, 0, 0, 0)  # no evidence: the bank's logit for every row and segment
    if cfg.decay_mode == "evidence":
        ew, aw = bank.evidence_weight, bank.age_weight
        evidence = torch.empty(B, S + 1, N)  # (B, S+1, N), as the state chain
        evidence[:, 0] = state.evidence.detach()
        slot_logit = torch.empty(B, S, N)  # each row's logit before each segment, made in C
        weights = torch.tensor([float(ew.detach()), float(aw.detach()), EVIDENCE_SCALE, EVIDENCE_AGE_CAP],
                               dtype=torch.float32)
        base_c = base.detach().contiguous()  # (N,), alive through the call
        ev_args = (base_c.data_ptr(), weights.data_ptr(), evidence.data_ptr(), evidence.stride(0),
                   slot_logit.data_ptr(), slot_logit.stride(0))
    flag = _call(library().memnet_scan_forward, consts, B, ptrs, strides, (S,), seg, ev_args)
    if flag:
        return None
    keys, values, vectors, read_weight, mass, retention = FusedScan.apply(
        consts, chain, outs, detach_every, slot_logit, evidence, state.keys, state.values, q, k, v, g, e, u, decay,
        lrs, lws, base, ew, aw, valid)
    at = lambda i: outs[i - 6]  # noqa: E731  (an output by its position in the step's list)
    last = [t[:, S].clone() for t in chain[2:]]
    if evidence is None:
        new_evidence, trace_evidence = state.evidence, state.evidence.unsqueeze(1).expand(-1, S, -1)
    else:
        new_evidence, trace_evidence = evidence[:, S].clone(), evidence[:, 1:]
    new = MemoryState(keys, values, *last, new_evidence, signature=state.signature)
    return new, Segments(vectors, at(_READ_INDEX), read_weight, at(_READ_TOP), mass, at(_STRENGTH), at(_EVENTS),
                         at(_ALLOC), retention, chain[2][:, 1:], chain[3][:, 1:], trace_evidence)
