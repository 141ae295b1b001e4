#!/usr/bin/env bash
# Run every test (the README's test command): unit tests, chapter checks (jupytext pairs,
# papermill at smoke, nbval) and the book build with the headless-browser check.
# Sources scripts/env.sh first (uses the active virtualenv, else .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/env.sh
python -m pytest -q tests "$@"
