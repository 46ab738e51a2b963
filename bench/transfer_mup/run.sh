#!/usr/bin/env bash
# Why does full `mup` trail `mup_lr` at the largest widths of the quick sweep? Targeted runs at
# d = 128 (base width 16, so m = 8), the quick sweep's settings otherwise, one seed; each arm
# changes one thing. docs/transfer.md ("Full muP") reads the results, written to
# bench/results/transfer-mup/ (one subfolder per arm, and summary.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../results/transfer-mup"
Q=(--quick --widths 128 --lr-range -6,-3 --seeds 0 --jobs 1 --no-plots --no-progress --bootstrap 0)
fused-mup transfer "${Q[@]}" --presets mup,mup_lr --out base                 # as in the sweep
fused-mup transfer "${Q[@]}" --presets mup --mup-attention off --out mup-sp-attention
fused-mup transfer "${Q[@]}" --presets mup_lr --mup-attention on --out mup_lr-mup-attention
fused-mup transfer "${Q[@]}" --presets mup --zero-readout --out mup-zero-readout
fused-mup transfer "${Q[@]}" --lr-range -7,-4 --tokens 204800 --presets mup,mup_lr --out horizon-400  # 4x steps
python "$here/summarize.py"
