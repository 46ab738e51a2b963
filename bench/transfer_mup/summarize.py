"""Summarize the full-muP investigation: L* and eta* per arm at d = 128 (writes summary.md)."""

import json
import math
from pathlib import Path

import numpy as np

from fused_mup.transfer import SweepSpec, SweepTable, load_results, run_key_id
from fused_mup.transfer.claims import claim_stats
from fused_mup.transfer.metrics import find_optimum

ARMS = {
    "base": "as in the sweep",
    "mup-sp-attention": "mup with SP attention 1/sqrt(d_head)",
    "mup_lr-mup-attention": "mup_lr with muP attention 1/d_head",
    "mup-zero-readout": "mup with a zero-initialized readout",
    "horizon-400": "400 steps instead of 100",
}
here = Path(__file__).resolve().parent.parent / "results" / "transfer-mup"  # the arms run.sh wrote
lines = [
    "# Full muP at d = 128 (m = 8): one change per arm, 1 seed",
    "",
    "| arm | preset | steps | L* | log2 eta* | loss per grid LR (log2 lr: loss) |",
    "|---|---|---|---|---|---|",
]
for arm, what in ARMS.items():
    spec = SweepSpec.from_json(json.loads((here / arm / "spec.json").read_text()))
    ids = {run_key_id(c.key()) for c in spec.runs()}
    kept = [r for r in load_results(here / arm) if r["id"] in ids]  # this arm's grid only
    t = SweepTable.from_records(kept)
    st = claim_stats(t)
    recs = {(r["key"]["preset"], r["key"]["lr"]): r for r in kept}
    for p, name in enumerate(t.presets):
        o = find_optimum(np.log(t.lrs), t.mean_loss()[p, 0])
        steps = next(r["key"]["steps"] for (n, _), r in recs.items() if n == name)
        grid = ", ".join(
            f"{math.log2(lr):.0f}: {t.loss[p, 0, i, 0]:.3f}" for i, lr in enumerate(t.lrs)
        )
        mark = "" if o.status == "ok" else f" ({o.status})"
        lines.append(
            f"| {arm} ({what}) | {name} | {steps} | {st['L_star'][p, 0]:.4f} | "
            f"{o.log_eta / math.log(2):.2f}{mark} | {grid} |"
        )
(here / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
