"""Width-aware (μP / SP) parameter groups for :class:`fused_mup.AdamW`.

:func:`param_groups` gives every trainable parameter one *role* (``embedding``, ``hidden``,
``readout``, ``vector``) and a per-tensor width multiplier ``m``, then emits one group per
``(role, m)`` carrying ``lr_mult = m**e[role]`` and a matching ``wd_mult``. All metadata lives in
the group dicts, never on tensors, so it survives FSDP, ``torch.compile`` and checkpoint reload.

Also here: the model-side helpers full μP needs (:func:`mup_init_`, :func:`scale_readout_`,
:class:`OutputScale`, :func:`attention_scale`). Pure Python + torch; no Triton.

See ``docs/presets.md`` for the rules.
"""

from fused_mup.presets.groups import DEFAULT_DECAY, PRESETS, param_groups
from fused_mup.presets.model import (
    OutputScale,
    attention_scale,
    mup_init_,
    mup_model_,
    scale_readout_,
)
from fused_mup.presets.roles import ROLES, ParamInfo, param_roles, unwrap_model

__all__ = [
    "DEFAULT_DECAY",
    "PRESETS",
    "ROLES",
    "OutputScale",
    "ParamInfo",
    "attention_scale",
    "mup_init_",
    "mup_model_",
    "param_groups",
    "param_roles",
    "scale_readout_",
    "unwrap_model",
]
