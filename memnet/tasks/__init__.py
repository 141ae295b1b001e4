"""Seeded synthetic tasks for the book's experiments."""
from .forgetting import ITEM_TYPES, ForgettingBatch, ForgettingStream
from .digits import SplitDigits
from .recall import KeyValueRecall, RecallBatch
from .shift import ShiftingPrototypes
from .stream import TaskStream

__all__ = ["ITEM_TYPES", "ForgettingBatch", "ForgettingStream", "KeyValueRecall", "RecallBatch", "ShiftingPrototypes",
           "SplitDigits", "TaskStream"]
