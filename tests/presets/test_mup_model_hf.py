"""μP's model side on an HF model survives save_pretrained / from_pretrained: recorded in the
config by mup_model_, re-applied by one call after loading. Tiny GPT-2 built from a config."""

from __future__ import annotations

import json

import pytest
import torch

import fused_mup

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


def gpt2(width: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=96, n_positions=32, n_embd=width, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def test_mup_model_survives_save_and_load(tmp_path):
    model = gpt2(64)  # width 64, base width 16: m = 4, head_dim 32, base head_dim 8
    tokens = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    sp_logits = model(tokens).logits
    settings = fused_mup.mup_model_(model, width_mult=4.0, base_d_head=8)
    assert settings == {"width_mult": 4.0, "base_d_head": 8}
    attn = model.transformer.h[0].attn
    assert attn.scaling == fused_mup.attention_scale(32, 8) == 8**0.5 / 32
    mup_logits = model(tokens).logits
    assert not torch.allclose(mup_logits, sp_logits)

    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["fused_mup"] == settings
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    # What from_pretrained alone gives: the SP forward, not the model that was saved.
    torch.testing.assert_close(loaded(tokens).logits, sp_logits)
    assert fused_mup.mup_model_(loaded) == settings  # re-applied from config.json
    torch.testing.assert_close(loaded(tokens).logits, mup_logits, rtol=0, atol=0)


def test_mup_model_is_idempotent_and_equals_the_helpers():
    model = gpt2(64)
    tokens = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    fused_mup.mup_model_(model, width_mult=4.0, base_d_head=8)
    once = model(tokens).logits
    fused_mup.mup_model_(model, width_mult=4.0, base_d_head=8)  # replaces, does not stack
    torch.testing.assert_close(model(tokens).logits, once, rtol=0, atol=0)
    by_hand = gpt2(64)
    fused_mup.scale_readout_(by_hand.lm_head, 1 / 4)
    for block in by_hand.transformer.h:
        block.attn.scaling = fused_mup.attention_scale(32, 8)
    torch.testing.assert_close(by_hand(tokens).logits, once, rtol=0, atol=0)


def test_mup_model_without_settings_says_what_to_pass():
    with pytest.raises(ValueError, match="width_mult="):
        fused_mup.mup_model_(gpt2(32))
    with pytest.raises(ValueError, match="readout="):
        fused_mup.mup_model_(torch.nn.Linear(3, 3), width_mult=2.0)


def test_gpt2_mup_groups_with_width_mult():
    """HF GPT-2 as is: tied lm_head, Conv1D blocks; width_mult alone classifies it."""
    model = gpt2(64)
    groups = fused_mup.param_groups(model, "mup", width_mult=4.0, lr=1e-3, weight_decay=0.1)
    roles = {n: g["role"] for g in groups for n in g["param_names"]}
    assert roles["transformer.wte.weight"] == "embedding"  # the tie, without tied=
    assert roles["transformer.wpe.weight"] == "embedding"
    assert roles["transformer.h.0.attn.c_attn.weight"] == "hidden"
    assert roles["transformer.h.1.mlp.c_proj.weight"] == "hidden"
    assert roles["transformer.h.0.ln_1.weight"] == "vector"
    hidden = next(g for g in groups if g["role"] == "hidden")
    assert hidden["lr_mult"] == 0.25 and hidden["width_mult"] == 4.0
    fused_mup.mup_init_(groups, zero_readout=True)  # nothing tied gets zeroed
    assert model.transformer.wte.weight.abs().sum() > 0
