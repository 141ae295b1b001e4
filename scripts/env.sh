#!/usr/bin/env bash
# Source me: `source scripts/env.sh`. Prepares and activates the development environment.
#
# - Uses the active virtualenv if there is one (CI's .venv-ci), else creates/activates .venv.
# - Installs requirements-dev.txt (pinned; torch is the CPU build) and memnet itself
#   (`pip install --no-deps -e .`), only when requirements-dev.txt or pyproject.toml changed
#   since the last install (a stamp in the venv), so sourcing it again takes a fraction of a second.
# - On Debian, as root, installs Chromium for the browser test when it is missing.
# - Installs the pages' CDN JavaScript (@jupyter-widgets/html-manager, requirejs, mathjax) from
#   npm into .cache/npm for the browser test, when npm is available and they are missing.
_memnet_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_memnet_env() {
    set -e
    cd "$_memnet_root"
    if [ -z "${VIRTUAL_ENV:-}" ]; then
        if [ ! -x .venv/bin/python ]; then
            python3 -m venv .venv
        fi
        # shellcheck disable=SC1091
        . .venv/bin/activate
    fi
    local stamp="$VIRTUAL_ENV/.memnet-dev-stamp"
    local want
    want="$(cat requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('memnet') is None)" 2>/dev/null; then
        python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
        python -m pip install -q --disable-pip-version-check --no-deps -e .
        echo "$want" > "$stamp"
    fi
    if ! command -v chromium >/dev/null 2>&1 && [ -f /etc/debian_version ] && [ "$(id -u)" = 0 ]; then
        echo "env.sh: installing chromium (apt-get) for the browser test" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    if [ ! -f .cache/npm/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js ] \
        || [ ! -f .cache/npm/node_modules/requirejs/require.js ] \
        || [ ! -f .cache/npm/node_modules/mathjax/es5/tex-mml-chtml.js ]; then
        if command -v npm >/dev/null 2>&1; then
            mkdir -p .cache/npm
            (cd .cache/npm && { [ -f package.json ] || echo '{"name": "memnet-book-js", "private": true}' > package.json; } \
                && npm install -s --no-audit --no-fund "@jupyter-widgets/html-manager@^1.0.15" "requirejs@^2.3.7" "mathjax@^3.2.2" >/dev/null) \
                || echo "env.sh: npm install of the widget JS failed; the browser test will skip the widget check" >&2
        fi
    fi
}
( _memnet_env ) || { echo "env.sh: setup failed" >&2; return 1 2>/dev/null || exit 1; }
if [ -z "${VIRTUAL_ENV:-}" ]; then
    # shellcheck disable=SC1091
    . "$_memnet_root/.venv/bin/activate"
fi
unset -f _memnet_env
