"""Optional compiled kernels for the memory's top-k (CPU, float32, no autograd).

:func:`topk_rows` is the one read that is bound by memory bandwidth: exact top-k of the dot
products of a few queries with a large bank of keys. :func:`select_rows` picks the top k of
rows of scores already computed: the selection inside every read, write and allocation of
:mod:`memnet.memory`, where ``torch.topk`` on many short rows (a segment's queries against a
bank of a hundred slots) costs microseconds per row and its tie handling several more passes;
one pass per row in C keeps a sorted list of k, ties to the lowest index.

``torch``'s matrix product of a tall bank (N, D) with a handful of queries (D, Q) streams the bank
at well under the machine's copy bandwidth on CPU; the product is memory bound (about 2Q flops per
4 bytes read) and the BLAS kernel is built for wide products. The kernel here reads each row of
the bank once, scores it against the queries four at a time in registers and keeps each query's
top k in a small sorted list, so that neither the (Q, N) score matrix nor a second pass exists.
It is C, compiled on first use with the system's C compiler into a cache directory
(``$MEMNET_CACHE``, default ``~/.cache/memnet``; :func:`cache_dir`) and loaded with ``ctypes``: no
build step, no dependency. The library is cached with its sha256 and loaded only when the two agree
(a truncated or overwritten library is built again), from a private copy of the checked bytes.
Threads: the bank is cut into contiguous row ranges, one per ``torch.get_num_threads()`` thread
(``ctypes`` releases the GIL), and the per-range candidates are merged in range order.

Semantics are those of :func:`memnet.addressing.stable_topk` of the scores: descending, ties to the
lowest row (:func:`select_rows` gives exactly its indices: it reads the same scores). The scores of
:func:`topk_rows` are float32 dot products summed in another order than the BLAS product, so
they may differ from it in the last bits (tests/test_native.py checks the agreement). NaN scores,
fewer rows than k, no compiler (a RuntimeWarning says why the kernel is unavailable), or
``MEMNET_NATIVE=0`` in the environment: either function returns None and the caller takes its torch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

SOURCE = r"""
#include <stdint.h>

/* rows ahead of the one being scored whose cache lines are requested: the hardware prefetcher
   alone leaves a single core's stream well short of its copy bandwidth */
#define PREFETCH_ROWS 32

/* insert score s of row n into a descending list (v, ix), starting at position j (the last entry
   of a full list, which s replaces, or the first free one) and moving up past smaller scores; an
   equal score already in the list stays ahead (it came from a lower row) */
static void push(float *v, int64_t *ix, int64_t j, float s, int64_t n) {
    while (j > 0 && v[j - 1] < s) { v[j] = v[j - 1]; ix[j] = ix[j - 1]; j--; }
    v[j] = s; ix[j] = n;
}

static void offer(float *vals, int64_t *idx, int64_t k, int64_t j, float s, int64_t n, int *nan) {
    float *v = vals + j * k;
    if (s > v[k - 1]) push(v, idx + j * k, k - 1, s, n);
    else if (s != s) *nan = 1;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
/* row n against queries j..j+3 when D is a multiple of 8: two accumulators per query (so the
   dependent FMA chains are half as long), the four dot products summed horizontally at once and
   compared with the four lists' thresholds in one instruction */
static inline void row4_avx2(const float *row, int64_t D, int64_t n, const float *q, int64_t j,
                             const float *scale, int64_t k, float *vals, int64_t *idx, int *nan) {
    const float *q0 = q + j * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        const __m256 x = _mm256_loadu_ps(row + d), y = _mm256_loadu_ps(row + d + 8);
        a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q0 + d), a0); b0 = _mm256_fmadd_ps(y, _mm256_loadu_ps(q0 + d + 8), b0);
        a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q1 + d), a1); b1 = _mm256_fmadd_ps(y, _mm256_loadu_ps(q1 + d + 8), b1);
        a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q2 + d), a2); b2 = _mm256_fmadd_ps(y, _mm256_loadu_ps(q2 + d + 8), b2);
        a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q3 + d), a3); b3 = _mm256_fmadd_ps(y, _mm256_loadu_ps(q3 + d + 8), b3);
    }
    if (d < D) {  /* D = 16m + 8 */
        const __m256 x = _mm256_loadu_ps(row + d);
        a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q0 + d), a0); a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q1 + d), a1);
        a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q2 + d), a2); a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q3 + d), a3);
    }
    a0 = _mm256_add_ps(a0, b0); a1 = _mm256_add_ps(a1, b1); a2 = _mm256_add_ps(a2, b2); a3 = _mm256_add_ps(a3, b3);
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));  /* the 4 dot products */
    if (scale) s = _mm_mul_ps(s, _mm_set1_ps(scale[n]));
    const __m128 thr = _mm_setr_ps(vals[j * k + k - 1], vals[(j + 1) * k + k - 1],
                                   vals[(j + 2) * k + k - 1], vals[(j + 3) * k + k - 1]);
    if (_mm_movemask_ps(_mm_or_ps(_mm_cmpgt_ps(s, thr), _mm_cmpunord_ps(s, s)))) {
        float a[4];
        _mm_storeu_ps(a, s);
        for (int t = 0; t < 4; t++) offer(vals, idx, k, j + t, a[t], n, nan);
    }
}
#endif

/* Rows [lo, hi) of keys (row-major, D floats per row) against Q queries (Q x D): each query's k
   largest dot products (times scale[n] when scale is not NULL) in vals/idx (Q x k, which the
   caller fills with -inf and -1). Returns 1 if a score was NaN, else 0. */
int memnet_topk_rows(const float *keys, int64_t D, int64_t lo, int64_t hi, const float *q, int64_t Q,
                     const float *scale, int64_t k, float *vals, int64_t *idx) {
    int nan = 0;
    for (int64_t n = lo; n < hi; n++) {  /* each row is read from memory once, for all queries */
        const float *row = keys + n * D;
        const float f = scale ? scale[n] : 1.0f;
        int64_t j = 0;
        for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(row + PREFETCH_ROWS * D + d);  /* a hint: never faults */
#if defined(__AVX2__) && defined(__FMA__)
        if (D % 8 == 0)
            for (; j + 4 <= Q; j += 4) row4_avx2(row, D, n, q, j, scale, k, vals, idx, &nan);
#endif
        for (; j < Q; j++) {
            const float *qj = q + j * D;
            float a = 0.0f;
            #pragma omp simd reduction(+:a)
            for (int64_t d = 0; d < D; d++) a += row[d] * qj[d];
            offer(vals, idx, k, j, scale ? a * f : a, n, &nan);
        }
    }
    return nan;
}

/* Rows [lo, hi) of a score matrix (row-major, N floats per row): the indices of each row's k
   largest scores in idx (rows x k), descending, ties to the lowest index, as the first k of a
   stable descending sort. -inf scores are kept like any other (a row has at least k entries).
   Returns 1 if a score was NaN (idx is then incomplete), else 0. */
int memnet_select_rows(const float *scores, int64_t N, int64_t lo, int64_t hi, int64_t k, int64_t *idx) {
    float v[k];
    for (int64_t r = lo; r < hi; r++) {
        const float *row = scores + r * N;
        int64_t *ix = idx + r * k;
        int64_t c = 0;  /* entries in the list so far */
        for (int64_t n = 0; n < N; n++) {
            const float s = row[n];
            if (s != s) return 1;
            if (c < k) push(v, ix, c++, s, n);  /* the list is not full: every entry enters */
            else if (s > v[k - 1]) push(v, ix, k - 1, s, n);  /* beats the smallest kept (equal ones came first) */
        }
    }
    return 0;
}
"""

FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"]
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_open_fds: list[int] = []  # the in-memory files of the loaded libraries (see _load)
_pool_pid = 0  # the process that made _pool: a forked child has the object but not its threads


def _fingerprint(source: str = SOURCE, flags: list[str] = FLAGS) -> str:
    """Source, flags and CPU: a library built with -march=native is only reused on the same kind of CPU."""
    cpu = platform.processor() + platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return hashlib.sha256((source + " ".join(flags) + cpu).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$MEMNET_CACHE``, default ``~/.cache/memnet``."""
    return Path(os.environ.get("MEMNET_CACHE", Path.home() / ".cache" / "memnet"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached(lib: Path, digest: Path) -> bytes | None:
    """The bytes of the cached library `lib` when they match the sha256 stored in `digest` (written
    after the build); None when either file is missing or unreadable, or they do not match (a
    truncated or overwritten library, which loaded as it is could crash the process)."""
    try:
        data, want = lib.read_bytes(), digest.read_text().strip()
    except OSError:
        return None
    return data if _sha256(data) == want else None


def _compile(cc: str, cache: Path, lib: Path, digest: Path, source: str = SOURCE, flags: list[str] = FLAGS,
             stem: str = "topk") -> bytes:
    """Compile `source` in a temporary folder of `cache`, then move the library to `lib` and its sha256
    to `digest`, each by an atomic rename (a concurrent reader finds whole files, and a library
    whose digest is not yet there or no longer matches is built again). Returns the library's bytes."""
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src, out, sha = Path(tmp) / f"{stem}.c", Path(tmp) / f"{stem}.so", Path(tmp) / f"{stem}.sha256"
        src.write_text(source)
        run = subprocess.run([cc, *flags, str(src), "-o", str(out)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{cc} failed: {run.stderr.strip()[:300]}")
        data = out.read_bytes()
        sha.write_text(_sha256(data) + "\n")
        os.replace(out, lib)
        os.replace(sha, digest)
    return data


def _load(data: bytes, cache: Path, stem: str = "topk") -> ctypes.CDLL:
    """Load the library from a private copy of `data` (bytes already checked): an anonymous in-memory
    file where the system has them, else a temporary file of `cache` removed once loaded. What is
    mapped is then never the cached file, so a later change to the cache cannot reach this process."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create(f"memnet-{stem}")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            dll = ctypes.CDLL(f"/proc/self/fd/{fd}")
        except BaseException:
            os.close(fd)
            raise
        # the descriptor stays open: the loader knows a library by its path, and a closed descriptor's
        # number (so the path) is reused by the next library loaded here, which it would take for this one
        _open_fds.append(fd)
        return dll
    fd, path = tempfile.mkstemp(dir=cache, prefix=".load-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return ctypes.CDLL(path)
    finally:
        os.unlink(path)


def build_library(stem: str, source: str, flags: list[str] = FLAGS) -> ctypes.CDLL:
    """The C library `stem` compiled from `source` with `flags`: the cached one when its sha256 matches
    the stored one, else built again (and cached); loaded from a private copy of the checked bytes.
    Raises RuntimeError when there is no C compiler or it fails."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"{stem}_{_fingerprint(source, flags)}.so"
    digest = lib.with_name(lib.name + ".sha256")
    data = _cached(lib, digest)
    if data is not None:
        try:
            return _load(data, cache, stem)
        except OSError:  # whole and as stored, yet not a library this system loads: build it again
            pass
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    return _load(_compile(cc, cache, lib, digest, source, flags, stem), cache, stem)


def _build() -> ctypes.CDLL:
    """The top-k kernel (:func:`build_library` of SOURCE), its functions' signatures declared."""
    dll = build_library("topk", SOURCE)
    f = dll.memnet_topk_rows
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    f.argtypes = [p, i64, i64, i64, p, i64, p, i64, p, p]
    f.restype = ctypes.c_int
    g = dll.memnet_select_rows
    g.argtypes = [p, i64, i64, i64, i64, p]
    g.restype = ctypes.c_int
    return dll


class LazyLibrary:
    """A compiled library built on its first use by `build` (a function returning the loaded library,
    its functions' signatures declared), or None: when one of the environment variables `switches`
    is "0", or when the build fails (a RuntimeWarning says why, once, and :meth:`status` keeps it).
    `what` names it in the warning; `fallback` says what answers instead."""

    def __init__(self, what: str, build: Callable[[], ctypes.CDLL], switches: tuple[str, ...], fallback: str):
        self.what, self.build, self.switches, self.fallback = what, build, switches, fallback
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._error: str | None = None
        self._lock = threading.Lock()

    def disabled_by(self) -> str | None:
        return next((v for v in self.switches if os.environ.get(v, "1") == "0"), None)

    def get(self) -> ctypes.CDLL | None:
        if self.disabled_by() is not None:
            return None
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    self._lib = self.build()
                except Exception as e:  # no compiler, read-only home, ...: the torch path is always there
                    self._error = f"{type(e).__name__}: {e}"
                    warnings.warn(f"{self.what} is unavailable ({self._error}); {self.fallback}", RuntimeWarning,
                                  stacklevel=3)
        return self._lib

    def status(self) -> str:
        """'native' when the library is in use, else why not."""
        var = self.disabled_by()
        if var is not None:
            return f"disabled ({var}=0)"
        return "native" if self.get() is not None else f"unavailable ({self._error})"


_topk = LazyLibrary("memnet.native: the compiled top-k kernel", _build, ("MEMNET_NATIVE",),
                    "the torch path computes the same selections")


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first call; None when disabled or when it cannot be built
    (:func:`status` says why)."""
    return _topk.get()


def status() -> str:
    """'native' when the kernel is in use, else why not."""
    return _topk.status()


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool._max_workers < n or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="memnet-topk")
            _pool_pid = os.getpid()
        return _pool


def _in_parts(part, parts: int) -> list[int]:
    """``part(i)`` for i in range(parts): inline for one part, else on the thread pool; their flags."""
    return [part(0)] if parts == 1 else list(_executor(parts).map(part, range(parts)))


def topk_rows(q: Tensor, keys: Tensor, k: int, scale: Tensor | None = None,
              threads: int | None = None) -> tuple[Tensor, Tensor] | None:
    """Exact top-k of ``q @ keys.T`` (times `scale` per row): q (Q, D), keys (N, D), scale (N,)
    -> values (Q, k) float32 and row indices (Q, k) int64, descending with ties to the lowest row.
    None when the kernel cannot answer (see the module's docstring); the caller then computes it."""
    if k < 1 or keys.shape[0] < k or q.dim() != 2 or keys.dim() != 2 or q.shape[1] != keys.shape[1]:
        return None
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (q, keys)):
        return None
    if scale is not None and (scale.device.type != "cpu" or scale.dtype != torch.float32
                              or scale.shape != (keys.shape[0],)):
        return None
    lib = library()
    if lib is None:
        return None
    q, keys = q.detach().contiguous(), keys.detach().contiguous()
    scale = None if scale is None else scale.detach().contiguous()
    N, D = keys.shape
    Q = q.shape[0]
    parts = max(1, min(threads or torch.get_num_threads(), N // max(k, 4096)))
    bounds = [N * i // parts for i in range(parts + 1)]
    vals = torch.full((parts, Q, k), float("-inf"))
    idx = torch.full((parts, Q, k), -1, dtype=torch.int64)
    sp = scale.data_ptr() if scale is not None else None

    def part(i: int) -> int:
        return lib.memnet_topk_rows(keys.data_ptr(), D, bounds[i], bounds[i + 1], q.data_ptr(), Q, sp, k,
                                    vals[i].data_ptr(), idx[i].data_ptr())

    flags = _in_parts(part, parts)
    if any(flags) or bool((idx < 0).any()):  # NaN scores, or a range with fewer than k rows
        return None
    return _merge(vals, idx, k)


def _merge(vals: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top k (Q, k) of per-range candidates vals, idx (parts, Q, k), ranges in row order: laid
    side by side in that order, a stable top-k of them keeps ties at the lowest row (what
    :func:`memnet.addressing.merge_candidates` computes; the candidates hold no NaN)."""
    if vals.shape[0] == 1:
        return vals[0], idx[0]
    cand, rows = torch.cat(list(vals.unbind(0)), -1), torch.cat(list(idx.unbind(0)), -1)  # (Q, parts * k)
    pos = select_rows(cand, k)
    if pos is None:  # k above SELECT_MAX_K: the stable sort
        pos = cand.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return cand.gather(-1, pos), rows.gather(-1, pos)


SELECT_PART = 1 << 16  # scores per thread, at least, before select_rows splits the rows over threads
SELECT_MAX_K = 1024  # select_rows keeps each row's list on the C stack: larger k take the torch path


def select_rows(scores: Tensor, k: int, threads: int | None = None) -> Tensor | None:
    """Indices (..., k) int64 of the k largest entries of each row of `scores` (..., N): descending,
    ties to the lowest index, the first k of a stable descending sort. No autograd (gather the
    values from `scores` for that). None when the kernel cannot answer: not CPU float32, k outside
    [1, min(N, SELECT_MAX_K)], NaN scores, or no kernel; the caller then computes it."""
    if scores.dim() < 1 or scores.device.type != "cpu" or scores.dtype != torch.float32:
        return None
    N = scores.shape[-1]
    if k < 1 or k > N or k > SELECT_MAX_K:
        return None
    lib = library()
    if lib is None:
        return None
    s = scores.detach().contiguous()
    R = s.numel() // N  # rows (N >= k >= 1)
    idx = torch.empty(*scores.shape[:-1], k, dtype=torch.int64)
    parts = max(1, min(threads or torch.get_num_threads(), R, s.numel() // SELECT_PART))
    bounds = [R * i // parts for i in range(parts + 1)]

    def part(i: int) -> int:
        return lib.memnet_select_rows(s.data_ptr(), N, bounds[i], bounds[i + 1], k, idx.data_ptr())

    flags = _in_parts(part, parts)
    return None if any(flags) else idx
