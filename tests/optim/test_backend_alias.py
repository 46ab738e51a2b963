"""backend="torch", the old name of backend="reference": still works, with a FutureWarning."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import fused_mup
from fused_mup.check import _parser

STEPS = 3


def _run(backend: str) -> tuple[list[torch.Tensor], fused_mup.AdamW]:
    torch.manual_seed(0)
    params = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = fused_mup.AdamW(params, lr=1e-2, weight_decay=0.1, backend=backend)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


def test_torch_warns_and_runs_the_reference_path():
    with pytest.warns(FutureWarning, match="backend='torch' is deprecated.*backend='reference'"):
        got, opt = _run("torch")
    assert opt.backend == "reference"
    plan = opt._planner.plan
    # "auto" would send these fp32 CPU params to torch's fused CPU kernel instead.
    assert len(plan.reference) == len(got) and not plan.cpu_fused and not plan.buckets
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns nothing
        want, _ = _run("reference")
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_warning_points_at_the_caller():
    with pytest.warns(FutureWarning) as record:
        fused_mup.AdamW([torch.zeros(2, requires_grad=True)], backend="torch")
    assert record[0].filename == __file__


def test_unknown_backend_lists_the_new_names():
    with pytest.raises(ValueError) as err:
        fused_mup.AdamW([torch.zeros(2, requires_grad=True)], backend="plain")
    assert str(err.value) == (
        "Invalid backend: 'plain'; expected one of ('auto', 'triton', 'reference')"
    )


def test_a_pickle_saying_torch_loads_as_reference():
    """An optimizer pickled before the rename carries backend "torch" in its state."""
    _, opt = _run("reference")
    state = opt.__getstate__()
    state["backend"] = "torch"
    old = fused_mup.AdamW.__new__(fused_mup.AdamW)
    old.__setstate__(state)
    assert old.backend == "reference"
    assert pickle.loads(pickle.dumps(old)).backend == "reference"


def test_check_cli_takes_torch_with_a_warning():
    parser = _parser()
    assert parser.parse_args([]).backend == "auto"
    assert parser.parse_args(["--backend", "reference"]).backend == "reference"
    with pytest.warns(FutureWarning, match="use backend='reference'"):
        assert parser.parse_args(["--backend", "torch"]).backend == "reference"
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "plain"])
