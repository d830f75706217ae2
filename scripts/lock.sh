#!/usr/bin/env bash
# Rewrite constraints.txt from a fresh venv holding exactly requirements-test.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install --quiet torch==2.13.0
"$TMP/venv/bin/pip" install --quiet -r "$ROOT/requirements-test.txt"
{
  echo "# Transitive pins for every venv and image (pip install -c constraints.txt). Regenerate with"
  echo "# scripts/lock.sh after changing a requirements file."
  "$TMP/venv/bin/pip" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > "$ROOT/constraints.txt"
echo "wrote $ROOT/constraints.txt"
