#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install requirements.txt.
# Sourced by the other scripts; prints nothing when everything is already installed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DS2_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment $venv"
    python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # kenlm (beam search with an LM) has no wheels: pip compiles it, which needs a C++ compiler.
    if ! command -v g++ >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing g++ (needed to compile kenlm)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
        else
            echo "warning: no g++: installing kenlm will fail (Debian: sudo apt-get install g++)" >&2
        fi
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$repo/requirements.txt"
    echo "$want" > "$stamp"
fi
PYTHON="$venv/bin/python"
export PYTHON
