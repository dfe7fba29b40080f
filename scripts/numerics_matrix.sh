#!/usr/bin/env bash
# The numerical tests under each OpenBLAS kernel that this CPU runs, with 1 and 2 BLAS threads,
# then the nudge properties of tests/test_rounding.py with fresh Hypothesis draws.
#
#   make test-numerics                              # every kernel below
#   KERNELS="Haswell" THREADS=1 make test-numerics  # one cell of the matrix
#
# A kernel that needs instructions this CPU lacks falls back to an older one; each cell prints
# the kernel OpenBLAS actually runs, and a cell already run under another name is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
KERNELS=${KERNELS:-Prescott Nehalem Sandybridge Haswell Zen SkylakeX CooperLake}
THREADS=${THREADS:-1 2}
EXPLORE=${EXPLORE:-1}
TESTS=(
    tests/test_rounding.py tests/test_numbers.py tests/test_ksupport.py tests/test_optimum.py
    tests/test_optimum_factorized.py tests/test_rowspace.py tests/test_objectives.py
)
running_kernel() {
    OPENBLAS_CORETYPE=$1 "$PYTHON" -c '
import numpy, threadpoolctl
numpy.linalg.svd(numpy.eye(2))
print(" ".join(i["architecture"] for i in threadpoolctl.threadpool_info()
               if i["internal_api"] == "openblas"))'
}
seen=" "
for kernel in $KERNELS; do
    actual=$(running_kernel "$kernel")
    for threads in $THREADS; do
        cell="$actual/$threads"
        if [[ "$seen" == *" $cell "* ]]; then
            echo "== OPENBLAS_CORETYPE=$kernel runs $actual: done above with $threads thread(s)"
            continue
        fi
        seen+="$cell "
        echo "== OPENBLAS_CORETYPE=$kernel ($actual), OPENBLAS_NUM_THREADS=$threads"
        OPENBLAS_CORETYPE=$kernel OPENBLAS_NUM_THREADS=$threads \
            "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
    done
done
if [[ "$EXPLORE" == 1 ]]; then
    echo "== fresh draws of the nudge properties (HYPOTHESIS_PROFILE=explore)"
    HYPOTHESIS_PROFILE=explore "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_rounding.py
fi
