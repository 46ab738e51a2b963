"""Preset "sp" (create_optimizer's default) takes any nn.Module; μP presets refuse what they cannot
classify, naming the param and the overrides that fix it.

The default for a matrix module types cannot classify under "sp": it decays (role "hidden"); every
vector (bias, norm gain) does not. Checked on nn.TransformerEncoder, a torchvision-style CNN, an
LSTM, a single nn.Linear and tiny HF models built from their configs (no downloads), each against
torch.optim.AdamW given the two groups by hand.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable

import pytest
import torch
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup.presets import PRESETS, param_groups
from fused_mup.presets.roles import AmbiguousRoleError


class SmallCNN(nn.Module):
    """torchvision's shape: a conv / BatchNorm feature stack, pooling and one Linear head."""

    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)


def transformer_encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(24, 4, dim_feedforward=40, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(24), enable_nested_tensor=False)


def hf_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)  # Conv1D layers, wte tied to lm_head


def hf_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "transformer-encoder": transformer_encoder,
    "cnn": SmallCNN,
    "lstm": lambda: nn.LSTM(6, 10, num_layers=2),
    "linear": lambda: nn.Linear(7, 5),
    "hf-gpt2": hf_gpt2,
    "hf-bert": hf_bert,
}


def decays(groups: list[dict]) -> dict[int, bool]:
    return {id(p): g["wd_mult"] != 0.0 for g in groups for p in g["params"]}


@pytest.mark.parametrize("make", list(MODELS.values()), ids=list(MODELS))
def test_sp_groups_cover_every_param_once_and_decay_matrices_only(make):
    model = make()
    groups = param_groups(model, "sp")
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a param in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}
    want = {id(p): p.ndim >= 2 for p in model.parameters()}
    assert decays(groups) == want
    assert {g["lr_mult"] for g in groups} == {1.0}
    assert {g["wd_mult"] for g in groups} == {0.0, 1.0}


@pytest.mark.parametrize("make", list(MODELS.values()), ids=list(MODELS))
def test_create_optimizer_steps_as_torch_adamw_with_the_two_groups(make):
    """fused_mup.create_optimizer(model) == torch.optim.AdamW([matrices], [vectors, wd 0]) over
    5 steps of random grads; a decayed vector or an undecayed matrix moves a param by ~5e-4."""
    torch.manual_seed(0)
    model = make()
    theirs = copy.deepcopy(model)
    opt = fused_mup.create_optimizer(model, lr=1e-2, weight_decay=0.1)
    matrices = [p for p in theirs.parameters() if p.ndim >= 2]
    vectors = [p for p in theirs.parameters() if p.ndim < 2]
    ref = torch.optim.AdamW(
        [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1
    )
    for _ in range(5):
        for a, b in zip(model.parameters(), theirs.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    named = zip(model.named_parameters(), theirs.parameters(), strict=True)
    for (n, a), b in named:
        assert_close(a.detach(), b.detach(), torch.float32, n)


def test_overrides_change_the_default():
    model = nn.Linear(7, 5)
    groups = param_groups(model, "sp", overrides={"weight": "vector", "bias": "hidden"})
    assert decays(groups) == {id(model.weight): False, id(model.bias): True}
    lstm = nn.LSTM(6, 10)
    groups = param_groups(lstm, "sp", overrides={"weight_hh_*": "vector"})
    assert decays(groups)[id(lstm.weight_hh_l0)] is False
    assert decays(groups)[id(lstm.weight_ih_l0)] is True


def test_cnn_is_classified_for_mup_too():
    """The first conv reads the input, the head is the readout: μP needs no overrides."""
    roles = {n: i.role for n, i in fused_mup.param_roles(SmallCNN(), width_mult=2.0).items()}
    assert roles == {
        "features.0.weight": "embedding",
        "features.1.weight": "vector",
        "features.1.bias": "vector",
        "features.3.weight": "hidden",
        "features.4.weight": "vector",
        "features.4.bias": "vector",
        "fc.weight": "readout",
        "fc.bias": "vector",
    }


AMBIGUOUS = {
    "transformer-encoder": (transformer_encoder, ["layers.0.self_attn.in_proj_weight"]),
    "lstm": (lambda: nn.LSTM(6, 10, num_layers=2), ["weight_ih_l0", "weight_hh_l1"]),
    "linear": (lambda: nn.Linear(7, 5), ["weight"]),
}
MUP_PRESETS = [p for p in PRESETS if p != "sp"]


def _suggested_overrides(message: str) -> dict[str, str]:
    start = message.index("e.g. overrides=") + len("e.g. overrides=")
    end = message.index("}", start) + 1
    return ast.literal_eval(message[start:end])


@pytest.mark.parametrize("preset", MUP_PRESETS)
@pytest.mark.parametrize("case", list(AMBIGUOUS.values()), ids=list(AMBIGUOUS))
def test_mup_presets_refuse_naming_the_param_and_the_overrides_that_fix_it(case, preset):
    make, names = case
    with pytest.raises(AmbiguousRoleError) as err:
        param_groups(make(), preset, width_mult=2.0)
    msg = str(err.value)
    assert msg.startswith(f"preset {preset!r}: cannot tell the role of ")
    for n in names:
        assert repr(n) in msg
    # The overrides the message shows are valid as written: they make the same call work.
    overrides = _suggested_overrides(msg)
    groups = param_groups(make(), preset, width_mult=2.0, overrides=overrides)
    assert {n for g in groups for n in g["param_names"]} >= set(names)


def test_refusal_message_for_a_single_linear():
    with pytest.raises(ValueError) as err:
        param_groups(nn.Linear(7, 5), "mup", width_mult=2.0)
    assert str(err.value) == (
        "preset 'mup': cannot tell the role of 1 parameter from module types: 'weight' "
        "(shape (5, 7) in Linear). Name the role with overrides={glob pattern: role} (roles "
        "('embedding', 'hidden', 'readout', 'vector')), e.g. overrides={'weight': 'hidden'}, or "
        "pass base_model= (with delta_model= at the base width) so that shapes decide. The role "
        "sets the numbers here (lr_mult embedding m^0, hidden m^-1, readout m^0; decay "
        "embedding 1, hidden 1, readout 1); preset 'sp' with the default decay takes any model"
    )


def test_repeated_layers_get_one_glob_in_the_suggestion():
    with pytest.raises(ValueError, match="3 parameters") as err:
        param_groups(
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(8, 2, 16), 3, enable_nested_tensor=False
            ),
            "mup",
            width_mult=2.0,
        )
    assert _suggested_overrides(str(err.value)) == {"layers.*.self_attn.in_proj_weight": "hidden"}


def test_sp_refuses_too_where_a_decay_tells_matrix_roles_apart():
    with pytest.raises(ValueError, match=r"preset 'sp'.*'weight_ih_l0'.*decay embedding 0"):
        param_groups(nn.LSTM(6, 10), "sp", decay={"embedding": 0.0})
    # Only vectors' decay changed: every matrix role still gets the same numbers.
    groups = param_groups(nn.LSTM(6, 10), "sp", decay={"vector": 1.0})
    assert {g["wd_mult"] for g in groups} == {1.0}


def test_base_model_resolves_what_module_types_cannot():
    lstm = param_groups(nn.LSTM(6, 32), "mup", base_model=nn.LSTM(6, 8))
    roles = {n: g["role"] for g in lstm for n in g["param_names"]}
    assert roles["weight_hh_l0"] == "hidden" and roles["weight_ih_l0"] == "embedding"
