"""Model-taking optimizer factories for config-driven trainers.

- :func:`create_optimizer` takes the model (timm's ``create_optimizer(model, ...)`` shape, a
  Hydra ``_target_`` with ``_partial_: true``, a torchtune-style ``_component_``).
- :class:`OptimizerFactory` is the same for HF ``Trainer(optimizer_cls_and_kwargs=...)``, which
  instantiates a non-Optimizer class with no arguments and calls it with ``(model, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fused_mup.optim import AdamW
from fused_mup.presets import param_groups
from fused_mup.presets.roles import require_module

__all__ = ["OptimizerFactory", "create_optimizer"]


def create_optimizer(
    model: nn.Module,
    preset: str | Mapping[str, float] = "sp",
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    base_model: nn.Module | None = None,
    delta_model: nn.Module | None = None,
    width_mult: float | None = None,
    weight_decay_mode: str = "coupled",
    decay: Mapping[str, float] | None = None,
    overrides: Mapping[str, str] | None = None,
    tied: str | None = None,
    **adamw_kwargs: Any,
) -> AdamW:
    """``fused_mup.AdamW`` on ``param_groups(model, preset, ...)`` in one call.

    ``lr`` and ``weight_decay`` become the optimizer's defaults (the groups inherit them, so an
    LR scheduler and ``opt.defaults`` see the values you passed); each group scales them by its
    ``lr_mult`` / ``wd_mult``. The default preset ``"sp"`` is standard parameterization with
    biases and norm gains undecayed (HF Trainer's and nanoGPT's practice); it takes any
    ``nn.Module``, decaying every matrix (ndim >= 2) and no vector.

    Args:
        model: the model to optimize (wrappers such as ``torch.compile``'s and DDP's are
            looked through by :func:`fused_mup.param_groups`).
        preset: ``"sp"``, ``"mup"``, ``"mup_lr"``, ``"sp_emb"``, ``"sp_emb_sqrt"`` or an
            exponent table (see ``docs/presets.md``).
        lr: base learning rate.
        weight_decay: base weight decay.
        base_model, delta_model, width_mult, weight_decay_mode, decay, overrides, tied: as in
            :func:`fused_mup.param_groups`.
        **adamw_kwargs: any other :class:`fused_mup.AdamW` argument (``betas``, ``eps``,
            ``amsgrad``, ``backend``, ``bf16_update``, ...).

    Returns:
        The optimizer.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` (e.g. ``model.parameters()``).
        ValueError: as :func:`fused_mup.param_groups`; the default ``"sp"`` takes any module.
    """
    require_module(model, "model", "create_optimizer")
    groups = param_groups(
        model,
        preset,
        base_model=base_model,
        delta_model=delta_model,
        width_mult=width_mult,
        weight_decay_mode=weight_decay_mode,
        decay=decay,
        overrides=overrides,
        tied=tied,
    )
    return AdamW(groups, lr=lr, weight_decay=weight_decay, **adamw_kwargs)


class OptimizerFactory:
    """:func:`create_optimizer` as HF Trainer's optimizer factory.

    ``Trainer(..., optimizer_cls_and_kwargs=(fused_mup.OptimizerFactory, {"preset": "mup",
    "base_model": base, "lr": 3e-3, "weight_decay": 0.1}))``: the Trainer calls
    ``OptimizerFactory()(model, **kwargs)``, so the μP groups are built from the model it trains.
    """

    def __call__(self, model: nn.Module, **kwargs: Any) -> AdamW:
        return create_optimizer(model, **kwargs)
