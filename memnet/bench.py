"""``python -m memnet.bench --profile laptop``: the cost-of-memory benchmark
(:mod:`memnet.experiments.bench`), writing data/bench/<profile>/results.json with provenance."""
from __future__ import annotations

from .experiments.bench import PROFILES, main, run, summary_table

__all__ = ["PROFILES", "main", "run", "summary_table"]

if __name__ == "__main__":
    main()
