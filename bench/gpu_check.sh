#!/usr/bin/env bash
# One-call GPU check: install, run the test suite on CUDA, run the benchmark, record the device.
#
#   bench/gpu_check.sh OUTDIR
#
# Written for a bare GPU box with no network (torch, triton, pytest, matplotlib installed) and
# a 10-minute limit per call. Every step runs under its own timeout, keeps going when a step
# fails, and appends "<step> rc=<code> seconds=<s>" to OUTDIR/status.txt. Partial benchmark
# results survive a timeout (results.json is rewritten after every workload).
#
# Env overrides for a dry run elsewhere: PYTHON, SKIP_INSTALL=1, TESTS (pytest paths),
# BENCH_ARGS (e.g. "--smoke"), and the *_TIMEOUT values below.
#
# Time plan (seconds, defaults; override with the env vars):
#   install 60 + check 60 + tests $TESTS_TIMEOUT=180 + bench $BENCH_TIMEOUT=240 + pytest-benchmark
#   $PYBENCH_TIMEOUT=60 + device info ~5  =  ~605 s worst case if every step runs to its limit.
set -u -o pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
REPO=$(pwd)

# The interpreter is for CPU tests only; on the GPU every test must run the real kernels.
unset TRITON_INTERPRET
PY=${PYTHON:-python}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-180}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
PYBENCH_TIMEOUT=${PYBENCH_TIMEOUT:-60}
# --quick: 4 workloads (124M, 1.3B, Llama 1B, many-small) and shorter timing loops;
# --budget-s: stop starting new runs well before the timeout kills the process;
# --compile-max-tensors: torch.compile of the 1,024-tensor step alone can take minutes.
BENCH_ARGS=${BENCH_ARGS:---quick --budget-s $((BENCH_TIMEOUT - 60)) --compile-max-tensors 400}
STATUS="$OUT/status.txt"
: >"$STATUS"

# run NAME LIMIT CMD...: output to OUTDIR/NAME.txt (and the terminal), status line appended.
run() {
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "=== $name ($limit s): $*"
    if declare -F "$1" >/dev/null; then
        # Shell functions cannot run under timeout(1); they only call quick commands.
        "$@" 2>&1 | tee "$OUT/$name.txt"
    else
        timeout --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    fi
    rc=${PIPESTATUS[0]}
    echo "$name rc=$rc seconds=$(($(date +%s) - start))" | tee -a "$STATUS"
}

# 1. Device and versions first, so they exist even if everything else fails.
device_info() {
    nvidia-smi || echo "nvidia-smi: not found"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || true
    "$PY" - <<'PYEOF'
import platform

import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton

    print("triton", triton.__version__)
except Exception as e:  # noqa: BLE001
    print("triton: not importable:", e)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
PYEOF
    echo "git commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo none)"
    git -C "$REPO" status --short 2>/dev/null || true
}
run device 60 device_info

# 2. Install without touching the network; fall back to non-editable, then to PYTHONPATH.
if [[ -z ${SKIP_INSTALL:-} ]]; then
    run install 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
    if ! tail -n1 "$STATUS" | grep -q "rc=0 "; then
        run install_noneditable 120 "$PY" -m pip install --no-deps --no-build-isolation .
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# 3. The parity check users run in their CI (table + JSON), first, so it exists if later
#    steps time out.
run check 60 "$PY" -m fused_mup check --device cuda --json "$OUT/check.json"

# 4. The test suite on CUDA.
run tests "$TESTS_TIMEOUT" "$PY" -m pytest -q ${TESTS:-tests}

# 5. The benchmark (python -m works even if the console script did not install).
run bench "$BENCH_TIMEOUT" "$PY" -m fused_mup bench --no-progress --out "$OUT/bench" $BENCH_ARGS

# 6. pytest-benchmark entry points (tiny sizes; compile cases skipped for time).
run pytest_bench "$PYBENCH_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider bench/bench_adamw.py \
    -k "not torch_compile" --benchmark-json "$OUT/pytest-benchmark.json"

echo "=== summary ($STATUS)"
cat "$STATUS"
# Non-zero if any step failed, but only after every step had its chance.
! grep -qv "rc=0 " "$STATUS"
