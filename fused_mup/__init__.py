"""fused_mup: one-launch fused AdamW with width-aware (muP / SP) learning rates.

The public names load on first use (PEP 562), so ``import fused_mup`` and the ``fused-mup``
command start without importing torch; ``from fused_mup import AdamW`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fused_mup.factory import OptimizerFactory, create_optimizer
    from fused_mup.optim import AdamW, to_torch_state_dict
    from fused_mup.presets import (
        OutputScale,
        attention_scale,
        mup_init_,
        mup_model_,
        param_groups,
        param_roles,
        scale_readout_,
    )

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AdamW": "fused_mup.optim",
    "OptimizerFactory": "fused_mup.factory",
    "OutputScale": "fused_mup.presets",
    "attention_scale": "fused_mup.presets",
    "create_optimizer": "fused_mup.factory",
    "mup_init_": "fused_mup.presets",
    "mup_model_": "fused_mup.presets",
    "param_groups": "fused_mup.presets",
    "param_roles": "fused_mup.presets",
    "scale_readout_": "fused_mup.presets",
    "to_torch_state_dict": "fused_mup.optim",
}

__all__ = [
    "AdamW",
    "OptimizerFactory",
    "OutputScale",
    "attention_scale",
    "create_optimizer",
    "mup_init_",
    "mup_model_",
    "param_groups",
    "param_roles",
    "scale_readout_",
    "to_torch_state_dict",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fused_mup' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
