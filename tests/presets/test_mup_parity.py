"""preset "mup" against microsoft/mup's MuAdamW (bit for bit) and a hand-written table."""

from __future__ import annotations

import importlib.util

import pytest
from preset_models import VOCAB, roles_of
from torch import nn

from fused_mup.presets import param_groups

HAS_MUP = importlib.util.find_spec("mup") is not None


LR, WD = 1e-3, 0.1


def mup_style_model(d: int, readout_cls: type[nn.Linear] = nn.Linear) -> nn.Module:
    """Embedding, 2 hidden layers (d -> 2d -> d), biases, LayerNorm and a readout head."""
    return nn.ModuleDict(
        {
            "emb": nn.Embedding(VOCAB, d),
            "fc1": nn.Linear(d, 2 * d),
            "fc2": nn.Linear(2 * d, d),
            "ln": nn.LayerNorm(d),
            "head": readout_cls(d, VOCAB),
        }
    )


def expected_mup_table(m: float) -> dict[str, tuple[float, float]]:
    """MuAdamW by hand: matrix-like (2 width dims) get lr / m, wd * m; the rest keep lr, wd."""
    hidden = (LR / m, WD * m)
    names = ["emb.weight", "fc1.bias", "fc2.bias", "ln.weight", "ln.bias"]
    names += ["head.weight", "head.bias"]
    return {"fc1.weight": hidden, "fc2.weight": hidden, **{n: (LR, WD) for n in names}}


def effective(groups: list[dict]) -> dict[str, tuple[float, float]]:
    return {
        n: (g["lr"] * g["lr_mult"], g["weight_decay"] * g["wd_mult"])
        for g in groups
        for n in g["param_names"]
    }


@pytest.mark.parametrize("width", [128, 96], ids=["m=4", "m=3"])
def test_mup_matches_hand_table(width: int) -> None:
    """CPU version of the MuAdamW test: same numbers, from a hand-written table."""
    m = width / 32
    kw = {"base_model": mup_style_model(32), "lr": LR, "weight_decay": WD, "decay": {"vector": 1}}
    want = expected_mup_table(m)
    baked = param_groups(mup_style_model(width), "mup", bake=True, **kw)
    assert {n: (g["lr"], g["weight_decay"]) for g in baked for n in g["param_names"]} == want
    got = effective(param_groups(mup_style_model(width), "mup", **kw))
    for n, (lr, wd) in want.items():
        assert got[n][0] == pytest.approx(lr, rel=2.3e-16) and got[n][1] == pytest.approx(wd)
        if m == 4:  # a power of two: lr * (1/m) is exact too
            assert got[n] == (lr, wd)


@pytest.mark.skipif(not HAS_MUP, reason="microsoft/mup not installed (pip install mup==1.0.0)")
@pytest.mark.parametrize("width", [128, 96], ids=["m=4", "m=3"])
@pytest.mark.parametrize("with_delta", [False, True], ids=["base", "base+delta"])
def test_mup_matches_real_muadamw(width: int, with_delta: bool) -> None:
    import mup

    def make(d: int) -> nn.Module:
        return mup_style_model(d, mup.MuReadout)

    model, base, delta = make(width), make(32), make(64)
    mup.set_base_shapes(model, base, delta=delta if with_delta else None)
    opt = mup.MuAdamW(model.parameters(), lr=LR, weight_decay=WD)
    ref = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    kw = {
        "base_model": base,
        "delta_model": delta if with_delta else None,
        "lr": LR,
        "weight_decay": WD,
        "decay": {"vector": 1.0},  # MuAdamW decays every parameter
    }
    ours = param_groups(model, "mup", bake=True, **kw)
    params = dict(model.named_parameters())
    got = {id(params[n]): (g["lr"], g["weight_decay"]) for g in ours for n in g["param_names"]}
    assert got == ref  # bit for bit
    unbaked = effective(param_groups(model, "mup", **kw))
    for n, p in params.items():
        assert unbaked[n] == pytest.approx(ref[id(p)], rel=2.3e-16)
    # No metadata was put on tensors by us (mup's own infshape is there, ours is not).
    assert not any(hasattr(p, "role") or hasattr(p, "lr_mult") for p in model.parameters())
    # And MuReadout is recognised as the readout even without a base model.
    assert roles_of(param_groups(model, "mup", width_mult=width / 32))["head.weight"] == "readout"
