"""fused_mup: one-launch fused AdamW with width-aware (muP / SP) learning rates."""

from fused_mup.optim import AdamW
from fused_mup.presets import (
    OutputScale,
    attention_scale,
    mup_init_,
    param_groups,
    param_roles,
    scale_readout_,
)

__all__ = [
    "AdamW",
    "OutputScale",
    "attention_scale",
    "mup_init_",
    "param_groups",
    "param_roles",
    "scale_readout_",
]
__version__ = "0.1.0"
