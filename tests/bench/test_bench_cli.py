"""``fused-mup bench`` as a user meets it: usage errors, list syntax, the long-CPU-run
guard, progress bars, a table that fits a terminal and a plot whose labels do not overlap."""

from __future__ import annotations

import json

import pytest
import torch

from fused_mup import bench
from fused_mup.bench.cli import build_parser
from fused_mup.bench.plots import bandwidth_figure, overlapping_labels
from fused_mup.bench.results import format_text_table

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workloads", "gpt9"], "--workloads: unknown workload(s) ['gpt9']"),
        (["--smoke", "--workloads", "gpt2-124m"], "unknown smoke workload(s) ['gpt2-124m']"),
        (["--impls", "fused_mup,nope"], "--impls: unknown implementation(s) ['nope']"),
        (["--skip", "x"], "--skip: unknown implementation(s) ['x']"),
        (["--wall-reps", "0"], "--wall-reps: expected a positive int, got '0'"),
        (["--rep-ms", "abc"], "--rep-ms: expected a positive float, got 'abc'"),
        (["--device", "tpu"], "--device: expected cpu or cuda"),
        (["--smoke", "--quick"], "argument --quick: not allowed with argument --smoke"),
        (["--rounds", "5"], "--rounds: only for --step-ratio and --host-cost"),
        (["--step-ratio", "--workloads", "gpt9"], "unknown workload(s) ['gpt9'] for --step-ratio"),
        (["--host-cost", "--workloads", "gpt2-124m"], "for --host-cost; known: ['150x4096'"),
        (
            ["--host-instructions", "--impls", "torch_foreach"],
            "--impls: ['torch_foreach'] not counted by --host-instructions",
        ),
        (["--workloads", ","], "--workloads: expected at least one name"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available here",
            marks=pytest.mark.skipif(not NO_CUDA, reason="CUDA is available"),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("-") is False else None,
)
def test_usage_errors_name_the_option(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fused-mup bench") and message in err, err


def test_lists_take_commas_spaces_or_both() -> None:
    parser = build_parser()
    for argv in (["a,b,c"], ["a", "b", "c"], ["a,b", "c"], ["a, b,", "c"]):
        assert parser.parse_args(["--workloads", *argv]).workloads == ["a", "b", "c"]
    assert parser.parse_args(["--skip", "compile", "optimi"]).skip == ["compile", "optimi"]


@pytest.mark.skipif(not NO_CUDA, reason="the guard is for CPU-only machines")
@pytest.mark.parametrize("argv", [[], ["--device", "cpu"], ["--workloads", "llama-3b"]])
def test_long_cpu_run_needs_yes(argv, capsys) -> None:
    """No flags on a CPU-only machine would run GPU-sized workloads for hours: warn, exit 2."""
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert "hours" in err and "--yes" in err and "--smoke" in err, err


def test_short_cpu_runs_and_yes_pass_the_guard() -> None:
    from fused_mup.bench.cli import _confirm_cpu_run

    cfg = bench.BenchConfig(device="cpu")
    assert _confirm_cpu_run(cfg, yes=False) is not None
    assert _confirm_cpu_run(cfg, yes=True) is None
    assert _confirm_cpu_run(bench.BenchConfig(device="cpu", smoke=True), yes=False) is None
    small = bench.BenchConfig(device="cpu", workloads=["many-small"], impls=["torch_fused"])
    assert _confirm_cpu_run(small, yes=False) is None


@pytest.fixture(scope="module")
def quick_results() -> dict:
    """A smoke run of the torch baselines only (no interpreter): about a second."""
    cfg = bench.BenchConfig(
        device="cpu",
        smoke=True,
        workloads=["tiny-gpt2-d32", "tiny-many-small"],
        impls=["torch_fused", "torch_foreach", "apex"],
        wall_reps=1,
        warmup_steps=1,
        profile_steps=1,
        copy_bytes=1 << 20,
        progress=False,
    )
    return bench.run(cfg)


def test_table_fits_a_terminal(quick_results) -> None:
    text = format_text_table(quick_results)
    assert max(map(len, text.splitlines())) <= 100, text
    assert "tiny-gpt2-d32: 23K params, 16 tensors, 5 groups, fp32" in text
    assert "not run (not importable" in text  # missing packages are listed, not dropped


def test_progress_bar_on_stderr(capsys) -> None:
    cfg = bench.BenchConfig(
        device="cpu",
        smoke=True,
        workloads=["tiny-many-small"],
        impls=["torch_fused"],
        wall_reps=1,
        warmup_steps=1,
        profile_steps=1,
        copy_bytes=1 << 20,
        progress=True,
    )
    bench.run(cfg)
    err = capsys.readouterr().err
    assert "bench:" in err and "0/1" in err and "tiny-many-small torch_fused" in err, err


def _fake_results() -> dict:
    """Full-size workloads, two of nearly the same size (gpt2-1.3b 1.31B, llama-1b 1.24B)."""
    rows = [
        {
            "workload": w.name,
            "impl": impl,
            "status": "ok",
            "numel": w.numel,
            "gbps": 1000.0 + 100 * k + 10 * j,
        }
        for k, w in enumerate(bench.workloads(smoke=False).values())
        for j, impl in enumerate([i.name for i in bench.default_impls()])
    ]
    return {"rows": rows, "copy": {"gbps": 3000.0}, "meta": {"device_name": "GPU", "smoke": False}}


def test_bandwidth_plot_labels_do_not_overlap() -> None:
    fig = bandwidth_figure(_fake_results())
    assert overlapping_labels(fig) == []


def test_overlap_check_can_fail() -> None:
    fig = bandwidth_figure(_fake_results())
    ax = fig.axes[0]
    ax.set_xticks([0, 0.02], ["gpt2-1.3b\n1.31B", "llama-1b\n1.24B"])  # the old log-x layout
    assert overlapping_labels(fig)


def test_step_ratio_entry_writes_its_result(tmp_path, capsys) -> None:
    """`--step-ratio`: every copy ends where torch fused ends, ratios and environment saved."""
    out = tmp_path / "ratio"
    argv = ["--step-ratio", "--device", "cpu", "--workloads", "tiny-gpt2-d32"]
    with pytest.raises(SystemExit):  # a smoke name is not a step-ratio workload
        bench.main(argv)
    argv[-1] = "gpt-6x256"
    assert bench.main([*argv, "--rounds", "2", "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    (row,) = res["rows"]
    assert row["n_tensors"] == 76 and row["n_groups"] == 5
    assert set(row["ratio_vs_torch_fused"]) == {"fused_mup", "torch_fused", "torch_foreach"}
    assert row["ratio_vs_torch_fused"]["torch_fused"] == 1.0
    assert row["max_abs_param_diff"] < 1e-6  # same math, so the timing compares like with like
    assert res["meta"]["torch_threads"] == 1 and res["meta"]["load_average"] is not None
    assert "| gpt-6x256 | 76 |" in (out / "results.md").read_text()
    assert "fused_mup / torch fused" in capsys.readouterr().out


def test_host_cost_stubs_reach_the_kernel_path(tmp_path) -> None:
    """The stubbed launches are called (else it would time the reference path) and restored."""
    from fused_mup import launcher
    from fused_mup.bench.host_cost import HostCostConfig, run_host_cost

    launch, fused = launcher.launch, torch._fused_adamw_
    cfg = HostCostConfig(
        workloads=["150x4096"], rounds=3, warmup_steps=2, progress=False, out=tmp_path
    )
    res = run_host_cost(cfg)
    assert launcher.launch is launch and torch._fused_adamw_ is fused
    assert [r["grads"] for r in res["rows"]] == ["grads kept", "grads new"]
    assert all(r["ratio_vs_torch_fused"] > 0 for r in res["rows"])
    assert "| 150x4096 | 5 | grads new |" in (tmp_path / "results.md").read_text()


def test_host_instructions_counts_the_impls_asked_for(monkeypatch, tmp_path) -> None:
    from fused_mup.bench import cli

    seen = {}
    monkeypatch.setattr(cli, "run_host_instructions", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(cli, "format_host_instructions", lambda results: "")
    argv = ["--host-instructions", "--workloads", "moe-634", "--impls", "fused_mup"]
    assert bench.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen["cfg"].impls == ("fused_mup",) and seen["cfg"].workloads == ["moe-634"]
