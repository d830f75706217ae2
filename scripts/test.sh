#!/usr/bin/env bash
# Run lint and the whole test suite (slow tests included), as CI does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh" "$ROOT/requirements-test.txt"
cd "$ROOT"
# The chat page is tested in Debian's Chromium, driven by Playwright (never `playwright install`:
# it downloads a browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser test"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
ruff check .
ruff format --check .
export HF_HUB_OFFLINE=1
exec python -m pytest "$@"
