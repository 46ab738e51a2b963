#!/usr/bin/env bash
# PyTorch's own optimizer tests (test/test_optim.py), AdamW on CPU, against fused_mup.AdamW.
#
#   bench/torch_test_optim/run.sh PATH/TO/test_optim.py OUTDIR [BACKEND ...]
#
# test_optim.py comes from the pytorch repository (test/test_optim.py at the tag of your torch);
# it is not in the torch wheel, so it is not committed here. BACKEND: baseline (torch.optim.AdamW
# itself), reference, auto, triton (the kernel, in Triton's interpreter on CPU). Default: all four.
# Writes OUTDIR/<backend>.log and OUTDIR/<backend>.xml (JUnit) and prints one line per backend.
set -u -o pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 PATH/TO/test_optim.py OUTDIR [baseline|reference|auto|triton ...]" >&2
    exit 2
fi
TEST_FILE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
shift 2
BACKENDS=${*:-baseline reference auto triton}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The sibling imports of upstream's file (optim.test_lrscheduler, ...) are not AdamW tests.
sed -e 's/^from optim\.test_\(.*\) import \(.*\)$/# (not needed here) from optim.test_\1 import \2/' \
    -e 's/^instantiate_device_type_tests(TestSWAUtils/# &/' "$TEST_FILE" > "$WORK/test_optim.py"
cp "$HERE/conftest.py" "$WORK/"
cd "$WORK"
for backend in $BACKENDS; do
    start=$(date +%s)
    if [[ $backend == triton ]]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi
    FUSED_MUP_BACKEND=$backend python -m pytest test_optim.py -k "AdamW and cpu and not Adamax" \
        -q -p no:cacheprovider -rfEs --tb=short --junitxml="$OUT/$backend.xml" \
        > "$OUT/$backend.log" 2>&1
    echo "$backend: $(tail -n 1 "$OUT/$backend.log") ($(($(date +%s) - start)) s)"
done
