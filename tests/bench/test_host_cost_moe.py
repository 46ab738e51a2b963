"""fused-mup bench --host-cost on the MoE workload: the grad-set regimes hand over what they
claim (the same half of each layer's experts, or a random half), both implementations see the
same sets, and a run reports changing / steady. Smoke only: timings are never asserted here."""

from __future__ import annotations

import itertools

import pytest
import torch

from fused_mup.bench import host_instructions
from fused_mup.bench.host_cost import (
    HOST_IMPLS,
    HostCostConfig,
    host_steps,
    host_workloads,
    routes,
    run_host_cost,
    stubbed_launches,
)
from fused_mup.optim import plan as plan_module

MOE = "moe-634"


def _experts_routed(w, mask):
    """{layer: experts with a grad} from a param mask."""
    out: dict[int, set[int]] = {}
    for e, routed in zip(w.expert_of(), mask, strict=True):
        if e is not None and routed:
            out.setdefault(e[0], set()).add(e[1])
    return out


def test_moe_workload_shape():
    w = host_workloads()[MOE]
    experts = w.expert_of()
    assert w.n_tensors == len(experts) == 634
    assert sum(e is not None for e in experts) == 8 * 24 * 3
    assert {e for e in experts if e is not None} == set(itertools.product(range(8), range(24)))


@pytest.mark.parametrize("mode", ["set steady", "set changing"])
def test_routes_first_every_expert_then_half_of_each_layer(mode):
    w = host_workloads()[MOE]
    masks = list(itertools.islice(routes(w, mode, seed=0), 6))
    assert all(masks[0])  # every expert gets its state in the first (warm-up) step
    shared = [e is None for e in w.expert_of()]
    sets = []
    for mask in masks[1:]:
        assert all(m for m, s in zip(mask, shared, strict=True) if s), "a shared param got no grad"
        per_layer = _experts_routed(w, mask)
        assert sorted(per_layer) == list(range(8))
        assert all(len(chosen) == 12 for chosen in per_layer.values())
        sets.append(per_layer)
    distinct = {tuple(sorted((k, tuple(sorted(v))) for k, v in s.items())) for s in sets}
    assert len(distinct) == (1 if mode == "set steady" else len(sets))
    assert masks == list(itertools.islice(routes(w, mode, seed=0), 6)), "not repeatable"


def test_both_implementations_get_the_same_changing_sets():
    w = host_workloads()[MOE]
    with stubbed_launches():
        steps, before = host_steps(w, "set changing", torch.device("cpu"), seed=0)
        groups = {}
        for impl, step in steps.items():
            opt = step.__self__  # torch and fused_mup both step with the bound opt.step
            groups[impl] = [p for g in opt.param_groups for p in g["params"]]
        for call in range(4):
            seen = []
            for impl in HOST_IMPLS:
                before(impl)
                steps[impl]()
                seen.append([p.grad is not None for p in groups[impl]])
            assert seen[0] == seen[1]
            assert all(seen[0]) == (call == 0)


def test_changing_set_builds_no_plan_after_the_first_step(monkeypatch):
    """What the workload measures is the step without a rebuild, not a plan per step."""
    builds = []
    build = plan_module._build
    monkeypatch.setattr(plan_module, "_build", lambda *a, **k: builds.append(1) or build(*a, **k))
    w = host_workloads()[MOE]
    with stubbed_launches() as counts:
        steps, before = host_steps(w, "set changing", torch.device("cpu"), seed=0)
        before("fused_mup")
        steps["fused_mup"]()
        first = len(builds)
        for _ in range(3):
            before("fused_mup")
            steps["fused_mup"]()
    assert first >= 1 and len(builds) == first
    assert counts["launch"] >= 4


def test_run_reports_changing_against_steady(tmp_path):
    cfg = HostCostConfig(workloads=[MOE], rounds=2, warmup_steps=1, progress=False, out=tmp_path)
    (steady, changing) = run_host_cost(cfg)["rows"]
    assert (steady["grads"], changing["grads"]) == ("set steady", "set changing")
    assert "ratio_vs_steady" not in steady
    assert set(changing["ratio_vs_steady"]) == set(HOST_IMPLS)
    assert all(v > 0 for v in changing["ratio_vs_steady"].values())
    text = (tmp_path / "results.md").read_text()
    assert "| moe-634 | 5 | set changing |" in text
    assert "| workload | fused_mup changing / steady | torch fused changing / steady |" in text


@pytest.mark.parametrize("impl", [*HOST_IMPLS, host_instructions.GRADS_ONLY])
def test_instructions_child_steps_the_changing_set(impl):
    host_instructions._child(impl, MOE, "set changing", steps=2, warmup=1)


def test_instructions_parent_reports_changing_against_steady(monkeypatch, tmp_path):
    # A fake callgrind: per step, steady costs 400 / 1000, changing 500 / 1100, the handover 100.
    per_step = {
        ("set steady", "fused_mup"): 400,
        ("set steady", "torch_fused"): 1000,
        ("set changing", "fused_mup"): 500,
        ("set changing", "torch_fused"): 1100,
    }
    monkeypatch.setattr(host_instructions.shutil, "which", lambda _: "/usr/bin/valgrind")
    monkeypatch.setattr(
        host_instructions,
        "count_instructions",
        lambda impl, workload, mode, steps, warmup: (
            10**9 + per_step.get((mode, impl), 100) * (steps + warmup)
        ),
    )
    cfg = host_instructions.HostInstructionsConfig(
        workloads=[MOE], steps=10, progress=False, out=tmp_path
    )
    results = host_instructions.run_host_instructions(cfg)
    steady, changing = results["rows"]
    assert len(results["collected"]) == 12  # 2 regimes x (2 impls + handover) x (0, 10 steps)
    assert steady["instructions_per_step"] == {"fused_mup": 300.0, "torch_fused": 900.0}
    assert changing["instructions_per_step"] == {"fused_mup": 400.0, "torch_fused": 1000.0}
    assert changing["ratio_vs_steady"] == pytest.approx({"fused_mup": 4 / 3, "torch_fused": 10 / 9})
    assert "| moe-634 | **1.33** | 1.11 |" in (tmp_path / "results.md").read_text()
