#!/usr/bin/env bash
# Start the whole system on this machine: the services under gunicorn on 127.0.0.1, embedded
# ChromaDB under var/, and the sample data in data/ ingested. Ctrl-C stops everything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh" "$ROOT/requirements.txt"
cd "$ROOT"
exec python -m scripts.run_local "$@"
