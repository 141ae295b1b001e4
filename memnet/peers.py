"""Published memory models behind the baselines' interface (the optional extra ``memnet[peers]``).

Each peer is an ``nn.Module`` built from a :class:`MemNetConfig` whose ``forward(tokens (B, T))``
returns a :class:`memnet.baselines.BaselineOutput` with causal logits (B, T, vocab_size), for any
T >= 1. Its width is chosen so that ``count_params`` lies within 15% of MemNet's for the same
config; ``state_bytes()`` is what it carries per sequence from one step or segment to the next
(float32), to set beside :func:`memnet_state_bytes`.

Every peer reads its tokens through :class:`memnet.encoder.ShiftedEmbedding` in place of its own
token embedding: the embedding and token shift that MemNet and its baselines read through their
:class:`~memnet.encoder.Encoder` (each position also gets a linear map of its predecessor), so that
the comparison is between memories, not input encodings. A peer keeps its own positions. Without
the shift a model must first learn a previous-token attention head before it can bind a key to its
value; on the associative-recall task of experiment 1 (P = 2 pairs, lr 3e-3, validation draws)
Titans' MAC stayed on the loss plateau for all of 1,000 steps without it, left it near step 300
with it, and the windowed Transformer (which has it) near step 150.

- :class:`DNCPeer`: Differentiable Neural Computer (Graves et al. 2016), PyPI ``dnc`` 1.1.0.
- :class:`RMTPeer`: Recurrent Memory Transformer (Bulatov et al. 2022),
  PyPI ``recurrent-memory-transformer-pytorch`` 0.7.0.
- :class:`TitansPeer`: Titans, memory as context (Behrouz et al. 2024), PyPI ``titans-pytorch`` 0.5.5.

The packages are imported only when a peer is built, so this module imports without them;
:func:`available` says which import.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from .baselines import BaselineOutput, count_params, memnet_budget
from .config import MemNetConfig
from .encoder import ShiftedEmbedding, check_tokens
from .memory import MultiHeadMemoryBank

# peer name -> (module to import, pinned PyPI requirement)
_PACKAGES = {
    "dnc": ("dnc", "dnc==1.1.0"),
    "rmt": ("recurrent_memory_transformer_pytorch", "recurrent-memory-transformer-pytorch==0.7.0"),
    "titans": ("titans_pytorch", "titans-pytorch==0.5.5"),
}
_FLOAT_BYTES = 4  # every state counted in float32
# Raised whenever an adapter changes what a peer computes, so that runs cached under an older
# adapter are not reused (experiments record it with each peer run). 2: ShiftedEmbedding inputs.
ADAPTER_REVISION = 2


def _import(peer: str) -> ModuleType:
    module, pin = _PACKAGES[peer]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {peer!r} peer needs the PyPI package {pin!r}: pip install '{pin}' "
                          f"(or the extra: pip install 'memnet[peers]'); import failed with: {e}") from e


def available() -> dict[str, str]:
    """Peer name -> "" when its package imports, else the import error's text."""
    out = {}
    for name, (module, _) in _PACKAGES.items():
        try:
            importlib.import_module(module)
            out[name] = ""
        except Exception as e:  # a broken install can fail with more than ImportError
            out[name] = f"{type(e).__name__}: {e}"
    return out


def memnet_state_bytes(cfg: MemNetConfig) -> int:
    """Bytes of MemNet's ``MemoryState`` for one sequence: keys and values (N, D), age, usage and
    retained (N,), segments (1,)."""
    return MultiHeadMemoryBank(cfg).initial_state(1).nbytes()


def _match_width(count: Callable[[int], int], target: int, hi: int) -> int:
    """The width w in [1, hi] whose parameter count ``count(w)`` is nearest ``target``.

    Every peer's count is a polynomial of degree <= 2 in its width, so three small builds fit it.
    """
    c1, c2, c3 = count(1), count(2), count(3)
    a = (c3 - 2 * c2 + c1) / 2
    b = c2 - c1 - 3 * a
    c = c1 - a - b
    return min(range(1, hi + 1), key=lambda w: abs(a * w * w + b * w + c - target))


def _ff_mult(dim: int, inner: int) -> float:
    """The ``ff_mult`` for which both packages' ``FeedForward`` (inner width int(dim * mult * 2 / 3))
    gets exactly ``inner`` units."""
    return (inner + 0.5) * 3 / (2 * dim)


class DNCPeer(nn.Module):
    """Differentiable Neural Computer (Graves et al. 2016, Nature 538:471), ``dnc`` 1.1.0.

    Embedding -> DNC (LSTM controller of ``cfg.n_layers`` layers, memory of ``cfg.num_slots``
    cells of ``cfg.slot_dim``, ``cfg.mem_heads`` read heads) -> linear head. The LSTM's hidden size
    is chosen to match MemNet's parameter count.

    What the adapter changes: the package's multi-step ``forward`` concatenates every input with the
    *initial* read vectors (the reads of step t never reach the controller at t+1, unlike the paper)
    and starts the LSTM from a random (xavier) state on every call. So the adapter steps the DNC one
    token at a time, feeding back each step's reads and starting from zeros: the paper's recurrence,
    deterministic. The package keeps its link-matrix mask ``Memory.I`` as a plain attribute that
    ``.to(device)`` does not move; the adapter makes it a buffer. Tokens enter through
    :class:`ShiftedEmbedding` along the whole sequence (the DNC is recurrent over all of it).

    SAM / sparse DNC (``dnc.SAM``, ``dnc.SDNC``) is not adapted: it has no CPU path here. Its index
    tries ``faiss`` first: not installed, ``ModuleNotFoundError: No module named 'faiss'``; with
    ``faiss-cpu`` 1.15.1, ``ImportError: cannot import name 'cast_integer_to_long_ptr' from 'faiss'``,
    and past that it calls ``faiss.StandardGpuResources()``, which faiss-cpu lacks. Its FLANN fallback
    fails with ``ImportError: Cannot load dynamic library. Did you compile FLANN?`` (the PyPI
    ``flann`` 1.6.13 wheel ships no libflann).
    """

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        dnc = _import("dnc")
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.d_model

        def build(hidden: int) -> nn.Module:
            return dnc.DNC(D, hidden, rnn_type="lstm", num_layers=1, num_hidden_layers=cfg.n_layers,
                           dropout=cfg.dropout if cfg.n_layers > 1 else 0.0, nr_cells=cfg.num_slots,
                           cell_size=cfg.slot_dim, read_heads=cfg.mem_heads, batch_first=True, gpu_id=-1)

        self.embed = ShiftedEmbedding(V, D)
        target = memnet_budget(cfg)
        ends = count_params(self.embed) + D * V + V  # embedding and head
        self.hidden = _match_width(lambda h: count_params(build(h)) + ends, target, target // D + 4)
        self.dnc = build(self.hidden)
        self.head = nn.Linear(D, V)
        mem = self.dnc.memories[0]
        eye_mask = mem.I  # (1, N, N): 1 - identity
        del mem.I
        mem.register_buffer("I", eye_mask, persistent=False)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        """All-zero DNC state: ([(h, c)] of (n_layers, B, hidden)), memory dict, reads (B, R*W)."""
        device = device if device is not None else self.head.weight.device
        n, H = self.cfg.n_layers, self.hidden
        controller = [(torch.zeros(n, batch_size, H, device=device), torch.zeros(n, batch_size, H, device=device))]
        # memory (B, N, W), link_matrix (B, 1, N, N), precedence (B, 1, N), read_weights (B, R, N),
        # write_weights (B, 1, N), usage_vector (B, N)
        memory = {k: v.to(device) for k, v in self.dnc.memories[0].reset(batch_size).items()}
        reads = torch.zeros(batch_size, self.cfg.mem_heads * self.cfg.slot_dim, device=device)
        return controller, memory, reads

    def state_bytes(self) -> int:
        """LSTM state + memory, link matrix, precedence, usage, read and write weights + read vectors."""
        controller, memory, reads = self.initial_state(1, "cpu")
        tensors = [*controller[0], *memory.values(), reads]
        return sum(t.numel() for t in tensors) * _FLOAT_BYTES

    def forward(self, tokens: Tensor) -> BaselineOutput:
        tokens = check_tokens(tokens, self.cfg.vocab_size)
        B, T = tokens.shape
        x = self.embed(tokens)  # (B, T, D)
        hx = self.initial_state(B, x.device)
        outs = []
        for t in range(T):
            y, hx = self.dnc(x[:, t:t + 1], hx)  # y (B, 1, D); hx carries the reads of step t to t+1
            outs.append(y)
        return BaselineOutput(self.head(torch.cat(outs, 1)))  # (B, T, V)


class RMTPeer(nn.Module):
    """Recurrent Memory Transformer (Bulatov et al. 2022, NeurIPS), ``recurrent-memory-transformer-pytorch`` 0.7.0.

    The package's ``RecurrentMemoryTransformerWrapper`` runs the sequence in segments of
    ``cfg.segment_len`` (MemNet's window; the last one may be shorter, so any T works): each segment
    is [read memory, tokens, write memory], causal attention over the tokens, the write memory sees
    the whole segment, and its output is the next segment's read memory. ``cfg.n_layers`` layers of
    ``cfg.d_model`` with ``cfg.n_heads`` heads; the feed-forward width matches MemNet's parameter count.

    Memory tokens: ``num_memory_tokens``, by default ``cfg.num_slots``: one memory token per slot of
    MemNet, so that a sweep over MemNet's memory size moves RMT's with it. Its state, M * d_model
    floats, is then half of MemNet's key-value store (a slot holds a key and a value); each segment
    attends over 2 M extra positions (read and write copies).

    What the adapter changes from the package's defaults: ``use_xl_memories=False`` (the wrapper's
    forward computes Transformer-XL caches but never feeds them back; RMT of the paper has none) and
    ``num_residual_streams=1`` (plain residuals instead of the package's hyper-connections, which
    are not part of RMT). Everything else is the package's default (absolute positions within a
    segment, write memories not causally masked, embedding gradient scaled by 0.1), except the
    token embedding: :class:`ShiftedEmbedding`, which the package calls on one segment at a time,
    so the shift stays inside the segment, as it does in MemNet's window.
    """

    def __init__(self, cfg: MemNetConfig, num_memory_tokens: int | None = None):
        super().__init__()
        rmt = _import("rmt")
        self.cfg = cfg
        self.num_memory_tokens = M = num_memory_tokens if num_memory_tokens is not None else cfg.num_slots
        D, H = cfg.d_model, cfg.n_heads

        def build(inner: int) -> nn.Module:
            net = rmt.RecurrentMemoryTransformer(
                D, num_tokens=cfg.vocab_size, depth=cfg.n_layers, num_memory_tokens=M, seq_len=cfg.segment_len,
                causal=True, dim_head=D // H, heads=H, ff_mult=_ff_mult(D, inner), attn_dropout=cfg.dropout,
                ff_dropout=cfg.dropout, use_xl_memories=False, num_residual_streams=1)
            net.token_emb = ShiftedEmbedding(cfg.vocab_size, D)  # called per segment: shift within it
            return net

        target = memnet_budget(cfg)
        self.ff_inner = _match_width(lambda u: count_params(build(u)), target, target // D + 4)
        self.rmt = rmt.RecurrentMemoryTransformerWrapper(build(self.ff_inner))

    def state_bytes(self) -> int:
        """The memory tokens passed from one segment to the next: (M, D) floats."""
        return self.num_memory_tokens * self.cfg.d_model * _FLOAT_BYTES

    def forward(self, tokens: Tensor) -> BaselineOutput:
        tokens = check_tokens(tokens, self.cfg.vocab_size)
        logits, _ = self.rmt(tokens)  # (B, T, V); segments in order, memories carried
        return BaselineOutput(logits)


def _neural_memories(mac: nn.Module) -> list[nn.Module]:
    """The NeuralMemory of each MAC layer that has one (a layer is a ModuleList of
    (mem hyper-conn, attn hyper-conn, ff hyper-conn, qkv selector, NeuralMemory or None, attention, ff))."""
    return [layer[4] for layer in mac.layers if layer[4] is not None]


class TitansPeer(nn.Module):
    """Titans, memory as context (MAC; Behrouz et al. 2024, arXiv:2501.00663), ``titans-pytorch`` 0.5.5.

    ``MemoryAsContextTransformer`` with ``segment_len = cfg.segment_len``, ``cfg.n_layers`` layers of
    ``cfg.d_model`` with ``cfg.n_heads`` heads, 4 persistent memory tokens and 4 long-term memory
    tokens per segment, and in every layer a neural memory: a small deep memory, the package's
    ``MemoryMLP`` of depth 2 and width d_model (expansion 1), one head, trained at test time on each
    segment (chunk = segment + long-term tokens) with momentum and weight decay. The feed-forward
    width matches MemNet's parameter count.

    What the adapter changes from the package's defaults: ``neural_memory_batch_size`` = one segment,
    so the memory's weights are updated at every segment boundary and each segment's surprise is
    taken at the weights the previous segments left (the paper's chunk-wise training; the default
    takes every surprise at the initial weights); ``num_residual_streams=1`` (plain residuals, no
    hyper-connections); the memory MLP is expansion 1 instead of 4 (a small memory). Attention stays
    block-diagonal per segment (``sliding_window_attn=False``), MemNet's window, so only the neural
    memory carries information across segments; the long-term tokens end each segment and are
    stored in the neural memory, never carried as tokens. CPU: flex attention (CUDA only) and the
    accelerated (triton) scan are off, as they are by default. The package keeps a copy of the
    memory MLP's weights that ``forward`` never uses (it calls the MLP with the per-head copies);
    the adapter freezes that copy so that ``count_params`` counts only parameters that learn.
    ``cfg.dropout`` is not used: the package's MAC has no dropout. Tokens enter through
    :class:`ShiftedEmbedding` (the package's ``token_emb`` argument), the shift stopping at every
    segment boundary as in MemNet's window.

    Step size of the neural memory (``default_step_transform_max_lr=0.1``; ``memory_max_lr``). With
    the package's default 1.0 the logits were NaN on every sequence longer than ~10 segments (at
    d_model 64, segment_len 32: from about T = 384 on), untrained. The cause is
    the memory's test-time gradient descent, not the chunking: the sizes line up (store chunk =
    ``neural_memory_batch_size`` = attention window = segment + 4 long-term tokens; the tail of a
    last, incomplete chunk is kept, not stored) and no chunk is empty. Each chunk's update is
    ``-sum_i lr_i * grad loss_i`` summed (not averaged) over its 36 tokens, with
    ``lr_i = max_lr * sigmoid(.)``, about 0.5 at init, so the step is ~18 times the mean gradient.
    Because every chunk's gradient is taken at the weights the previous chunk left (the
    chunk-by-chunk updating this adapter wants), that step is past the stable range of gradient
    descent: the memory MLP's weights grew up to ~20 times per segment (norm ~20 after one segment,
    ~1e11 after ten) until float32 overflowed; the retrievals of all later segments, and through
    them the logits, were NaN. With ``neural_memory_batch_size`` unset (the package's default)
    the sequence stays finite, but only because every surprise is then taken at the initial
    weights, which is not the chunk-wise memory meant here. So the adapter keeps the chunk-wise
    updates and caps the per-token step at 0.1 (the value of the package's own ``train_mac.py``):
    the effective step is ~1.8 times the mean gradient at init, at most 3.6. Checked at
    d_model 64 / segment_len 32 and the test configs: finite to T = 8352 for several seeds, with
    the weight norms staying O(1); and still finite to T = 8352 with the lr and momentum gates
    forced to 1 and the decay gate to 0 (the weights then grow polynomially, norm ~1e3 at the
    end, not geometrically). For comparison at init, a cap of 0.3 diverged near T = 7,900 and
    0.5 near T = 550-870, so 0.1 leaves a factor ~3. That is a margin, not a proof: training
    that makes the keys much larger raises the curvature; if NaN reappears, lower the cap.
    What the memory does is otherwise unchanged (same gates, momentum, decay, update schedule);
    only the learning-rate gate's range is (0, 0.1) instead of (0, 1).
    """

    def __init__(self, cfg: MemNetConfig):
        super().__init__()
        titans = _import("titans")
        self.cfg = cfg
        D, H = cfg.d_model, cfg.n_heads
        self.num_longterm, self.num_persist = 4, 4
        self.memory_max_lr = 0.1  # cap on the neural memory's per-token step size (package default 1.0: diverges)
        chunk = cfg.segment_len + self.num_longterm

        def build(inner: int) -> nn.Module:
            mac = titans.MemoryAsContextTransformer(
                num_tokens=cfg.vocab_size, dim=D, depth=cfg.n_layers, segment_len=cfg.segment_len,
                num_longterm_mem_tokens=self.num_longterm, num_persist_mem_tokens=self.num_persist,
                neural_memory_batch_size=chunk, dim_head=D // H, heads=H, ff_mult=_ff_mult(D, inner),
                num_residual_streams=1, neural_memory_model=titans.MemoryMLP(D, depth=2, expansion_factor=1.0),
                neural_memory_kwargs=dict(default_step_transform_max_lr=self.memory_max_lr),
                use_flex_attn=False, sliding_window_attn=False,
                token_emb=ShiftedEmbedding(cfg.vocab_size, D, cfg.segment_len))
            for mem in _neural_memories(mac):
                mem.memory_model.requires_grad_(False)
            return mac

        target = memnet_budget(cfg)
        self.ff_inner = _match_width(lambda u: count_params(build(u)), target, target // D + 4)
        self.mac = build(self.ff_inner)

    def state_bytes(self) -> int:
        """Per layer with a neural memory: the memory MLP's current weights and their momentum."""
        total = 0
        for mem in _neural_memories(self.mac):
            weights = sum(p.numel() for p in mem.memory_model_parameters)  # (heads, ...) each
            total += (1 + mem.momentum_order) * weights
        return total * _FLOAT_BYTES

    def forward(self, tokens: Tensor) -> BaselineOutput:
        tokens = check_tokens(tokens, self.cfg.vocab_size)
        return BaselineOutput(self.mac(tokens))  # (B, T, V); pads to segments and cuts itself


PEERS: dict[str, type[nn.Module]] = {"dnc": DNCPeer, "rmt": RMTPeer, "titans": TitansPeer}
