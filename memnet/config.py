"""`MemNetConfig`: every hyperparameter of the model in one validated dataclass."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100  # the target of a position that is not scored (cross-entropy's ignore_index)

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: every float field must fit in one
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: the floor of the positive float fields
NORM_FLOOR_MIN = 1e-12  # eps and full_key_norm floor a norm; the gradient of x / max(|x|, floor) is 1 / floor,
# which in float32 overflows on its way back for floors near float32's smallest (1e-12 is F.normalize's default)
LOSS_WEIGHT_MAX = 1e6  # loss weights above this make a weighted loss or its gradients overflow no sooner than useless
# the fields that decide what a MemoryState's tensors mean (its layout, how it is written, aged and
# read, and what its window count addresses): a state is only accepted by a model whose config has
# the same values (MemNetConfig.memory_signature, MultiHeadMemoryBank.check_state)
MEMORY_FIELDS = ("num_slots", "slot_dim", "mem_heads", "top_k", "segment_len", "writes_per_segment", "write_tokens",
                 "write_key_shift", "window_reads", "write_threshold", "usage_decay", "decay_mode", "decay_init",
                 "allocation", "full_key_norm", "eps", "segment_codes")
DECAY_MODES = ("learned", "fixed", "none", "evidence")  # MemNetConfig.decay_mode: how slots forget (see MultiHeadMemoryBank.retention)
ALLOCATION_MODES = ("lru", "faded", "weakest")  # MemNetConfig.allocation: which slot a new write takes (MultiHeadMemoryBank.allocate)


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
    # "learned": slot-wise logit + content direction; "fixed": sigmoid(decay_init); "none": 1; "evidence": as
    # "learned", plus learned weights on what reads revealed of the slot since its last write and on its age
    decay_mode: str = "learned"
    # which slot a write takes: "lru" the stalest by age and usage; "faded" staleness divided by the retained
    # fraction; "weakest" the slot holding its content most weakly (event strength times retention since)
    allocation: str = "lru"
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
    # the mean write gate that costs nothing: only the gate above it is charged, so a memory not yet of
    # use is not pushed to write nothing at all (0: every write is charged)
    write_budget: float = 0.0
    eps: float = 1e-6
    tbptt_segments: int | None = None  # truncated backprop: detach the memory every k segments (None: never)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for experiments' bookkeeping

    def __post_init__(self) -> None:
        ints = ["vocab_size", "d_model", "num_slots", "top_k", "mem_heads", "segment_len",
                "n_layers", "n_heads", "mlp_ratio"]
        for name in ints:
            self._check_int(name, 1)
        for name in ("write_key_shift", "segment_codes"):
            self._check_int(name, 0)
        if not isinstance(self.window_reads, bool):
            raise TypeError(f"MemNetConfig.window_reads must be a bool, got {type(self.window_reads).__name__}")
        for name in ["slot_dim", "bottleneck_dim", "writes_per_segment", "tbptt_segments"]:
            if getattr(self, name) is not None:
                self._check_int(name, 1, optional=True)
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
        # every float field: a real number (not a bool or a string), finite and within float32, in its range
        unit = ((0.0, 1.0), "in [0, 1]")
        positive = ((FLOAT32_TINY, FLOAT32_MAX), f"> 0: in [{FLOAT32_TINY:g}, {FLOAT32_MAX:g}] (a normal float32)")
        floor = ((NORM_FLOOR_MIN, FLOAT32_MAX), f"> 0: in [{NORM_FLOOR_MIN:g}, {FLOAT32_MAX:g}] (a norm floor: "
                                                f"below {NORM_FLOOR_MIN:g} its gradients overflow float32)")
        weight = ((0.0, LOSS_WEIGHT_MAX), f">= 0 and <= {LOSS_WEIGHT_MAX:g}")
        floats = {"dropout": ((0.0, 1.0), "in [0, 1)"), "write_threshold": unit, "usage_decay": unit,
                  "decay_init": ((-FLOAT32_MAX, FLOAT32_MAX), f"in [-{FLOAT32_MAX:g}, {FLOAT32_MAX:g}] (float32)"),
                  "sharpness_init": positive, "full_key_norm": floor, "eps": floor, "util_weight": weight,
                  "pressure_weight": weight, "read_entropy_weight": weight, "write_weight": weight,
                  "write_budget": unit}
        for name, ((lo, hi), allowed) in floats.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"MemNetConfig.{name} must be a float {allowed}, got {type(v).__name__} ({v!r})")
            if not math.isfinite(v):
                raise ValueError(f"MemNetConfig.{name} must be finite and {allowed}, got {v}")
            if not (lo <= v <= hi) or (name == "dropout" and v == 1.0):
                raise ValueError(f"MemNetConfig.{name} must be {allowed}, got {v:g}")
        if not isinstance(self.decay_mode, str) or self.decay_mode not in DECAY_MODES:
            raise ValueError(f"MemNetConfig.decay_mode must be one of {DECAY_MODES}, got {self.decay_mode!r}")
        if not isinstance(self.allocation, str) or self.allocation not in ALLOCATION_MODES:
            raise ValueError(f"MemNetConfig.allocation must be one of {ALLOCATION_MODES}, got {self.allocation!r}")

    def _check_int(self, name: str, lo: int, optional: bool = False) -> None:
        """Raise TypeError unless field `name` is an int (not a bool), ValueError unless it is >= `lo`."""
        v = getattr(self, name)
        alt = " (or None)" if optional else ""
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"MemNetConfig.{name} must be an int >= {lo}{alt}, got {type(v).__name__} ({v!r})")
        if v < lo:
            raise ValueError(f"MemNetConfig.{name} must be >= {lo}{alt}, got {v}")

    def memory_signature(self) -> tuple[tuple[str, Any], ...]:
        """The values of the fields a memory state depends on (``MEMORY_FIELDS``) as ``(name, value)``
        pairs: what a :class:`memnet.MemoryState` records of the config it was made for."""
        return tuple((name, getattr(self, name)) for name in MEMORY_FIELDS)

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
