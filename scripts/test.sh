#!/usr/bin/env bash
# Set up the environment and run the whole test suite (slow tests included): what CI runs.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
exec "$PYTHON" -m pytest "$@"
