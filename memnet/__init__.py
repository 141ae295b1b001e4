"""memnet: explicit long-term slot memory for neural networks."""
from .config import MemNetConfig
from .memory import MemoryState, MultiHeadMemoryBank
from .model import MemNet, MemNetOutput
from .trace import MemoryTrace

__all__ = ["MemNet", "MemNetConfig", "MemNetOutput", "MemoryState", "MemoryTrace", "MultiHeadMemoryBank"]
__version__ = "0.1.0"
