#!/usr/bin/env bash
# The GPU check: parity first, then the CUDA tests, then every bench, all under OUTDIR.
#
#   bench/gpu_check.sh OUTDIR [PHASE ...]
#
# Phases, in order (default: all): install check device tests bench ratio host pybench
#   install  pip install --no-deps --no-build-isolation -e . (no network needed). Without build
#            isolation pip builds with what the environment has: setuptools>=64 and wheel
#            (pyproject.toml's build requirements) are checked first, and named if missing.
#   check    fused-mup check --device cuda --json OUTDIR/check.json  (parity against torch,
#            before anything else is measured; skipped with a message where the command
#            does not exist in this checkout)
#   device   nvidia-smi, python/torch/triton/CUDA versions, git commit  -> device.txt
#   tests    python -m pytest -q tests on CUDA (TRITON_INTERPRET unset)
#   bench    fused-mup bench --quick -> OUTDIR/bench/ (results.json with the named target rows)
#   ratio    fused-mup bench --step-ratio --device cuda -> OUTDIR/step-ratio/
#   host     fused-mup bench --host-cost --device cuda -> OUTDIR/host-cost/
#   pybench  pytest-benchmark entry points -> OUTDIR/pytest-benchmark.json
# At the end OUTDIR/targets.txt lists the GPU targets, one named row each, from the bench run.
#
# Written for a bare GPU box with no network (torch, triton, pytest, matplotlib, tqdm
# installed) and 10 minutes per call: every phase has its own timeout, a failing phase does
# not stop the others, and OUTDIR/status.txt gets "<phase> rc=<code> seconds=<s>" for each.
# All phases at their default timeouts fit in ~590 s. For a fuller run, split them over two
# calls with longer timeouts, e.g.
#   TESTS_TIMEOUT=420 bench/gpu_check.sh OUTDIR install check device tests
#   BENCH_TIMEOUT=360 bench/gpu_check.sh OUTDIR bench ratio host pybench
#
# Env overrides: PYTHON, TESTS (pytest paths), BENCH_ARGS, and the *_TIMEOUT values below.
# DRY_RUN=1 runs the same phases on the CPU (check and benches with --device cpu, smoke
# sizes, few rounds, pybench on one workload) to test the script itself on a machine without a
# GPU. Rehearse it on the GPU machine's torch and triton whenever they change:
# `nox -s gpu_stack` (noxfile.py) installs them and runs the suite and this dry run.
set -u -o pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUTDIR [install|check|device|tests|bench|ratio|host|pybench ...]" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
shift
PHASES=${*:-install check device tests bench ratio host pybench}
cd "$(dirname "$0")/.."
REPO=$(pwd)

PY=${PYTHON:-python}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-40}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-90}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-150}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-160}
RATIO_TIMEOUT=${RATIO_TIMEOUT:-45}
HOST_TIMEOUT=${HOST_TIMEOUT:-30}
# A dry run on a loaded CPU needs more (see PYBENCH_K below).
PYBENCH_TIMEOUT=${PYBENCH_TIMEOUT:-$([[ -n ${DRY_RUN:-} ]] && echo 120 || echo 25)}
if [[ -n ${DRY_RUN:-} ]]; then
    DEVICE=cpu
    BENCH_ARGS=${BENCH_ARGS:---smoke --wall-reps 1 --workloads tiny-gpt2-d32,tiny-many-small}
    RATIO_ARGS="--workloads gpt-6x256 --rounds 3"
    HOST_ARGS="--workloads 150x4096 --rounds 20"
    # One workload: all three took 71 s on a 2-core machine at load 11; this one 22-46 s at
    # load 10-11 (torch 2.13 and 2.11).
    PYBENCH_K="tiny-many-small and not torch_compile"
else
    # The interpreter is for CPU tests only; on the GPU every test must run the real kernels.
    unset TRITON_INTERPRET
    DEVICE=cuda
    # --quick: gpt2-124m, gpt2-1.3b, llama-1b, many-small, shorter timing; --budget-s: stop
    # starting new runs well before the timeout; compiling the 1,024-tensor step takes minutes.
    BENCH_ARGS=${BENCH_ARGS:---quick --budget-s $((BENCH_TIMEOUT - 45)) --compile-max-tensors 400}
    RATIO_ARGS="--rounds 30"
    HOST_ARGS="--rounds 300"
    PYBENCH_K="not torch_compile"
fi
STATUS="$OUT/status.txt"
touch "$STATUS"

want() { [[ " $PHASES " == *" $1 "* ]]; }

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

# 1. Install without touching the network (falls back to a non-editable install).
build_tools() {
    "$PY" - <<'PYEOF'
import importlib.metadata as md
import sys


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


setuptools, wheel = version("setuptools"), version("wheel")
print("setuptools", setuptools, "wheel", wheel)
if setuptools is None or int(setuptools.split(".")[0]) < 64 or wheel is None:
    sys.exit(
        "install needs setuptools>=64 and wheel in this environment (--no-build-isolation "
        'builds with what is installed): pip install "setuptools>=64" wheel'
    )
PYEOF
}
if want install; then
    run build_tools 30 build_tools
    run install "$INSTALL_TIMEOUT" "$PY" -m pip install --no-deps --no-build-isolation -e .
    if ! tail -n1 "$STATUS" | grep -q "rc=0 "; then
        run install_noneditable "$INSTALL_TIMEOUT" "$PY" -m pip install --no-deps --no-build-isolation .
    fi
fi

# 2. Parity before anything is measured: a fast step that is wrong is worth nothing.
if want check; then
    if "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('fused_mup.check') is None)" 2>/dev/null; then
        run check "$CHECK_TIMEOUT" "$PY" -m fused_mup check --device "$DEVICE" --json "$OUT/check.json"
    else
        msg="check skipped: 'fused-mup check' does not exist in this checkout yet (no fused_mup.check)"
        echo "$msg" | tee "$OUT/check.txt"
        echo "check rc=skipped seconds=0 ($msg)" | tee -a "$STATUS"
    fi
fi

# 3. Device and versions.
device_info() {
    nvidia-smi || echo "nvidia-smi: not found"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || true
    "$PY" - <<'PYEOF'
import os
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
print("cpus", os.cpu_count(), "load average", os.getloadavg())
PYEOF
    echo "git commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo none)"
    git -C "$REPO" status --short 2>/dev/null || true
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
}
if want device; then
    run device 60 device_info
fi

# 4. The test suite on CUDA (on a dry run: only the bench tests, in the interpreter).
if want tests; then
    if [[ -n ${DRY_RUN:-} ]]; then
        run tests "$TESTS_TIMEOUT" "$PY" -m pytest -q -x ${TESTS:-tests/bench}
    else
        run tests "$TESTS_TIMEOUT" "$PY" -m pytest -q ${TESTS:-tests}
    fi
fi

# 5. The benches (python -m works even if the console script did not install).
if want bench; then
    # shellcheck disable=SC2086
    run bench "$BENCH_TIMEOUT" "$PY" -m fused_mup bench --no-progress --device "$DEVICE" \
        --out "$OUT/bench" $BENCH_ARGS
fi
if want ratio; then
    # shellcheck disable=SC2086
    run step_ratio "$RATIO_TIMEOUT" "$PY" -m fused_mup bench --step-ratio --no-progress \
        --device "$DEVICE" --out "$OUT/step-ratio" $RATIO_ARGS
fi
if want host; then
    # shellcheck disable=SC2086
    run host_cost "$HOST_TIMEOUT" "$PY" -m fused_mup bench --host-cost --no-progress \
        --device "$DEVICE" --out "$OUT/host-cost" $HOST_ARGS
fi
if want pybench; then
    run pytest_bench "$PYBENCH_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider \
        bench/bench_adamw.py -k "$PYBENCH_K" --benchmark-json "$OUT/pytest-benchmark.json"
fi

# 6. The GPU targets, one named row each, as measured in the bench run.
targets() {
    "$PY" - "$OUT/bench/results.json" <<'PYEOF'
import json
import sys

try:
    res = json.load(open(sys.argv[1]))
except OSError as e:
    sys.exit(f"no bench results: {e}")
print(f"{'id':<16} {'workload':<11} {'value':>8}  {'threshold':>9}  met")
for t in res["targets"]:
    value = "-" if t["value"] is None else f"{t['value']:.3g}"
    met = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
    print(f"{t['id']:<16} {t['workload']:<11} {value:>8}  {t['threshold']:>9g}  {met}")
PYEOF
}
if want bench; then
    run targets 30 targets
fi

echo "=== summary ($STATUS)"
cat "$STATUS"
# Non-zero if any phase failed, but only after every phase had its chance.
! grep -v "rc=0 " "$STATUS" | grep -qv "rc=skipped"
