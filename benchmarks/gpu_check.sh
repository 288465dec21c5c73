#!/usr/bin/env bash
# GPU check, one command, one JSON (benchmarks/gpu_check.py says what it measures):
#   bash benchmarks/gpu_check.sh [--cpu] [--quick] [-o OUT.json]
# Uses the repository's .venv next to this script, or the interpreter in $PYTHON.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_check: no Python at $python (run 'make setup', or set PYTHON)" >&2
    exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m benchmarks.gpu_check "$@"
