"""Tests for fused_mup.presets: roles, multipliers, errors, bake, MuAdamW parity."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

import fused_mup
from fused_mup.presets import (
    DEFAULT_DECAY,
    PRESETS,
    ROLES,
    OutputScale,
    attention_scale,
    mup_init_,
    param_groups,
    param_roles,
    scale_readout_,
)

VOCAB = 50

# --------------------------------------------------------------------------------------------
# Three model families
# --------------------------------------------------------------------------------------------


class GPT2Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)


class GPT2Like(nn.Module):
    def __init__(self, d: int, tied: bool = False, n_layer: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.wpe = nn.Embedding(16, d)
        self.h = nn.ModuleList(GPT2Block(d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight


class SwiGLU(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, 3 * d, bias=False)
        self.up_proj = nn.Linear(d, 3 * d, bias=False)
        self.down_proj = nn.Linear(3 * d, d, bias=False)


class LlamaBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d // 2, bias=False)  # GQA: fewer kv heads
        self.v_proj = nn.Linear(d, d // 2, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(d)
        self.mlp = SwiGLU(d)


class LlamaLike(nn.Module):
    def __init__(self, d: int, n_layer: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList(LlamaBlock(d) for _ in range(n_layer))
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)


def mlp(w: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 3))


def gpt2_roles(n: str) -> str:
    if n.startswith(("wte", "wpe")):
        return "embedding"
    if n == "lm_head.weight":
        return "readout"
    if n.endswith("bias") or ".ln_" in n or n.startswith("ln_f"):
        return "vector"
    return "hidden"


def llama_roles(n: str) -> str:
    if n.startswith("embed_tokens"):
        return "embedding"
    if n == "lm_head.weight":
        return "readout"
    return "vector" if "norm" in n else "hidden"


def mlp_roles(n: str) -> str:
    if n.endswith("bias"):
        return "vector"
    return {"0.weight": "embedding", "2.weight": "hidden", "4.weight": "readout"}[n]


FAMILIES = {
    "gpt2": (GPT2Like, gpt2_roles),
    "llama": (LlamaLike, llama_roles),
    "mlp": (mlp, mlp_roles),
}


def roles_of(groups: list[dict]) -> dict[str, str]:
    return {n: g["role"] for g in groups for n in g["param_names"]}


# --------------------------------------------------------------------------------------------
# Role classification
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RawParam(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.w_qkv = nn.Parameter(torch.randn(d, 3 * d))
        self.head = nn.Linear(d, VOCAB)


@pytest.mark.parametrize("preset", ["mup_lr", "sp_emb", "sp_emb_sqrt"])
def test_tied_raises_naming_both_where_the_role_matters(preset: str) -> None:
    with pytest.raises(ValueError, match=r"tied.*'wte\.weight'.*'lm_head\.weight'.*" + preset):
        param_groups(GPT2Like(64, tied=True), preset, base_model=GPT2Like(16, tied=True))
    with pytest.raises(ValueError, match=r"'wte\.weight'.*'lm_head\.weight'"):
        param_groups(GPT2Like(64, tied=True), preset, width_mult=4.0)
    # param_roles knows no preset: a tie always needs a policy there.
    with pytest.raises(ValueError, match=r"'wte\.weight'.*'lm_head\.weight'"):
        param_roles(GPT2Like(64, tied=True), width_mult=4.0)


@pytest.mark.parametrize("preset", ["sp", "mup"])
def test_tied_needs_no_policy_where_the_role_does_not_matter(preset: str) -> None:
    """sp and mup give embedding and readout the same lr_mult and decay: the tie is the
    embedding (mup's MuSharedReadout), so mup_init_ never zeroes it."""
    model = GPT2Like(64, tied=True)
    groups = param_groups(model, preset, base_model=GPT2Like(16, tied=True))
    assert roles_of(groups)["wte.weight"] == "embedding"
    assert groups == param_groups(
        model, preset, base_model=GPT2Like(16, tied=True), tied="embedding"
    )
    g = next(g for g in groups if "wte.weight" in g["param_names"])
    assert g["tied_names"] == {"wte.weight": ["lm_head.weight"]}
    mup_init_(groups, zero_readout=True)
    assert model.wte.weight.abs().sum() > 0
    # A decay that tells the roles apart makes the choice matter again.
    with pytest.raises(ValueError, match="tied="):
        param_groups(model, preset, width_mult=4.0, decay={"readout": 0.0})


def test_zero_readout_refuses_to_zero_a_tied_embedding() -> None:
    model = GPT2Like(64, tied=True)
    groups = param_groups(model, "mup", base_model=GPT2Like(16, tied=True), tied="readout")
    with pytest.raises(ValueError, match=r"zero_readout=True would zero 'wte\.weight'.*lm_head"):
        mup_init_(groups, zero_readout=True)
    assert model.wte.weight.abs().sum() > 0
    mup_init_(groups, zero_readout=False)  # the non-destructive init is fine


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


class HFConv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: weight stored (in_features, out_features)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))


class GPT2Conv(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.c_attn = HFConv1D(3 * d, d)
        self.c_fc = HFConv1D(4 * d, d)
        self.c_proj = HFConv1D(d, 4 * d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)


HFConv1D.__name__ = "Conv1D"


def test_conv1d_with_width_mult_and_base_model_agree() -> None:
    by_mult = param_groups(GPT2Conv(64), "mup", width_mult=4.0)
    by_base = param_groups(GPT2Conv(64), "mup", base_model=GPT2Conv(16))
    summary = lambda gs: {n: (g["role"], g["width_mult"]) for g in gs for n in g["param_names"]}  # noqa: E731
    assert summary(by_mult) == summary(by_base)
    assert summary(by_mult)["c_fc.weight"] == ("hidden", 4.0)
    assert summary(by_mult)["c_proj.weight"] == ("hidden", 4.0)


@pytest.mark.parametrize("policy", ["embedding", "readout"])
def test_tied_with_policy(policy: str) -> None:
    model = GPT2Like(64, tied=True)
    groups = param_groups(model, "mup_lr", base_model=GPT2Like(16, tied=True), tied=policy)
    roles = roles_of(groups)
    assert roles["wte.weight"] == policy and "lm_head.weight" not in roles
    g = next(g for g in groups if "wte.weight" in g["param_names"])
    assert g["lr_mult"] == (1.0 if policy == "embedding" else 0.25)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_ambiguous_raw_parameter_names_it() -> None:
    with pytest.raises(ValueError, match=r"'w_qkv'.*RawParam.*overrides"):
        param_groups(RawParam(64), "mup", width_mult=4.0)
    # A base model or an override resolves it.
    assert roles_of(param_groups(RawParam(64), "mup", base_model=RawParam(16)))["w_qkv"] == "hidden"
    groups = param_groups(RawParam(64), "mup", width_mult=4.0, overrides={"w_qkv": "hidden"})
    assert roles_of(groups)["w_qkv"] == "hidden"


def test_ambiguous_single_linear() -> None:
    with pytest.raises(ValueError, match=r"'weight'.*Linear"):
        param_groups(nn.Linear(8, 8), "mup", width_mult=2.0)


def test_ambiguous_width_dim_in_kernel() -> None:
    class K(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 4, k))

    with pytest.raises(ValueError, match=r"'w'"):
        param_roles(K(8), base_model=K(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "nope", "width_mult": 2.0}, "unknown preset"),
        ({"preset": "mup"}, "base_model= or width_mult="),
        ({"preset": {"hidden": -1.0}, "width_mult": 2.0}, "exactly the roles"),
        ({"width_mult": 2.0, "weight_decay_mode": "decoupled"}, "weight_decay_mode"),
        ({"width_mult": 2.0, "decay": {"bias": 0.0}}, "unknown roles"),
        ({"width_mult": 2.0, "overrides": {"nothing.*": "hidden"}}, "matched no parameter"),
        ({"width_mult": 2.0, "overrides": {"0.weight": "input"}}, "role must be"),
        ({"width_mult": 2.0, "base_model": mlp(8)}, "not both"),
        ({"width_mult": 2.0, "tied": "both"}, "tied must be"),
    ],
    ids=[
        "unknown-preset",
        "no-width-info",
        "partial-table",
        "bad-mode",
        "bad-decay-role",
        "unmatched-override",
        "bad-override-role",
        "base-and-scalar",
        "bad-tied-policy",
    ],
)
def test_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        param_groups(mlp(16), **kwargs)


def test_base_model_name_mismatch() -> None:
    with pytest.raises(ValueError, match="missing"):
        param_groups(GPT2Like(32), "mup", base_model=LlamaLike(16))


# --------------------------------------------------------------------------------------------
# Multipliers
# --------------------------------------------------------------------------------------------

M = 4.0
# Expected lr_mult per preset and role at m = 4 (the table).
LR_TABLE = {
    "sp": {"embedding": 1, "hidden": 1, "readout": 1, "vector": 1},
    "mup": {"embedding": 1, "hidden": 1 / M, "readout": 1, "vector": 1},
    "mup_lr": {"embedding": 1, "hidden": 1 / M, "readout": 1 / M, "vector": 1},
    "sp_emb": {"embedding": M, "hidden": 1, "readout": 1, "vector": 1},
    "sp_emb_sqrt": {"embedding": 2.0, "hidden": 1, "readout": 1, "vector": 1},
}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_multipliers(preset: str, mode: str) -> None:
    groups = param_groups(
        GPT2Like(64),
        preset,
        base_model=GPT2Like(16),
        lr=3e-3,
        weight_decay=0.1,
        weight_decay_mode=mode,
        betas=(0.9, 0.95),
    )
    seen = set()
    for g in groups:
        role = g["role"]
        seen.add(role)
        want_lr = LR_TABLE[preset][role]
        assert g["lr_mult"] == pytest.approx(want_lr, rel=1e-15)
        width_wd = 1 / want_lr if mode == "coupled" else 1.0
        assert g["wd_mult"] == pytest.approx(DEFAULT_DECAY[role] * width_wd, rel=1e-15)
        assert g["lr"] == 3e-3 and g["weight_decay"] == 0.1
        assert g["weight_decay_mode"] == mode and g["preset"] == preset
        assert g["betas"] == (0.9, 0.95)
        assert len(g["params"]) == len(g["param_names"])
        if role != "vector":
            assert g["width_mult"] == M
    assert seen == set(ROLES)


def test_custom_exponent_table() -> None:
    table = {"embedding": 0.0, "hidden": -0.5, "readout": -1.0, "vector": 0.0}
    groups = param_groups(mlp(64), table, base_model=mlp(16))
    by_role = {g["role"]: g for g in groups}
    assert by_role["hidden"]["lr_mult"] == 0.5 and by_role["hidden"]["wd_mult"] == 2.0
    assert by_role["readout"]["lr_mult"] == 0.25 and by_role["readout"]["wd_mult"] == 4.0
    assert by_role["hidden"]["preset"] == "custom"


def test_decay_overrides_merge_with_defaults() -> None:
    groups = param_groups(mlp(64), "sp", width_mult=4.0, decay={"embedding": 0.0})
    wd = {g["role"]: g["wd_mult"] for g in groups}
    assert wd == {"embedding": 0.0, "vector": 0.0, "hidden": 1.0, "readout": 1.0}


def test_sp_without_width_info_is_allowed() -> None:
    groups = param_groups(LlamaLike(32), "sp")
    assert {g["lr_mult"] for g in groups} == {1.0}


# --------------------------------------------------------------------------------------------
# bake=True against torch.optim.AdamW
# --------------------------------------------------------------------------------------------


def _one_step(model: nn.Module, groups: list[dict], steps: int = 1, sched: bool = False) -> None:
    opt = torch.optim.AdamW(groups)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t) if sched else None
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        if lr_sched:
            lr_sched.step()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_bake_coupled_matches_reference(preset: str) -> None:
    """Baked groups under torch AdamW: lr = lr·lr_mult, decay factor 1 − lr_eff·wd_eff."""
    torch.manual_seed(0)
    model = GPT2Like(32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kw = {"base_model": GPT2Like(8), "lr": 1e-2, "weight_decay": 0.1}
    plain = param_groups(model, preset, **kw)
    baked = param_groups(model, preset, bake=True, **kw)
    for g, b in zip(plain, baked, strict=True):
        assert b["lr"] == pytest.approx(g["lr"] * g["lr_mult"], rel=1e-15)
        assert b["weight_decay"] == pytest.approx(g["weight_decay"] * g["wd_mult"], rel=1e-15)
        assert (b["lr_mult"], b["wd_mult"], b["weight_decay_mode"]) == (1.0, 1.0, "coupled")
    _one_step(model, baked)
    for g in plain:
        lr_eff, wd_eff = g["lr"] * g["lr_mult"], g["weight_decay"] * g["wd_mult"]
        for n, p in zip(g["param_names"], g["params"], strict=True):
            # First Adam step with a constant gradient moves by exactly lr_eff (up to eps).
            want = before[n] * (1 - lr_eff * wd_eff) - lr_eff
            torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7)


def test_bake_independent_decay_with_scheduler() -> None:
    """Independent: p ← p·(1 − s_t·wd·wd_mult), s_t = lr_t / initial_lr, under a scheduler."""
    model = mlp(64)
    for p in model.parameters():
        nn.init.constant_(p, 1.0)
    groups = param_groups(
        model, "mup", base_model=mlp(16), lr=1e-2, weight_decay=0.1,
        weight_decay_mode="independent", decay={"vector": 1.0}, bake=True,
    )  # fmt: skip
    _one_step(model, groups, steps=3, sched=True)
    for g in groups:
        lr_eff = 1e-2 * LR_TABLE["mup"][g["role"]]
        x = 1.0
        for t in range(3):
            s_t = 0.5**t
            x = x * (1 - s_t * 0.1) - s_t * lr_eff  # decay free of lr and of m
        for p in g["params"]:
            torch.testing.assert_close(p.detach(), torch.full_like(p, x), rtol=1e-5, atol=1e-6)


def test_bake_needs_lr_and_weight_decay() -> None:
    with pytest.raises(ValueError, match="pass both"):
        param_groups(mlp(8), "sp", lr=1e-3, bake=True)
    with pytest.raises(ValueError, match="pass both"):
        param_groups(mlp(8), "sp", weight_decay=0.1, bake=True)


def test_bake_independent_lr_zero_raises() -> None:
    with pytest.raises(ValueError, match="lr=0"):
        param_groups(
            mlp(8), "sp", lr=0.0, weight_decay=0.1, weight_decay_mode="independent", bake=True
        )


def test_groups_accepted_by_torch_adamw_unbaked() -> None:
    # Extra keys (lr_mult, role, param_names, ...) ride along in a torch optimizer.
    opt = torch.optim.AdamW(param_groups(LlamaLike(32), "mup", width_mult=2.0))
    assert opt.param_groups[0]["param_names"]


# --------------------------------------------------------------------------------------------
# MuAdamW parity (microsoft/mup) and its CPU twin
# --------------------------------------------------------------------------------------------

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
    """CPU twin of the MuAdamW test: same numbers, from a hand-written table."""
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


# --------------------------------------------------------------------------------------------
# Metadata in groups only; DTensor / fully_shard
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Model-side helpers
# --------------------------------------------------------------------------------------------


def test_mup_init_scales_hidden_std() -> None:
    torch.manual_seed(0)
    model = mlp(1024)
    mup_init_(param_groups(model, "mup", base_model=mlp(64)), std=0.5)
    assert model[2].weight.std().item() == pytest.approx(0.5 / 4, rel=0.02)
    assert model[0].weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert model[4].weight.std().item() == pytest.approx(0.5, rel=0.1)
    assert torch.all(model[0].bias == 0)
    mup_init_(param_groups(model, "mup", base_model=mlp(64)), zero_readout=True)
    assert torch.all(model[4].weight == 0)


def test_readout_scale_and_attention_scale() -> None:
    head = nn.Linear(8, 3)
    x = torch.randn(2, 8)
    ref = head(x / 4)
    handle = scale_readout_(head, 0.25)
    torch.testing.assert_close(head(x), ref)
    assert list(head.state_dict()) == ["weight", "bias"]
    handle.remove()
    torch.testing.assert_close(nn.Sequential(OutputScale(0.25), head)(x), ref)
    assert attention_scale(64) == 1 / 64
    assert attention_scale(16, base_d_head=16) == pytest.approx(1 / math.sqrt(16))


def test_public_exports() -> None:
    for name in ("param_groups", "param_roles", "mup_init_", "scale_readout_", "attention_scale"):
        assert hasattr(fused_mup, name)


@pytest.mark.skipif(
    not issubclass(fused_mup.AdamW, torch.optim.Optimizer), reason="fused_mup.AdamW not landed"
)
@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_fused_adamw_plain_groups_match_torch_baked(mode: str) -> None:
    """fused_mup.AdamW reading lr_mult / wd_mult == torch AdamW on baked groups."""
    models = [mlp(64), mlp(64)]
    models[1].load_state_dict(models[0].state_dict())
    kw = {"base_model": mlp(16), "lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": mode}
    opts = [
        fused_mup.AdamW(param_groups(models[0], "mup", **kw)),
        torch.optim.AdamW(param_groups(models[1], "mup", bake=True, **kw)),
    ]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5**t) for o in opts]
    for _ in range(3):
        for model, opt, sched in zip(models, opts, scheds, strict=True):
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.3)
            opt.step()
            sched.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


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


# --------------------------------------------------------------------------------------------
# The optimizer's defaults apply to keys param_groups was not given (issue 10, item 5)
# --------------------------------------------------------------------------------------------


def test_optimizer_lr_and_weight_decay_reach_groups() -> None:
    """The torch habit `AdamW(param_groups(model, "sp"), lr=3e-3, weight_decay=0.1)` trains at
    lr 3e-3 with decay 0.1 (vectors undecayed, the preset's documented default), step for step
    as torch.optim.AdamW given the same two groups by hand."""
    torch.manual_seed(0)
    model, twin = mlp(16), mlp(16)
    twin.load_state_dict(model.state_dict())
    groups = param_groups(model, "sp")
    assert all("lr" not in g and "weight_decay" not in g for g in groups)
    opt = fused_mup.AdamW(groups, lr=3e-3, weight_decay=0.1)
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(3e-3, 0.1)}
    matrices = [p for p in twin.parameters() if p.ndim == 2]
    vectors = [p for p in twin.parameters() if p.ndim < 2]
    ref = torch.optim.AdamW(
        [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}], lr=3e-3, weight_decay=0.1
    )
    w0 = model[0].weight.detach().clone()
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.grad = torch.full_like(a, 0.5)
            b.grad = torch.full_like(b, 0.5)
        opt.step()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # A constant grad moves a weight by lr per step (up to eps); decay shrinks it by lr * wd.
    want = w0
    for _ in range(3):
        want = want * (1 - 3e-3 * 0.1) - 3e-3
    torch.testing.assert_close(model[0].weight.detach(), want, rtol=1e-5, atol=1e-6)


def test_optimizer_defaults_when_nothing_passed() -> None:
    """No lr / weight_decay anywhere: torch's own defaults (1e-3, 0.01), not ours."""
    opt = torch.optim.AdamW(param_groups(mlp(8), "sp"))
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(1e-3, 1e-2)}
    fopt = fused_mup.AdamW(param_groups(mlp(8), "sp"))
    assert {(g["lr"], g["weight_decay"]) for g in fopt.param_groups} == {(1e-3, 1e-2)}


def test_explicit_group_values_win_over_optimizer_defaults() -> None:
    opt = torch.optim.AdamW(param_groups(mlp(8), "sp", lr=1e-2, weight_decay=0.0), lr=3e-3)
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(1e-2, 0.0)}


def test_mup_groups_inherit_lr_and_keep_multipliers() -> None:
    """mup with the optimizer's lr: effective lr is still lr * lr_mult per role."""
    model = mlp(64)
    opt = torch.optim.AdamW(param_groups(model, "mup", base_model=mlp(16)), lr=4e-3)
    eff = {g["role"]: g["lr"] * g["lr_mult"] for g in opt.param_groups}
    assert eff["hidden"] == 1e-3 and eff["embedding"] == 4e-3
