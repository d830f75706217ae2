#!/usr/bin/env bash
# Run lint and the whole test suite (slow tests included), as CI does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh" "$ROOT/requirements-test.txt"
cd "$ROOT"
ruff check .
ruff format --check .
export HF_HUB_OFFLINE=1
exec python -m pytest "$@"
