"""The CPU smoke bench runs in seconds and writes its JSON, markdown and PNG.

Never asserts timings: only that every piece of the pipeline runs and the byte model holds.
"""

from __future__ import annotations

import json

import pytest
import torch

from fused_mup import bench
from fused_mup.bench.impls import BuildContext

# fp32 with μP GPT-2 groups, bf16 params with fp32 states (llama): every dtype mode. Each
# fused_mup step runs in Triton's interpreter here, so two workloads keep it under a minute.
SMOKE_WORKLOADS = ("tiny-gpt2-d32", "tiny-llama-d32")


@pytest.mark.parametrize(
    ("param", "state", "amsgrad", "expected"),
    [
        (torch.float32, None, False, 28),  # read p,g,m,v 16 B + write p,m,v 12 B
        (torch.float32, torch.float32, True, 36),  # + read/write max_exp_avg_sq
        (torch.bfloat16, torch.float32, False, 22),  # 2+2+4+4 read, 2+4+4 write
        (torch.bfloat16, torch.float32, True, 30),
        (torch.bfloat16, None, False, 14),
        (torch.float16, torch.float16, False, 14),
    ],
)
def test_bytes_per_param(param, state, amsgrad, expected) -> None:
    assert bench.bytes_per_param(param, state, amsgrad) == expected


def test_full_workloads_match_model_sizes() -> None:
    ws = bench.workloads(smoke=False)
    # Published sizes (tied embeddings): 124M, 355M, 1.3B, 1.24B, 3.21B.
    expected = {
        "gpt2-124m": 124.4e6,
        "gpt2-350m": 354.8e6,
        "gpt2-1.3b": 1.31e9,
        "llama-1b": 1.236e9,
        "llama-3b": 3.213e9,
    }
    for name, n in expected.items():
        assert abs(ws[name].numel - n) / n < 0.01, (name, ws[name].numel)
        assert 4 <= len(ws[name].groups) <= 6
    small = ws["many-small"]
    assert small.n_tensors >= 1000 and len(small.groups) == 8
    assert all(1000 <= torch.Size(s).numel() <= 10_000 for g in small.groups for s in g.shapes)
    assert ws["llama-3b"].mode == "bf16/fp32" and ws["gpt2-1.3b"].mode == "fp32"


def test_smoke_workloads_are_not_named_after_models() -> None:
    """A 70K-param list is no "gpt2-1.3b": smoke names say tiny and give the shape."""
    full = bench.workloads(smoke=False)
    for name, w in bench.workloads(smoke=True).items():
        assert name not in full and name.startswith("tiny-"), name
        assert w.numel < 1e6, (name, w.numel)


def test_smoke_run_writes_outputs(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    workloads = ",".join(SMOKE_WORKLOADS)
    argv = [
        "--smoke",
        "--no-progress",
        "--wall-reps",
        "1",
        "--workloads",
        workloads,
        "--out",
        str(out),
    ]
    assert bench.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "CPU numbers say nothing about GPU" in stdout
    assert "torch_compile skipped in smoke mode" in stdout
    for name in ("results.json", "results.md", "bandwidth.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "bandwidth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = json.loads((out / "results.json").read_text())
    for key in ("device_name", "driver", "torch", "triton", "git_commit", "load_average"):
        assert key in res["meta"]
    assert res["meta"]["smoke"] is True and res["copy"]["gbps"] > 0
    rows = {(r["workload"], r["impl"]): r for r in res["rows"]}
    assert {r["workload"] for r in res["rows"]} == set(SMOKE_WORKLOADS)

    # The torch baselines always run; missing extras are reported, not dropped.
    for w in SMOKE_WORKLOADS:
        assert rows[(w, "torch_fused")]["status"] == "ok"
        assert rows[(w, "torch_foreach")]["status"] == "ok"
        assert rows[(w, "torch_compile")]["status"].startswith("skipped")
        for extra in ("apex", "te", "optimi"):
            assert (w, extra) in rows
        assert rows[(w, "torch_fused")]["launches"] is None  # "n/a" on CPU, never invented
    assert rows[("tiny-gpt2-d32", "torch_fused")]["bytes_per_param"] == 28
    assert rows[("tiny-llama-d32", "torch_fused")]["bytes_per_param"] == 14  # torch: bf16 states

    assert rows[("tiny-gpt2-d32", "fused_mup")]["status"] == "ok"
    assert rows[("tiny-llama-d32", "fused_mup")]["status"] == "ok"
    assert rows[("tiny-llama-d32", "fused_mup")]["bytes_per_param"] == 22
    assert rows[("tiny-llama-d32", "fused_mup:pstate")]["bytes_per_param"] == 14
    # Each bf16 mode and the clipping variants with their byte counts (docs/optimizer.md).
    assert rows[("tiny-llama-d32", "fused_mup:kahan")]["bytes_per_param"] == 26
    assert rows[("tiny-llama-d32", "fused_mup:stochastic")]["bytes_per_param"] == 22
    assert rows[("tiny-llama-d32", "fused_mup:master")]["bytes_per_param"] == 28
    assert rows[("tiny-gpt2-d32", "fused_mup+clip")]["bytes_per_param"] == 32
    assert rows[("tiny-gpt2-d32", "torch_fused+clip")]["bytes_per_param"] == 40
    # The full AMP step: 32 fused (the norm pass is the inf check), 48 for torch's sequence.
    assert rows[("tiny-gpt2-d32", "fused_mup+amp+clip")]["status"] == "ok"
    assert rows[("tiny-gpt2-d32", "fused_mup+amp+clip")]["bytes_per_param"] == 32
    assert rows[("tiny-gpt2-d32", "torch_fused+amp+clip")]["bytes_per_param"] == 48
    assert res["targets"] and all(t["met"] is None for t in res["targets"])  # not judged on CPU

    md = (out / "results.md").read_text()
    assert "## tiny-gpt2-d32" in md and "| impl |" in md and "torch_fused" in md


def test_fused_mup_groups_do_the_same_math_as_torch() -> None:
    """lr_mult / wd_mult keys vs multipliers folded into torch's lr / weight_decay."""
    w = bench.workloads(smoke=True)["tiny-gpt2-d32"]
    impls = {i.name: i for i in bench.default_impls()}
    final = {}
    for name in ("fused_mup", "torch_foreach"):
        groups = bench.allocate_params(w, torch.device("cpu"), seed=0)
        plain = [{k: v for k, v in g.items() if k != "name"} for g in groups]
        _, step = impls[name].build(BuildContext(w, plain, torch.device("cpu")))
        for _ in range(2):
            step()
        final[name] = [p.detach().clone() for g in groups for p in g["params"]]
    for a, b in zip(final["fused_mup"], final["torch_foreach"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
