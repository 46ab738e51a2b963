"""HF Trainer with fused_mup: `optimizers=`, `optimizer_cls_and_kwargs=` with the class and with
the model-taking factory (μP groups), each against torch.optim.AdamW. Tiny GPT-2 built from a
config (no download), CPU, a few steps."""

from __future__ import annotations

import pytest
import torch

import fused_mup
from fused_mup.tolerances import TOLERANCES, errors

transformers = pytest.importorskip("transformers")
from accelerate.state import AcceleratorState  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402


def gpt2(width: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=96,
            n_positions=32,
            n_embd=width,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randint(0, 96, (16, 16), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def train(model, tmp_path, **trainer_kwargs) -> GPT2LMHeadModel:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=3e-3,  # used by the Trainer's own AdamW and its scheduler
        weight_decay=0.1,
        max_grad_norm=1.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    Trainer(model=model, args=args, train_dataset=Tokens(), **trainer_kwargs).train()
    return model


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Whole-model trajectories through a transformer: compared by relative RMS error per
    tensor (fp32 forward/backward reductions differ by rounding between runs), against
    fp32's 1e-6 of the tolerance table with 10x for 4 steps of a full model."""
    start = gpt2()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        p, q = p.detach(), q.detach()
        if n.endswith("attn.c_attn.bias"):
            # The key bias's grad is 0 in exact arithmetic (softmax ignores a shift shared by
            # all keys): Adam normalizes rounding noise there into +-lr steps. Query and value
            # biases are compared.
            d = p.numel() // 3
            p, q = torch.cat([p[:d], p[2 * d :]]), torch.cat([q[:d], q[2 * d :]])
        rel, _ = errors(p, q)
        assert rel <= 10 * TOLERANCES[torch.float32]["rel"], f"{n}: relative RMS error {rel:.3g}"
        assert not torch.equal(a.get_parameter(n), start.get_parameter(n)), f"{n} did not train"


def test_optimizer_cls_and_kwargs_with_the_class(tmp_path):
    """Trainer builds its decay / no-decay groups and calls fused_mup.AdamW(groups, **kwargs)."""
    ours = train(gpt2(), tmp_path, optimizer_cls_and_kwargs=(fused_mup.AdamW, {"lr": 3e-3}))
    ref = train(gpt2(), tmp_path, optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": 3e-3}))
    assert_same(ours, ref)


def test_mup_groups_through_the_factory_and_through_optimizers(tmp_path):
    """μP groups two ways: Trainer calls OptimizerFactory()(model, **kwargs), or the optimizer
    is built first and passed as `optimizers=(opt, None)`. Reference: torch.optim.AdamW on the
    same groups baked. GPT-2 has a tied lm_head and Conv1D layers; width_mult=2 is all it needs."""
    kwargs = {"preset": "mup", "width_mult": 2.0, "lr": 3e-3, "weight_decay": 0.1}
    by_factory = train(
        gpt2(), tmp_path, optimizer_cls_and_kwargs=(fused_mup.OptimizerFactory, kwargs)
    )
    model = gpt2()
    opt = fused_mup.create_optimizer(model, **kwargs)
    by_instance = train(model, tmp_path, optimizers=(opt, None))
    theirs = gpt2()
    baked = fused_mup.param_groups(
        theirs, "mup", width_mult=2.0, lr=3e-3, weight_decay=0.1, bake=True
    )
    ref = train(theirs, tmp_path, optimizers=(torch.optim.AdamW(baked), None))
    assert_same(by_factory, ref)
    assert_same(by_instance, ref)
    hidden = next(g for g in opt.param_groups if g["role"] == "hidden")
    assert (
        hidden["lr_mult"] == 0.5 and "transformer.h.0.attn.c_attn.weight" in hidden["param_names"]
    )
