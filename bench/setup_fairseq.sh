#!/usr/bin/env bash
# Build fairseq for bench/train_bench.py in its own virtualenv (bench/.venvs/fairseq, git-ignored),
# never in the project's: fairseq is a peer to compare against, not a dependency.
# fairseq-fixed 0.12.3.1 compiles C++/Cython extensions against the installed torch, hence
# --no-build-isolation and torch pinned to the project's version. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=bench/.venvs/fairseq
CONSTRAINTS=$(mktemp)
echo "torch==2.13.0" > "$CONSTRAINTS"
[ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
$VENV/bin/pip install -c "$CONSTRAINTS" "torch==2.13.0" "numpy<2.3" cython setuptools wheel
$VENV/bin/pip install --no-build-isolation -c "$CONSTRAINTS" fairseq-fixed==0.12.3.1
$VENV/bin/python -c "import fairseq, torch; print('fairseq', fairseq.__version__, 'torch', torch.__version__)"
rm -f "$CONSTRAINTS"
