"""Shared test setup: one CPU thread, fixed seeds, deterministic hypothesis profiles, a per-test timeout."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)  # 2 shared CPU cores: more threads only add contention for tiny models

settings.register_profile(
    "memnet",  # default: the same examples on every run, so CI never flakes on a new draw
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# HYPOTHESIS_PROFILE=thorough: fresh random examples and more of them (slower; for local bug hunts)
settings.register_profile("thorough", parent=settings.get_profile("memnet"), derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "memnet"))


UNIT_TEST_FILES = {"test_config.py", "test_memory.py", "test_model.py", "test_baselines.py", "test_inputs.py",
                   "test_task.py"}


def pytest_collection_modifyitems(items):
    for item in items:  # in the unit tests, a hang fails one test instead of the whole run
        if item.path.name in UNIT_TEST_FILES and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
