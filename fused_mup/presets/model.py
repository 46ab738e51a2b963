"""Model-side helpers for full μP: init per role, the readout multiplier, the attention scale,
and :func:`mup_model_`, which records them in an HF model's config so they survive
``save_pretrained`` / ``from_pretrained``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["OutputScale", "attention_scale", "mup_init_", "mup_model_", "scale_readout_"]


@torch.no_grad()
def mup_init_(
    groups: Iterable[Mapping[str, Any]],
    *,
    std: float = 0.02,
    zero_readout: bool = False,
) -> None:
    """Initialise parameters per role for full μP, in place, from :func:`param_groups` output.

    ``std`` is the base-width standard deviation. Per role: ``embedding`` ~ N(0, std²);
    ``hidden`` ~ N(0, std²/m) (variance ∝ 1/fan_in); ``readout`` ~ N(0, std²) or zeros (pair it
    with the 1/m forward multiplier of :func:`scale_readout_`); ``vector``: biases (names
    ending in ``bias``) zeroed, norm gains left as the module set them.

    Args:
        groups: groups from :func:`param_groups` (baked or not).
        std: init standard deviation at the base width.
        zero_readout: zero the readout instead (mup's ``readout_zero_init``).
    """
    for g in groups:
        role, m = g["role"], g["width_mult"]
        if role == "readout" and zero_readout and g.get("tied_names"):
            (n, others), *_ = g["tied_names"].items()
            raise ValueError(
                f"zero_readout=True would zero {n!r}, which is tied to {others}: the input "
                "embedding would be zeroed too. Build the groups with tied='embedding' (μP's "
                "choice for a shared readout), or pass zero_readout=False"
            )
        for n, p in zip(g["param_names"], g["params"], strict=True):
            if role == "embedding" or (role == "readout" and not zero_readout):
                p.normal_(0.0, std)
            elif role == "hidden":
                p.normal_(0.0, std / math.sqrt(m))
            elif role == "readout":
                p.zero_()
            elif n.endswith("bias"):
                p.zero_()


class OutputScale(nn.Module):
    """Multiply the input by a constant: ``y = x * mult`` (e.g. the μP readout's 1/m).

    Args:
        mult: the constant.
    """

    def __init__(self, mult: float) -> None:
        super().__init__()
        self.mult = float(mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mult

    def extra_repr(self) -> str:
        return f"mult={self.mult}"


def scale_readout_(readout: nn.Module, mult: float) -> torch.utils.hooks.RemovableHandle:
    """Multiply a readout module's input by ``mult`` (μP: ``1/m``) via a forward pre-hook.

    Parameter names and the state dict are unchanged, so it works on any module and a base
    model needs no matching edit. Equivalent to mup's ``MuReadout`` with ``output_mult=1``.

    Args:
        readout: the output projection (e.g. ``model.lm_head``).
        mult: the input multiplier, usually ``1 / width_mult``.

    Returns:
        The hook handle (``.remove()`` undoes it).
    """
    mult = float(mult)

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * mult, *args[1:])

    return readout.register_forward_pre_hook(hook)


def attention_scale(d_head: int, base_d_head: int | None = None) -> float:
    """μP attention logit scale: ``1/d_head`` instead of SP's ``1/sqrt(d_head)``.

    With ``base_d_head`` it is ``sqrt(base_d_head)/d_head``, equal to SP at the base width.
    Pass it as ``scale=`` to :func:`torch.nn.functional.scaled_dot_product_attention`.

    Args:
        d_head: head dimension of this model.
        base_d_head: head dimension of the base model, if any.
    """
    return (1.0 if base_d_head is None else math.sqrt(base_d_head)) / d_head


# The attribute that holds a hook handle on the readout, so that mup_model_ can be re-applied.
_READOUT_HOOK = "_fused_mup_readout_hook"


def mup_model_(
    model: nn.Module,
    width_mult: float | None = None,
    *,
    base_d_head: int | None = None,
    readout: nn.Module | None = None,
) -> dict[str, Any]:
    """Applies full μP's model side to a model, and records it in ``model.config``.

    Two changes, the ones a reload would otherwise lose: the readout's input is multiplied by
    ``1 / width_mult`` (:func:`scale_readout_`), and every attention module's ``scaling``
    becomes :func:`attention_scale` ``(head_dim, base_d_head)``. The settings are stored as
    ``model.config.fused_mup`` (HF ``PretrainedConfig`` writes extra attributes into
    ``config.json``), so after ``from_pretrained`` one call with no arguments re-applies them::

        fused_mup.mup_model_(model, width_mult=8, base_d_head=64)
        model.save_pretrained(path)
        ...
        model = GPT2LMHeadModel.from_pretrained(path)
        fused_mup.mup_model_(model)  # readout 1/m and attention scale from config.json

    Calling it again replaces the earlier hook instead of stacking a second one.

    Args:
        model: an HF model (``get_output_embeddings()`` finds the readout; attention modules
            are those with ``head_dim`` and a float ``scaling``, as GPT-2 and Llama have), or
            any module with ``readout=`` and such attention modules.
        width_mult: m; None reads the settings back from ``model.config.fused_mup``.
        base_d_head: head dimension at the base width (None gives μP's ``1 / head_dim``).
        readout: the output projection, if the model has no ``get_output_embeddings()``.

    Returns:
        The recorded settings.

    Raises:
        ValueError: no settings (neither ``width_mult`` nor ``config.fused_mup``), no readout,
            or no attention module with a ``scaling`` attribute.
    """
    config = getattr(model, "config", None)
    if width_mult is None:
        settings = dict(getattr(config, "fused_mup", None) or {})
        if "width_mult" not in settings:
            raise ValueError(
                "mup_model_: pass width_mult= (the model's config records no fused_mup settings "
                "to re-apply)"
            )
    else:
        settings = {"width_mult": float(width_mult), "base_d_head": base_d_head}
    if readout is None and hasattr(model, "get_output_embeddings"):
        readout = model.get_output_embeddings()
    if readout is None:
        raise ValueError("mup_model_: pass readout= (the model has no get_output_embeddings())")
    attention = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "scaling", None), float) and hasattr(m, "head_dim")
    ]
    if not attention:
        raise ValueError(
            "mup_model_: no attention module with a float `scaling` and `head_dim`; set the "
            "attention scale in your model with attention_scale(d_head, base_d_head)"
        )
    old = getattr(readout, _READOUT_HOOK, None)
    if old is not None:
        old.remove()
    setattr(readout, _READOUT_HOOK, scale_readout_(readout, 1.0 / settings["width_mult"]))
    for m in attention:
        m.scaling = attention_scale(int(m.head_dim), settings["base_d_head"])
    if config is not None:
        config.fused_mup = settings
    return settings
