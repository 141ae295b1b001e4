#!/usr/bin/env bash
# Build the book: execute every chapter (at its default parameters) and render _build/html.
# Warnings are errors (-W), but Sphinx keeps going to report all of them (--keep-going).
#   bash scripts/book.sh            # -> _build/html/index.html
#   bash scripts/book.sh --all      # extra arguments go to `jupyter-book build`
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/env.sh
jupyter-book build . -W --keep-going "$@"
echo "book: $(pwd)/_build/html/index.html"
