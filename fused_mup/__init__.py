"""fused_mup: one-launch fused AdamW with width-aware (muP / SP) learning rates."""

from fused_mup.optim import AdamW
from fused_mup.presets import param_groups

__all__ = ["AdamW", "param_groups"]
__version__ = "0.1.0"
