"""``fused-mup check``: passes on this machine, fails when the optimizer is broken, usage errors."""

from __future__ import annotations

import json
import math
import os
import textwrap

import pytest
import torch

import fused_mup.optim
from fused_mup.check import cases as check_mod
from fused_mup.check import check, main

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def test_cli_check_cpu_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "check.json"
    assert main(["--device", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "trajectory/amsgrad" in out
    report = json.loads(path.read_text())
    assert report["passed"] is True and report["device"] == "cpu"
    assert report["tolerances"]["fp32"] == {"rel": 1e-6, "abs": 2e-6}  # the published table
    cases = {(r["case"], r["dtype"]) for r in report["rows"]}
    for flag in ("plain", "amsgrad", "maximize"):
        for dtype in ("fp32", "bf16", "fp16"):
            assert (f"trajectory/{flag}", dtype) in cases
    names = {r["case"] for r in report["rows"]}
    assert {"grad_scaler+inf", "clip", "clip+grad_scaler+inf"} <= names
    assert {
        "checkpoint/fused->fused",
        "checkpoint/fused->torch",
        "checkpoint/torch->fused",
    } <= names
    launches = next(r for r in report["rows"] if r["case"] == "launches/step")
    assert launches["status"] == "skip" and "CUDA only" in launches["note"]
    for r in report["rows"]:
        if r["status"] == "pass":  # measured errors within the published table
            assert r["rel"] <= r["tol_rel"] and r["abs"] <= r["tol_abs"]


def _perturbing_step(real):
    def step(self, closure=None):
        out = real(self, closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(1 + 1e-5)  # 10x the fp32 tolerance
        return out

    return step


def test_check_fails_when_the_step_is_off(monkeypatch, capsys):
    monkeypatch.setattr(fused_mup.optim.AdamW, "step", _perturbing_step(fused_mup.optim.AdamW.step))
    assert main(["--device", "cpu", "--dtypes", "fp32"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "trajectory/plain         fp32   FAIL" in out


def test_check_fails_when_load_state_dict_does_nothing(monkeypatch):
    # The destination is poisoned: a load that copies nothing must not pass.
    monkeypatch.setattr(fused_mup.optim.AdamW, "load_state_dict", lambda self, sd: None)
    report = check("cpu", dtypes=["fp32"])
    status = {r.case: r.status for r in report.rows}
    assert status["checkpoint/fused->fused"] == "FAIL"
    assert status["checkpoint/torch->fused"] == "FAIL"
    assert status["checkpoint/fused->torch"] == "pass"
    assert not report.passed


def test_check_fails_when_the_clip_is_ignored(monkeypatch):
    monkeypatch.setattr(
        fused_mup.optim.AdamW, "clip_grad_norm_", lambda self, max_norm, **kw: torch.tensor(1.0)
    )
    report = check("cpu", dtypes=[])
    status = {r.case: r.status for r in report.rows}
    assert status["clip"] == "FAIL" and status["clip+grad_scaler+inf"] == "FAIL"


def test_a_crashing_case_is_a_failed_row(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(check_mod, "clip_case", boom)
    report = check("cpu", dtypes=[])
    row = next(r for r in report.rows if r.case == "clip")
    assert row.status == "FAIL" and "kaboom" in row.note
    assert math.isnan(row.rel)


@pytest.mark.skipif(not INTERPRETING, reason="the CPU kernel runs only in Triton's interpreter")
def test_kernel_in_the_interpreter(monkeypatch):
    """One trajectory through the real kernel (interpreted), not the reference path."""
    launches = []
    real = fused_mup.launcher.launch
    monkeypatch.setattr(
        fused_mup.launcher, "launch", lambda *a, **k: launches.append(1) or real(*a, **k)
    )
    row = check_mod.trajectory_case("cpu", "triton", "fp32", "amsgrad", seed=0)
    assert row.status == "pass", row
    assert len(launches) == check_mod.STEPS


def test_user_model_from_module_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def tiny():
                m = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
                m[2].to(torch.bfloat16)
                return m
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "out.json"
    code = main(["--device", "cpu", "--dtypes", "fp32", "--model", "my_models:tiny",
                 "--model-steps", "5", "--json", str(path)])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    rows = [r for r in json.loads(path.read_text())["rows"] if r["case"].startswith("model")]
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    assert all(r["status"] == "pass" for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dtypes", "fp8"], "unknown"),
        (["--model", "no_colon"], "module:factory"),
        (["--model", "json:nothing_here"], "not a callable"),
        (["--model-steps", "0"], "at least 1"),
        (["--device", "tpu"], "--device"),
    ],
    ids=["dtype", "model-syntax", "model-missing", "steps", "device"],
)
def test_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cpu", *args] if args[0] != "--device" else args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_cuda_requested_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda"])
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
