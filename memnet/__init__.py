"""memnet: explicit long-term slot memory for neural networks."""
from .config import MemNetConfig
from .memory import MemoryState, MultiHeadMemoryBank, StreamingMemory
from .model import MemNet, MemNetOutput, truncated_backward
from .trace import MemoryTrace

__all__ = ["MemNet", "MemNetConfig", "MemNetOutput", "MemoryState", "MemoryTrace", "MultiHeadMemoryBank",
           "StreamingMemory", "truncated_backward"]
__version__ = "0.1.0"
