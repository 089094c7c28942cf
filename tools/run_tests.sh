#!/usr/bin/env bash
# The README's test command: set up the environment if needed, then run the whole test suite on the CPU.
# Extra arguments go to pytest (e.g. tools/run_tests.sh -k swin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
# Tests write generated data to a temporary DETECTRON2_DATASETS unless one is given.
# They write a few hundred MB at most under the temporary folder (pytest.ini removes what passing tests wrote).
# Free space is printed first so that a full disk is told apart from a failing test.
TMP="$("$ROOT/.venv/bin/python" -c 'import tempfile; print(tempfile.gettempdir())')"
free_mb="$(df -Pm "$TMP" | awk 'NR == 2 {print $4}')"
echo "[tests] $free_mb MB free in $TMP"
if [ "$free_mb" -lt 400 ]; then
    echo "[tests] warning: less than 400 MB free in $TMP; tests that save checkpoints may fail to write them" >&2
fi
# --tb=short: a failure shows its error line within a few lines, not after pages of library source (pass --tb=long
# to see more).
exec "$ROOT/.venv/bin/python" -m pytest tests -q -ra --tb=short "$@"
