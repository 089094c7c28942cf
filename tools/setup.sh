#!/usr/bin/env bash
# Set up the project environment in .venv (idempotent: a second run reuses what exists).
#
#   1. a virtual environment with torch==2.14.1 and torchvision==0.29.1
#   2. detectron2 >= 0.6: reused if importable, else built pure-Python by tools/install_detectron2.py
#   3. this package (pip install -e .) with its dependencies, panopticapi (PQ evaluator) and pytest
#   4. the C++ deformable-attention kernel, compiled into torch's extension cache when a C++ compiler exists
#
# Run it as `bash tools/setup.sh`; afterwards .venv/bin/python has everything.
# Environment: PYTHON (interpreter used to create the venv, default python3), VENV (default .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"

step() { echo "[setup] $*"; }
fail() { echo "[setup] FAILED at step: $*" >&2; exit 1; }

# The stamp records what was installed; if setup.py or this script change, the pip steps run again.
stamp_key="$(cat "$ROOT/setup.py" "$ROOT/tools/setup.sh" "$ROOT/tools/install_detectron2.py" | sha256sum | cut -c1-16)"
STAMP="$VENV/.mask2former-setup-$stamp_key"
if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import torch, detectron2, mask2former" 2>/dev/null; then
    step "environment in $VENV is up to date"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating virtual environment $VENV with $PYTHON"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || fail "python >= 3.9 is required ($PYTHON is $("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV" || fail "python -m venv $VENV (on Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('$TORCH_VERSION') and torchvision.__version__.startswith('$TORCHVISION_VERSION')))" 2>/dev/null; then
    step "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
        || fail "pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
fi

step "installing mask2former (editable) and its dependencies"
# --no-build-isolation: setuptools from the venv; deps come from setup.py's install_requires.
"${PIP[@]}" install --no-build-isolation -e "$ROOT[test]" || fail "pip install -e .[test]"

step "detectron2"
"$PY" "$ROOT/tools/install_detectron2.py" || fail "tools/install_detectron2.py"

if ! "$PY" -c "from panopticapi.evaluation import pq_compute" 2>/dev/null; then
    step "installing panopticapi (panopticapi-lite, without its unneeded numpy<2/scikit-image pins)"
    "${PIP[@]}" install --no-deps "panopticapi-lite==0.2.0" || fail "pip install panopticapi-lite"
fi

step "building the C++ deformable-attention kernel (skipped without a C++ compiler; then the PyTorch op runs)"
# Optional: a failure only means the pure-PyTorch op is used, so it must not fail set-up.
"$PY" -c "
from mask2former.ops.ms_deform_attn_cpp import cpp_unavailable
reason = cpp_unavailable()
print('[setup] C++ kernel ready' if reason is None else f'[setup] C++ kernel not built ({reason}); using the PyTorch op')
" || step "C++ kernel check failed; the PyTorch op will be used"

"$PY" -c "import torch, detectron2, mask2former; from panopticapi.evaluation import pq_compute" \
    || fail "final import check (torch, detectron2, mask2former, panopticapi)"
rm -f "$VENV"/.mask2former-setup-*
touch "$STAMP"
step "done: $("$PY" -c 'import torch, detectron2; print(f"torch {torch.__version__}, detectron2 {detectron2.__version__}")')"
