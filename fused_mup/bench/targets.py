"""The GPU targets, each a ratio of two figures measured in the same run.

Shown, never asserted: on the CPU or in smoke mode they are listed with ``met = None``.
Every target has a stable id, so a script can find its row in ``results.json``.
"""

from __future__ import annotations

from typing import Any

from fused_mup.bench.impls import BASELINE_IMPL

__all__ = ["TARGETS", "evaluate_targets"]

# id -> what it says. The value of each row is a ratio; ``met`` is ``value >= threshold``
# (``<=`` for the launch count).
TARGETS = {
    "copy_fraction": "fp32 AdamW step >= 90% of the copy bandwidth measured in the same run, "
    ">= 124M params (device time)",
    "mup_speedup": ">= 1.1x torch fused with μP groups (device time)",
    "many_small_wall": ">= 2x torch fused per-step wall time, 1,024 small tensors in 8 groups",
    "full_step": "unscale + inf check + clip + AdamW >= 1.5x torch's sequence (wall time)",
    "one_launch": "one AdamW launch per step per dtype combination",
}
_GPT2 = ("gpt2-124m", "gpt2-350m", "gpt2-1.3b")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target and workload: ``{"id", "target", "workload", "value", "unit",
    "threshold", "met"}``."""
    rows = {(r["workload"], r["impl"]): r for r in results["rows"] if r["status"] == "ok"}
    judged = str(results["meta"]["device"]).startswith("cuda") and not results["meta"]["smoke"]
    out: list[dict[str, Any]] = []

    def add(
        tid: str,
        workload: str,
        value: float | None,
        threshold: float,
        unit: str,
        at_most: bool = False,
    ) -> None:
        met = None
        if judged and value is not None:
            met = value <= threshold if at_most else value >= threshold
        out.append(
            {
                "id": tid,
                "target": TARGETS[tid],
                "workload": workload,
                "value": value,
                "unit": unit,
                "threshold": threshold,
                "met": met,
            }
        )

    def ratio(workload: str, ours: str, theirs: str, field: str) -> float | None:
        a, b = rows.get((workload, ours)), rows.get((workload, theirs))
        if a is None or b is None or not a[field] or not b[field]:
            return None
        return b[field] / a[field]  # > 1: ours is faster

    for w in _GPT2:
        r = rows.get((w, "fused_mup"))
        add("copy_fraction", w, r and r["frac_copy"], 0.9, "of copy")
    for w in _GPT2:
        add("mup_speedup", w, ratio(w, "fused_mup", BASELINE_IMPL, "device_ms"), 1.1, "x")
    add(
        "many_small_wall",
        "many-small",
        ratio("many-small", "fused_mup", BASELINE_IMPL, "e2e_ms"),
        2.0,
        "x",
    )
    for w in _GPT2:
        v = ratio(w, "fused_mup+amp+clip", "torch_fused+amp+clip", "e2e_ms")
        add("full_step", w, v, 1.5, "x")
    for (w, impl), r in sorted(rows.items()):
        if impl == "fused_mup" and r["launches"] is not None:
            add("one_launch", w, r["launches"], 1.0, "launches", at_most=True)
    return out
