"""Registers, shared memory and CTAs per SM of every kernel variant, from ``aot_compile.py``'s JSON.

Usage::

    python tests/kernels/aot_compile.py 90 > bench/results/kernel-occupancy/after-sm90.json
    python tests/kernels/occupancy.py bench/results/kernel-occupancy/before-sm90.json \\
        bench/results/kernel-occupancy/after-sm90.json > bench/results/kernel-occupancy/README.md

Occupancy is computed as CUDA's occupancy calculator does for sm_90 (H100): 65,536 registers per
SM allocated per warp in units of 256, at most 64 warps and 32 CTAs per SM, 228 KiB of shared
memory per SM with 1 KiB reserved per CTA.
"""

from __future__ import annotations

import json
import sys

__all__ = ["ctas_per_sm"]

REGS_PER_SM = 65536
REG_UNIT = 256  # per warp
MAX_WARPS = 64
MAX_CTAS = 32
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED = 1024


def ctas_per_sm(regs: int, shared: int, num_warps: int) -> int:
    """Resident CTAs per SM on sm_90 for a kernel's registers per thread and shared bytes."""
    per_warp = -(-regs * 32 // REG_UNIT) * REG_UNIT
    by_regs = (REGS_PER_SM // per_warp) // num_warps
    by_shared = SHARED_PER_SM // (shared + SHARED_RESERVED)
    return min(MAX_CTAS, MAX_WARPS // num_warps, by_regs, by_shared)


def _name(key: str) -> str:
    if key.startswith("norm-"):
        return f"grad_norm {key[5:]}"
    parts = key.split("-")
    amsgrad, update = parts[-2], parts[-1]
    modes = {"update0": "round", "update1": "kahan", "update2": "stochastic", "update3": "master"}
    label = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "bf16-fp32": "bf16, fp32 states"}
    dtype = "-".join(parts[1:-2])
    return f"adamw {label[dtype]}, {modes[update]}, amsgrad={amsgrad[-1]}"


def table(before: dict, after: dict) -> str:
    rows = [
        "| variant | regs before | regs after | CTAs/SM before | CTAs/SM after "
        "| shared B before | shared B after | BAR.SYNC before | BAR.SYNC after "
        "| fp64 SASS before | fp64 SASS after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, a in after.items():
        b = before.get(key)
        warps = a.get("num_warps", 4)
        old = ["-"] * 5
        if b is not None:
            old = [
                b["regs"],
                ctas_per_sm(b["regs"], b["shared"], warps),
                b["shared"],
                b["sass"]["bar_sync"],
                b["sass"]["fp64"],
            ]
        new = [
            a["regs"],
            ctas_per_sm(a["regs"], a["shared"], warps),
            a["shared"],
            a["sass"]["bar_sync"],
            a["sass"]["fp64"],
        ]
        cells = " | ".join(f"{o} | {n}" for o, n in zip(old, new))
        rows.append(f"| {_name(key)} | {cells} |")
    return "\n".join(rows)


def main() -> None:
    with open(sys.argv[1]) as f:
        before = json.load(f)
    with open(sys.argv[2]) as f:
        after = json.load(f)
    print(table(before, after))


if __name__ == "__main__":
    main()
