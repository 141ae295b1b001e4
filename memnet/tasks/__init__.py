"""Seeded synthetic tasks for the book's experiments."""
from .recall import KeyValueRecall, RecallBatch

__all__ = ["KeyValueRecall", "RecallBatch"]
