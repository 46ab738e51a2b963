"""Layer 3: the Optimizer. The class gathers; :func:`~fused_mup.optim.adamw.adamw` dispatches."""

from fused_mup.launcher import KernelConfig
from fused_mup.optim.adamw import AdamW
from fused_mup.optim.group_table import to_torch_state_dict

__all__ = ["AdamW", "KernelConfig", "to_torch_state_dict"]
