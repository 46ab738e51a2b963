"""Layer 3: the Optimizer. The class gathers; :func:`~fused_mup.optim.adamw.adamw` dispatches."""

from fused_mup.ignored_keys import install_ignored_keys_hook
from fused_mup.launcher import KernelConfig
from fused_mup.optim.adamw import AdamW
from fused_mup.optim.to_torch import to_torch_state_dict

__all__ = ["AdamW", "KernelConfig", "to_torch_state_dict"]

# Other optimizers given our group keys (a fused checkpoint, unbaked preset groups) warn.
install_ignored_keys_hook()
