"""The GPU targets are named rows computed from figures of the same run."""

from __future__ import annotations

from fused_mup.bench.targets import TARGETS, evaluate_targets


def _row(workload: str, impl: str, device_ms: float, e2e_ms: float, **kw) -> dict:
    return {
        "workload": workload,
        "impl": impl,
        "status": "ok",
        "device_ms": device_ms,
        "e2e_ms": e2e_ms,
        "frac_copy": kw.get("frac_copy"),
        "launches": kw.get("launches"),
    }


def _results(device: str = "cuda:0", smoke: bool = False) -> dict:
    rows = [
        _row("gpt2-124m", "fused_mup", 1.0, 1.2, frac_copy=0.93, launches=1.0),
        _row("gpt2-124m", "torch_fused", 1.2, 1.5),  # 1.2x: met
        _row("gpt2-124m", "fused_mup+amp+clip", 1.0, 1.0),
        _row("gpt2-124m", "torch_fused+amp+clip", 1.4, 1.4),  # 1.4x: NOT met
        _row("many-small", "fused_mup", 0.1, 0.2, launches=2.0),
        _row("many-small", "torch_fused", 0.5, 0.5),  # 2.5x: met
    ]
    return {"rows": rows, "meta": {"device": device, "smoke": smoke}}


def test_each_target_is_a_named_ratio_row() -> None:
    got = {(t["id"], t["workload"]): t for t in evaluate_targets(_results())}
    assert {tid for tid, _ in got} == set(TARGETS)
    assert got[("copy_fraction", "gpt2-124m")]["value"] == 0.93
    assert got[("copy_fraction", "gpt2-124m")]["met"] is True
    assert got[("mup_speedup", "gpt2-124m")]["value"] == 1.2
    assert got[("mup_speedup", "gpt2-124m")]["met"] is True
    assert got[("full_step", "gpt2-124m")]["value"] == 1.4
    assert got[("full_step", "gpt2-124m")]["met"] is False
    assert got[("many_small_wall", "many-small")]["value"] == 2.5
    assert got[("many_small_wall", "many-small")]["met"] is True
    assert got[("one_launch", "many-small")]["met"] is False  # 2 launches
    # Not measured in this run: listed, with no value and no verdict.
    assert got[("mup_speedup", "gpt2-1.3b")]["value"] is None
    assert got[("mup_speedup", "gpt2-1.3b")]["met"] is None


def test_targets_are_not_judged_on_the_cpu_or_in_smoke_mode() -> None:
    for results in (_results(device="cpu"), _results(smoke=True)):
        assert all(t["met"] is None for t in evaluate_targets(results))
