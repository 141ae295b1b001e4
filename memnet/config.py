"""`MemNetConfig`: every hyperparameter of the model in one validated dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DECAY_MODES = ("learned", "fixed", "none")  # MemNetConfig.decay_mode: how slots forget (see MultiHeadMemoryBank.retention)
ALLOCATION_MODES = ("lru", "faded")  # MemNetConfig.allocation: which slot a new write takes (MultiHeadMemoryBank.allocate)


@dataclass
class MemNetConfig:
    """Configuration shared by :class:`memnet.MemNet` and the baselines.

    Only ``vocab_size`` is required. Every value is checked in ``__post_init__``;
    a bad value raises ``ValueError``/``TypeError`` naming the field.
    """

    vocab_size: int
    d_model: int = 64
    num_slots: int = 64
    top_k: int = 4
    mem_heads: int = 4
    segment_len: int = 32
    # controller
    n_layers: int = 2
    n_heads: int = 4  # attention heads inside the controller
    mlp_ratio: int = 4
    dropout: float = 0.0
    # memory
    slot_dim: int | None = None  # defaults to d_model
    bottleneck_dim: int | None = None  # defaults to d_model // 2
    writes_per_segment: int | None = None  # None: every token proposes a gated write; else the top-W tokens by gate
    # None: the learned write gate decides what is written. (lo, hi): a fixed write schedule that ablates
    # the gate: exactly the tokens with ids in [lo, hi) write (the top-W of them by write score), at gate 1,
    # each into the slot allocation gives it (update 0), so only decay and allocation decide what is kept
    write_tokens: tuple[int, int] | None = None
    # a write's key is read from the controller's state this many tokens earlier in the window (0: the
    # written token's own state; the first tokens of a window then write a zero key, found by no read)
    write_key_shift: int = 1
    # a read also sees the writes of earlier tokens of its own window, before they are stored in slots
    window_reads: bool = True
    write_threshold: float = 0.5  # write strength that counts as a write event (resets age)
    usage_decay: float = 0.9  # per-segment decay of the usage trace
    decay_init: float = 5.0  # initial logit of the slot-wise retention gate (sigmoid(5) ~ 0.993)
    decay_mode: str = "learned"  # "learned": slot-wise logit + content direction; "fixed": sigmoid(decay_init); "none": 1
    allocation: str = "lru"  # "lru": stalest by age and usage; "faded": staleness divided by the retained fraction
    sharpness_init: float = 10.0  # initial inverse temperature of the top-k softmax
    # a slot addresses (is read, or updated by content) at its full cosine when its key is at least this
    # long, and in proportion to its length below: written keys have unit direction times the write's
    # weight, so a weak or faded write is found less; eps gives plain cosine addressing
    full_key_norm: float = 1.0
    # learned codes that tell the controller which window of a stream it is in: windows 0 .. n-2 each
    # have their own, every later window shares the last (0: none). The memory counts the windows it has seen.
    segment_codes: int = 4
    # auxiliary loss weights (0 disables a loss)
    util_weight: float = 0.01
    pressure_weight: float = 0.0
    read_entropy_weight: float = 0.0
    write_weight: float = 0.05  # cost of writing: the mean write gate (reads keep the useful writes strong)
    eps: float = 1e-6
    tbptt_segments: int | None = None  # truncated backprop: detach the memory every k segments (None: never)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for experiments' bookkeeping

    def __post_init__(self) -> None:
        ints = ["vocab_size", "d_model", "num_slots", "top_k", "mem_heads", "segment_len",
                "n_layers", "n_heads", "mlp_ratio"]
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"MemNetConfig.{name} must be an int, got {type(v).__name__} ({v!r})")
            if v < 1:
                raise ValueError(f"MemNetConfig.{name} must be >= 1, got {v}")
        if isinstance(self.write_key_shift, bool) or not isinstance(self.write_key_shift, int) or self.write_key_shift < 0:
            raise ValueError(f"MemNetConfig.write_key_shift must be an int >= 0, got {self.write_key_shift!r}")
        if not isinstance(self.window_reads, bool):
            raise TypeError(f"MemNetConfig.window_reads must be a bool, got {type(self.window_reads).__name__}")
        if isinstance(self.segment_codes, bool) or not isinstance(self.segment_codes, int) or self.segment_codes < 0:
            raise ValueError(f"MemNetConfig.segment_codes must be an int >= 0, got {self.segment_codes!r}")
        for name in ["slot_dim", "bottleneck_dim", "writes_per_segment", "tbptt_segments"]:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"MemNetConfig.{name} must be None or an int >= 1, got {v!r}")
        if self.slot_dim is None:
            self.slot_dim = self.d_model
        if self.bottleneck_dim is None:
            self.bottleneck_dim = max(1, self.d_model // 2)
        if self.write_tokens is not None:
            wt = self.write_tokens
            if (not isinstance(wt, (tuple, list)) or len(wt) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in wt)
                    or not 0 <= wt[0] < wt[1] <= self.vocab_size):
                raise ValueError(f"MemNetConfig.write_tokens must be None or a pair of ints (lo, hi) with "
                                 f"0 <= lo < hi <= vocab_size ({self.vocab_size}), got {wt!r}")
            self.write_tokens = (wt[0], wt[1])
        if self.top_k > self.num_slots:
            raise ValueError(f"MemNetConfig.top_k ({self.top_k}) must be <= num_slots ({self.num_slots})")
        if self.writes > self.num_slots:
            what = "writes_per_segment" if self.writes_per_segment is not None else "segment_len (every token writes)"
            raise ValueError(f"MemNetConfig.{what} ({self.writes}) must be <= num_slots ({self.num_slots}): "
                             "each write of a segment needs its own slot to allocate")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"MemNetConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        floats = {"dropout": (0.0, 1.0), "write_threshold": (0.0, 1.0), "usage_decay": (0.0, 1.0)}
        for name, (lo, hi) in floats.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"MemNetConfig.{name} must be a float, got {type(v).__name__}")
            if not (lo <= v <= hi) or (name == "dropout" and v == 1.0):
                raise ValueError(f"MemNetConfig.{name} must be in [{lo}, {hi}{')' if name == 'dropout' else ']'}, got {v}")
        for name in ["decay_init", "sharpness_init", "full_key_norm", "write_weight", "util_weight", "pressure_weight", "read_entropy_weight", "eps"]:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"MemNetConfig.{name} must be a float, got {type(v).__name__}")
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"MemNetConfig.{name} must be finite, got {v}")
        for name in ["util_weight", "pressure_weight", "read_entropy_weight", "write_weight"]:
            if getattr(self, name) < 0:
                raise ValueError(f"MemNetConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.decay_mode, str) or self.decay_mode not in DECAY_MODES:
            raise ValueError(f"MemNetConfig.decay_mode must be one of {DECAY_MODES}, got {self.decay_mode!r}")
        if not isinstance(self.allocation, str) or self.allocation not in ALLOCATION_MODES:
            raise ValueError(f"MemNetConfig.allocation must be one of {ALLOCATION_MODES}, got {self.allocation!r}")
        if self.sharpness_init <= 0:
            raise ValueError(f"MemNetConfig.sharpness_init must be > 0, got {self.sharpness_init}")
        if self.full_key_norm <= 0:
            raise ValueError(f"MemNetConfig.full_key_norm must be > 0, got {self.full_key_norm}")
        if self.eps <= 0:
            raise ValueError(f"MemNetConfig.eps must be > 0, got {self.eps}")

    @property
    def writes(self) -> int:
        """Writes issued per segment: ``writes_per_segment`` or, when None, ``segment_len``."""
        return self.segment_len if self.writes_per_segment is None else min(self.writes_per_segment, self.segment_len)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"MemNetConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**d)
