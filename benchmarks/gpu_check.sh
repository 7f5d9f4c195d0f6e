#!/usr/bin/env bash
# The Triton path on a lent GPU (one H100): tests/test_triton.py with the kernels on CUDA, then every rule's
# step timed against the torch path, torch.optim and the bandwidth limit (benchmarks/gpu_check.py).
# Writes $OUT/gpu_check.json and $OUT/tests.txt. Extra arguments go to gpu_check.py (--rules, --repeats...).
#
#     OUT=/tmp/gpu benchmarks/gpu_check.sh
#
# The tests compile each kernel once per combination of flags and dtypes (a few hundred compiles, minutes:
# --tests-k Adamax selects some); the timings take a minute or two. Without CUDA
# it runs in Triton's interpreter on CPU: give it a small size (--params 3000 --tensors 3 --repeats 1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, triton" 2>/dev/null; then PY=.venv/bin/python; fi
if ! "$PY" -c "import optforge" 2>/dev/null; then  # not installed: the checkout is the package
    mkdir -p /tmp/optforge-src && ln -sfn "$PWD" /tmp/optforge-src/optforge
    export PYTHONPATH=/tmp/optforge-src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec "$PY" -m optforge.benchmarks.gpu_check --out "${OUT:?set OUT to the folder for gpu_check.json}" --tests "$@"
