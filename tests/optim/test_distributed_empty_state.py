"""An empty per-param state, as DCP's flattened state dict (torchtitan's format) and a read of
``opt.state[p]`` create for a param that never stepped: every way of reloading works, as with
torch.optim.AdamW, and training goes on to the same params (FSDP2 over DCP:
tests/distributed/test_dcp.py::flattened_empty_state)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from tolerances import assert_close

import fused_mup

RELOADS = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda opt: pickle.loads(pickle.dumps(opt)),
}


def _run(cls, reload: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(5, 3), torch.nn.Linear(5, 2)
    params = [*used.parameters(), *unused.parameters()]
    kwargs = {"backend": "reference"} if cls is fused_mup.AdamW else {}
    opt = cls(params, lr=0.1, **kwargs)
    for step in range(4):
        opt.zero_grad()
        used(torch.randn(4, 5, generator=torch.Generator().manual_seed(step))).sum().backward()
        if step == 2:
            unused.weight.grad = torch.ones_like(unused.weight)  # it steps from here on
        opt.step()
        if step == 1:
            assert len(opt.state[unused.weight]) == 0  # the read creates the empty state
            if reload == "load_state_dict":
                opt.load_state_dict(opt.state_dict())
            elif reload == "torch.save":
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                opt.load_state_dict(torch.load(buf, weights_only=True))
            else:
                copied = RELOADS[reload](opt)
                assert len(copied.state_dict()["state"]) == len(opt.state_dict()["state"])
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("reload", ["load_state_dict", "torch.save", *RELOADS])
def test_empty_param_state_reloads(reload: str) -> None:
    expected = _run(torch.optim.AdamW, reload)
    for i, (got, want) in enumerate(zip(_run(fused_mup.AdamW, reload), expected)):
        assert_close(got, want, torch.float32, f"param {i} after {reload}")
