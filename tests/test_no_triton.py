"""Install anywhere: without triton, ``import fused_mup``, the presets, the CPU path and
``fused-mup check --device cpu`` work, and asking for the kernel names how to install triton.

Each check runs in a fresh interpreter where triton cannot be imported, two ways: absent (as
importlib sees a machine without it: ``find_spec`` None, ``import`` ModuleNotFoundError), and
refused by a meta-path finder that raises on ``import triton`` (as a broken install does)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TRITON = {
    "absent": """
import os, sys
sys.modules["triton"] = None  # the import system's "not installed"
os.environ.pop("TRITON_INTERPRET", None)
""",
    "refused": """
import importlib.abc, os, sys

class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTriton())
os.environ.pop("TRITON_INTERPRET", None)
""",
}


@pytest.fixture(params=list(BLOCK_TRITON))
def how(request) -> str:
    return request.param


def run_without_triton(how: str, body: str) -> subprocess.CompletedProcess:
    code = BLOCK_TRITON[how] + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_everything_but_the_kernel_runs_without_triton(how):
    """One interpreter per way (each start imports torch): import, presets, CPU steps equal to
    torch.optim.AdamW, `fused-mup check --device cpu`, `--help`, and the kernel's message."""
    out = run_without_triton(
        how,
        """
        import fused_mup
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.Linear(32, 50))
        theirs = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.Linear(32, 50))
        theirs.load_state_dict(model.state_dict())
        groups = fused_mup.param_groups(model, "mup", width_mult=2.0, decay={"vector": 1.0})
        opt = fused_mup.AdamW(groups, lr=1e-2, weight_decay=0.1)
        baked = fused_mup.param_groups(
            theirs, "mup", width_mult=2.0, decay={"vector": 1.0}, lr=1e-2, weight_decay=0.1,
            bake=True,
        )
        ref = torch.optim.AdamW(baked)
        tokens = torch.randint(0, 50, (4, 8))
        for _ in range(3):
            for m, o in ((model, opt), (theirs, ref)):
                o.zero_grad()
                m(tokens).logsumexp(-1).mean().backward()
                o.step()
        for a, b in zip(model.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        print("steps ok")

        from fused_mup.check import main
        assert main(["--device", "cpu", "--dtypes", "fp32"]) == 0

        from fused_mup import cli
        try:
            cli.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0

        assert sys.modules.get("triton") is None, "something imported triton"

        p = torch.nn.Parameter(torch.randn(5))
        p.grad = torch.randn(5)
        try:
            fused_mup.AdamW([p], backend="triton").step()
        except Exception as exc:  # the type is the core's choice; the message is the contract
            print("KERNEL:", type(exc).__name__, exc)
        else:
            raise SystemExit("backend='triton' stepped without triton")
        """,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "steps ok" in out.stdout and "PASSED" in out.stdout and "COMMAND" in out.stdout
    (kernel,) = [line for line in out.stdout.splitlines() if line.startswith("KERNEL:")]
    assert "pip install triton" in kernel, kernel


def _triton_requirement() -> Requirement:
    reqs = [Requirement(r) for r in requires("fused-mup") or []]
    (req,) = [r for r in reqs if r.name == "triton"]
    return req


def test_triton_is_required_only_on_linux():
    """As torch's own CUDA wheels declare it: triton wheels exist for Linux only."""
    req = _triton_requirement()
    assert req.marker is not None
    env = default_environment()
    for system, wanted in (("Linux", True), ("Darwin", False), ("Windows", False)):
        assert req.marker.evaluate({**env, "platform_system": system}) is wanted, system
