#!/usr/bin/env bash
# Build the book: execute every chapter (at its default parameters) and render _build/html.
# Warnings are errors (-W), but Sphinx keeps going to report all of them (--keep-going).
# Every build re-reads and so re-executes every chapter (--all; a few minutes on 2 cores), so each
# page shows what the code and the stored runs under data/ give now. Sphinx alone re-reads only the
# sources changed since the last build and would keep a page whose stored run changed: for that
# quicker partial build, run `jupyter-book build .` inside the environment.
#   bash scripts/book.sh            # -> _build/html/index.html
#   bash scripts/book.sh --builder linkcheck   # extra arguments go to `jupyter-book build`
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/env.sh
jupyter-book build . --all -W --keep-going "$@"
echo "book: $(pwd)/_build/html/index.html"
