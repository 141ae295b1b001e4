#!/usr/bin/env bash
# Run every test (the README's test command). Uses the active Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q tests "$@"
