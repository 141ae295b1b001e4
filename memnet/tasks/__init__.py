"""Seeded synthetic tasks for the book's experiments."""
from .forgetting import ITEM_TYPES, ForgettingBatch, ForgettingStream
from .digits import SplitDigits
from .mqar import MQAR
from .recall import KeyValueRecall, RecallBatch
from .reuse import REUSE_TYPES, ReuseBatch, ReuseStream
from .shift import ShiftingPrototypes
from .stream import TaskStream

__all__ = ["ITEM_TYPES", "ForgettingBatch", "ForgettingStream", "KeyValueRecall", "MQAR", "RecallBatch", "REUSE_TYPES", "ReuseBatch",
           "ReuseStream", "ShiftingPrototypes",
           "SplitDigits", "TaskStream"]
