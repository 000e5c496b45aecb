#!/usr/bin/env bash
# One prepared check for a GPU machine without network, from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# Its python3 needs torch (CUDA), numba, scipy, pandas, safetensors, tqdm and pytest; other
# packages come as wheels in .whl/ (lapx for the peer row: see benchmarks/README.md, "On a GPU").
# Steps, each under its own time limit so that one hang does not eat the rest, each run even
# when the one before failed, each ending with one summary line:
#   1. install the carried wheels   2. machine: nvidia-smi, torch / numba / CUDA
#   3. python -m saematch_nb warmup   4. tests/core on CUDA (SAEMATCH_TEST_DEVICE=cuda; tests/sources
#   too where sae_lens imports)   5. the GPU rows of benchmarks/bench_matching.py (--gpu), one table.
# The whole stays within GPU_CHECK_TOTAL_S seconds (default 470). Logs go to $OUT when that
# variable is set (else /tmp/gpu_check).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-/tmp/gpu_check}
mkdir -p "$LOG"
TOTAL=${GPU_CHECK_TOTAL_S:-470}
START=$SECONDS
SUMMARY=()

left() { echo $((TOTAL - (SECONDS - START))); }

# step NAME LIMIT_S CMD...: runs CMD under `timeout`, output to the terminal and $LOG/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo
    echo "=== $name (limit ${limit} s) ==="
    if [ "$limit" -lt 5 ]; then
        SUMMARY+=("$name: SKIPPED (no time left)")
        return
    fi
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
    local rc=${PIPESTATUS[0]}
    local what="ok"
    [ "$rc" -eq 124 ] && what="TIMED OUT"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && what="FAILED (exit $rc)"
    SUMMARY+=("$name: $what in $((SECONDS - t0)) s; log $LOG/$name.log")
}

# 1. carried wheels (no index: this machine has no network)
if compgen -G ".whl/*.whl" > /dev/null; then
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    SUMMARY+=("wheels: none in .whl/ (no lapx: the peer row is left out)")
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1

# 2. the machine
step machine 60 bash -c "nvidia-smi || echo no nvidia-smi; $PY - <<'EOF'
import numba, torch
import saematch_nb
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), numba {numba.__version__}, '
      f'saematch_nb from {saematch_nb.__file__}')
print('cuda available:', torch.cuda.is_available(),
      '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
EOF"

# 3. the install step's warm-up (compiles the kernels for the CPU and the CUDA paths)
step warmup 180 "$PY" -m saematch_nb warmup

# 4. the tests on CUDA: all failures in one go (not -x), parallel where pytest-xdist is there
XDIST=()
if [ "${GPU_CHECK_XDIST:-1}" = 1 ] && "$PY" -c "import xdist" 2> /dev/null; then
    XDIST=(-n 8 --dist loadfile)
fi
TIMEOUT=()
"$PY" -c "import pytest_timeout" 2> /dev/null && TIMEOUT=(--timeout 150)
SUITES=(tests/core)
if "$PY" -c "import sae_lens" 2> /dev/null; then
    SUITES+=(tests/sources tests/analysis)
else
    echo "sae_lens does not import here: tests/sources and tests/analysis left out (it is not carried: see benchmarks/README.md)"
    SUMMARY+=("tests/sources, tests/analysis: not run (no sae_lens on this machine)")
fi
T_TESTS=$(( $(left) - ${GPU_CHECK_BENCH_S:-270} ))
[ "$T_TESTS" -gt 200 ] && T_TESTS=200
step tests "$T_TESTS" env SAEMATCH_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider --maxfail 30 \
    "${XDIST[@]}" "${TIMEOUT[@]}" "${SUITES[@]}"

# 5. the GPU rows, with whatever time is left (rows that would start past it are listed as skipped)
T_BENCH=$(( $(left) - 5 ))
step bench "$T_BENCH" "$PY" benchmarks/bench_matching.py --gpu --device cuda --budget $((T_BENCH - 15)) \
    --json "$LOG/bench_gpu.json" ${GPU_CHECK_BENCH_ARGS:-}

echo
echo "=== summary ($((SECONDS - START)) s) ==="
printf '%s\n' "${SUMMARY[@]}" | tee "$LOG/summary.txt"
