"""fused_mup.torch_compat: each fallback, with the torch API it replaces removed, does what the
API did; the list of private APIs covers every one the package names; the tested versions are
noxfile.py's."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
import torch
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup import torch_compat

FP32 = torch.float32
ROOT = Path(__file__).resolve().parent.parent


def _tensors(n: int, amsgrad: bool) -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(17, 5), (64,), (1,)][:n]
    rand = lambda s, k=1.0: (torch.randn(s, generator=gen) * k).float()  # noqa: E731
    return {
        "params": [rand(s) for s in shapes],
        "exp_avgs": [rand(s, 0.1) for s in shapes],
        "exp_avg_sqs": [rand(s, 0.1).abs() for s in shapes],
        "max_exp_avg_sqs": [rand(s, 0.2).abs() for s in shapes] if amsgrad else [],
        "steps": [torch.tensor(float(k)) for k in (0, 4, 9)[:n]],
    }


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_fused_adamw_fallback_equals_torch_op(amsgrad, maximize):
    """Four steps through torch._fused_adamw_ and through the fallback, from the same state:
    a grad scale, an inf step that must change nothing, then plain steps."""
    ours, theirs = _tensors(3, amsgrad), _tensors(3, amsgrad)
    gen = torch.Generator().manual_seed(5)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) * 8.0 for p in ours["params"]]
        found_inf = torch.tensor([1.0 if step == 1 else 0.0])
        before = copy.deepcopy(ours)
        ops = ((ours, torch_compat._fused_adamw_fallback), (theirs, torch._fused_adamw_))
        for state, op in ops:
            torch._foreach_add_(state["steps"], 1)  # as cpu_fused: the op takes counted steps
            op(
                state["params"],
                [g.clone() for g in grads],
                state["exp_avgs"],
                state["exp_avg_sqs"],
                state["max_exp_avg_sqs"],
                state["steps"],
                lr=3e-2,
                beta1=0.9,
                beta2=0.99,
                weight_decay=0.1,
                eps=1e-8,
                amsgrad=amsgrad,
                maximize=maximize,
                grad_scale=torch.tensor([8.0]),
                found_inf=found_inf,
            )
        for key in ours:
            for i, (a, b) in enumerate(zip(ours[key], theirs[key])):
                assert_close(a, b, FP32, f"step {step}: {key}[{i}]")
                if step == 1 and key != "steps":
                    assert torch.equal(a, before[key][i]), f"inf step moved {key}[{i}]"
        if step != 1:
            assert not torch.equal(ours["params"][0], before["params"][0]), f"step {step}"


def test_adamw_without_torch_fused_op_matches_torch_adamw(monkeypatch):
    """backend='auto' on CPU with torch._fused_adamw_ gone: the fallback runs (counted) and six
    steps of a two-group model equal torch.optim.AdamW's."""
    monkeypatch.delattr(torch, "_fused_adamw_")
    calls = []
    real = torch_compat._fused_adamw_fallback
    monkeypatch.setattr(
        torch_compat, "_fused_adamw_fallback", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    ref_model = copy.deepcopy(model)
    groups = lambda m: [  # noqa: E731
        {"params": m[0].parameters(), "weight_decay": 0.1},
        {"params": m[2].parameters(), "lr": 2e-2, "amsgrad": True},
    ]
    opt = fused_mup.AdamW(groups(model), lr=1e-2)
    ref = torch.optim.AdamW(groups(ref_model), lr=1e-2, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = torch.randn(5, 6, generator=gen)
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert len(calls) == 6 * 2, "the fallback must run once per group per step"
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(a, b, FP32, f"{name} after 6 steps without torch._fused_adamw_")


@pytest.mark.parametrize("internals", [True, False], ids=["handover", "no-internals"])
def test_clip_with_grad_scaler_with_and_without_scaler_internals(monkeypatch, internals):
    """clip_grad_norm_(grad_scaler=...) where GradScaler's internals are not found: the scaler
    unscales itself first (no handover), and the trajectory, with an inf step, is still
    torch's unscale_ + clip_grad_norm_ + scaler.step."""
    if not internals:
        monkeypatch.setattr(torch_compat, "OptState", None)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    ref_model = copy.deepcopy(model)
    opt = fused_mup.AdamW(model.parameters(), lr=1e-2, backend="reference")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    sc, sc_ref = (torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2))
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.randn(5, 6, generator=gen)
        for m, o, s in ((model, opt, sc), (ref_model, ref, sc_ref)):
            o.zero_grad()
            s.scale(m(x).square().mean() * 10).backward()
            if step == 2:
                m[2].weight.grad[0, 0] = float("inf")
            if o is opt:
                norm = opt.clip_grad_norm_(0.05, grad_scaler=s)
                assert opt._step_supports_amp_scaling is internals, "handover or not"
            else:
                s.unscale_(o)
                ref_norm = nn.utils.clip_grad_norm_(m.parameters(), 0.05)
            s.step(o)
            s.update()
        if step != 2:
            assert_close(norm, ref_norm, FP32, f"step {step}: norm")
        assert sc.get_scale() == sc_ref.get_scale(), f"step {step}: scale"
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(a, b, FP32, f"{name} after scaled, clipped steps")
    assert {st["step"].item() for st in opt.state.values()} == {4.0}, "the inf step counted"


# Set in order (dicts, lists padded with None, nested), then all read back with misses.
PATHS = [("a", "b"), ("a", "c"), ("l", 0), ("l", 2, "x"), ("n", "m", 1)]
MISSES = [("a",), ("a", "z"), ("l", 1), ("l", 9), ("n", "m", 0), ("q", 0)]


def test_traverse_fallbacks_equal_torchs():
    from torch.distributed.checkpoint import _traverse

    built, built_ref = {}, {}
    for i, path in enumerate(PATHS):
        torch_compat._set_element(built, path, i)
        _traverse.set_element(built_ref, path, i)
    assert built == built_ref, (built, built_ref)
    for path in PATHS + MISSES:
        got = torch_compat._get_element(built, path, "default")
        assert got == _traverse.get_element(built_ref, path, "default"), path


def test_tested_versions_are_noxfiles():
    """TESTED_TORCH (and the module's docstring) list exactly the torch pins of noxfile.py."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    pins = {
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Stack"
        for kw in node.keywords
        if kw.arg == "torch"
    }
    assert pins == set(torch_compat.TESTED_TORCH)
    for version in pins:
        assert version in torch_compat.__doc__, version


# torch.<anything>._private, and private attributes read off GradScaler and wrappers.
_PRIVATE = re.compile(r"\btorch(?:\.\w+)*\._[A-Za-z]\w*|\b_(?:orig_mod|\w+_wrapped_module)\b")


def test_every_private_torch_name_in_the_package_is_listed():
    sources = [*(ROOT / "fused_mup").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]
    used = {
        name
        for path in sources
        if path.name != "torch_compat.py"
        for name in _PRIVATE.findall(path.read_text())
    }
    assert "torch._fused_adamw_" in used  # the scan sees what it must
    missing = sorted(name for name in used if name not in torch_compat.__doc__)
    assert not missing, f"private torch APIs not listed in fused_mup/torch_compat.py: {missing}"
