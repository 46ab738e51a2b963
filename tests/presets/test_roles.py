"""Role and width multiplier of every parameter: module types, shapes against a base, overrides,
wrappers, HF Conv1D, DTensor global shapes."""

from __future__ import annotations

import pytest
import torch
from preset_models import FAMILIES, GPT2Conv, GPT2Like, LlamaLike, mlp, roles_of
from torch import nn

import fused_mup
from fused_mup.presets import param_groups, param_roles


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("how", ["base_model", "width_mult", "base_width_with_delta"])
def test_roles(family: str, how: str) -> None:
    make, expected = FAMILIES[family]
    if how == "base_model":
        model, kw = make(64), {"base_model": make(16)}
    elif how == "width_mult":
        model, kw = make(64), {"width_mult": 4.0}
    else:  # the base width itself: shapes equal base, delta tells the width dims
        model, kw = make(16), {"base_model": make(16), "delta_model": make(32)}
    groups = param_groups(model, "mup", **kw)
    names = [n for n, _ in model.named_parameters()]
    assert roles_of(groups) == {n: expected(n) for n in names}
    # Each parameter exactly once, names aligned with tensors.
    got = [(n, p) for g in groups for n, p in zip(g["param_names"], g["params"], strict=True)]
    assert sorted(n for n, _ in got) == sorted(names)
    params = dict(model.named_parameters())
    assert all(params[n] is p for n, p in got)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_roles_model_equal_to_base_falls_back_to_module_types(family: str) -> None:
    # Width 16 equals GPT2Like's positional table size: it must not look like a readout.
    make, expected = FAMILIES[family]
    groups = param_groups(make(16), "mup", base_model=make(16))
    assert roles_of(groups) == {n: expected(n) for n, _ in make(16).named_parameters()}
    assert {g["width_mult"] for g in groups} == {1.0}


def test_width_mult_is_fan_in_ratio_per_tensor() -> None:
    # Hidden width 64 -> 256 (m=4) but the MLP's inner dim scales 4x more on one model:
    # mup's per-tensor fan-in multiplier.
    model, base = mlp(256), mlp(64)
    info = param_roles(model, base_model=base)
    assert info["0.weight"] == ("embedding", 4.0, ("0.weight",))  # fan-out is the width dim
    assert info["2.weight"].width_mult == 4.0
    assert info["4.weight"] == ("readout", 4.0, ("4.weight",))
    assert info["4.bias"].width_mult == 1.0  # no width dim
    assert info["0.bias"].width_mult == 4.0


def test_base_model_on_meta_device() -> None:
    with torch.device("meta"):
        base = GPT2Like(16)
    a = param_roles(GPT2Like(64), base_model=base)
    assert a == param_roles(GPT2Like(64), base_model=GPT2Like(16))


def test_frozen_params_skipped() -> None:
    model = mlp(32)
    model[0].weight.requires_grad_(False)
    names = {n for g in param_groups(model, "sp") for n in g["param_names"]}
    assert "0.weight" not in names and "2.weight" in names


def test_overrides() -> None:
    groups = param_groups(
        LlamaLike(64),
        "mup",
        base_model=LlamaLike(16),
        overrides={"layers.*.mlp.down_proj.weight": "readout"},
    )
    roles = roles_of(groups)
    assert roles["layers.1.mlp.down_proj.weight"] == "readout"
    assert roles["layers.1.mlp.up_proj.weight"] == "hidden"


def test_wrapped_models_are_unwrapped() -> None:
    """torch.compile's `_orig_mod.`, DDP's / DataParallel's `module.`: same groups as unwrapped."""
    torch.manual_seed(0)
    model, base = LlamaLike(32), LlamaLike(8)
    want = [
        (g["role"], g["lr_mult"], g["param_names"])
        for g in param_groups(model, "mup", base_model=base)
    ]
    compiled = torch.compile(model)  # an OptimizedModule; nothing is compiled until a call
    inner = LlamaLike(32)
    inner.layers[0] = torch.compile(inner.layers[0])  # `layers.0._orig_mod.q_proj.weight`
    for wrapped in (compiled, nn.DataParallel(model), torch.compile(nn.DataParallel(model)), inner):
        got = param_groups(wrapped, "mup", base_model=torch.compile(base))
        assert [(g["role"], g["lr_mult"], g["param_names"]) for g in got] == want
    assert fused_mup.presets.unwrap_model(torch.compile(nn.DataParallel(model))) is model


def test_conv1d_with_width_mult_and_base_model_agree() -> None:
    by_mult = param_groups(GPT2Conv(64), "mup", width_mult=4.0)
    by_base = param_groups(GPT2Conv(64), "mup", base_model=GPT2Conv(16))
    summary = lambda gs: {n: (g["role"], g["width_mult"]) for g in gs for n in g["param_names"]}  # noqa: E731
    assert summary(by_mult) == summary(by_base)
    assert summary(by_mult)["c_fc.weight"] == ("hidden", 4.0)
    assert summary(by_mult)["c_proj.weight"] == ("hidden", 4.0)


def test_width_equal_to_vocab_still_finds_the_head_by_type():
    """Byte-level model at d = 256 = vocab: hidden d x d Linears also map onto 256 outputs."""

    class ByteLM(nn.Module):
        def __init__(self, d=256, vocab=256):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(256, d)
            self.q, self.down = nn.Linear(d, d), nn.Linear(4 * d, d)
            self.head = nn.Linear(d, vocab, bias=False)

    roles = {k: v.role for k, v in fused_mup.param_roles(ByteLM(), width_mult=4.0).items()}
    assert roles["head.weight"] == "readout"
    assert roles["q.weight"] == roles["down.weight"] == "hidden"


def test_no_tensor_attributes() -> None:
    model = GPT2Like(32)
    before = [set(vars(p)) for p in model.parameters()]
    param_groups(model, "mup", base_model=GPT2Like(8), lr=1e-3, weight_decay=0.0, bake=True)
    assert [set(vars(p)) for p in model.parameters()] == before


def test_presets_agree_before_and_after_fully_shard() -> None:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def summary(groups: list[dict]) -> list[tuple]:
        return [
            (g["role"], g["width_mult"], g["lr_mult"], g["wd_mult"], tuple(g["param_names"]))
            for g in groups
        ]

    torch.manual_seed(0)
    model, base = LlamaLike(32), LlamaLike(8)
    before = summary(param_groups(model, "mup", base_model=base))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert type(model.lm_head.weight).__name__ == "DTensor"
        assert summary(param_groups(model, "mup", base_model=base)) == before
    finally:
        dist.destroy_process_group()


def test_global_shape_never_to_local() -> None:
    """A sharded param reports its global shape; presets must not look at the local shard."""

    class Sharded(nn.Parameter):
        def to_local(self) -> torch.Tensor:
            raise AssertionError("to_local() called")

    model = mlp(64)
    model[2].weight = Sharded(model[2].weight.detach())
    assert param_roles(model, base_model=mlp(16))["2.weight"].width_mult == 4.0
