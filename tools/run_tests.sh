#!/usr/bin/env bash
# The README's test command: set up the environment if needed, then run the whole test suite on the CPU.
# Extra arguments go to pytest (e.g. tools/run_tests.sh -k swin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
# Tests write generated data to a temporary DETECTRON2_DATASETS unless one is given.
exec "$ROOT/.venv/bin/python" -m pytest tests -q -ra "$@"
