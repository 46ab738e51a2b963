"""fused-mup bench --host-instructions: the child reaches its stub, and the parent turns two
callgrind counts per run into instructions per step (callgrind itself is not run here)."""

from __future__ import annotations

import pytest

from fused_mup.bench import host_instructions
from fused_mup.bench.host_instructions import HostInstructionsConfig, run_host_instructions


@pytest.mark.parametrize("impl", ["fused_mup", "torch_fused"])
@pytest.mark.parametrize("mode", ["grads kept", "grads new"])
def test_child_steps_with_the_launches_stubbed(impl, mode):
    host_instructions._child(impl, "150x4096", mode, steps=2, warmup=1)


def test_child_refuses_a_path_that_never_reaches_its_stub(monkeypatch):
    from fused_mup.bench import host_cost

    real = host_cost.host_steps
    monkeypatch.setattr(
        host_instructions,
        "host_steps",
        lambda *a, **k: ({"fused_mup": lambda: None}, real(*a, **k)[1]),
    )
    with pytest.raises(RuntimeError, match="never reached its stub 'launch'"):
        host_instructions._child("fused_mup", "150x4096", "grads kept", steps=1, warmup=1)


def test_grads_only_child_steps_nothing():
    host_instructions._child(host_instructions.GRADS_ONLY, "150x4096", "grads new", 2, 1)


def test_parent_differences_two_counts_per_run(monkeypatch, tmp_path):
    # A fake callgrind: 10**9 for the setup, then a fixed count per step; handing over new
    # grads alone costs 100 per step, which "grads new" takes off both implementations.
    per_step = {"fused_mup": 400, "torch_fused": 1100, host_instructions.GRADS_ONLY: 100}
    monkeypatch.setattr(host_instructions.shutil, "which", lambda _: "/usr/bin/valgrind")
    monkeypatch.setattr(
        host_instructions,
        "count_instructions",
        lambda impl, workload, mode, steps, warmup: 10**9 + per_step[impl] * (steps + warmup),
    )
    cfg = HostInstructionsConfig(workloads=["150x4096"], steps=50, progress=False, out=tmp_path)
    kept, new = run_host_instructions(cfg)["rows"]
    assert (kept["grads"], new["grads"]) == ("grads kept", "grads new")
    assert kept["instructions_per_step"] == {"fused_mup": 400.0, "torch_fused": 1100.0}
    assert new["instructions_per_step"] == {"fused_mup": 300.0, "torch_fused": 1000.0}
    assert new["ratio_vs_torch_fused"] == pytest.approx(0.3)
    assert (
        "| 150x4096 | 5 | grads new | 300 | 1,000 | **0.30** |"
        in (tmp_path / "results.md").read_text()
    )
