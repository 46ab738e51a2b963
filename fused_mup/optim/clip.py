"""Fused ``clip_grad_norm_``: one grad-norm pass whose coefficient the next step applies."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.kernels.tables import CLIP_SLOTS, ClipSlot
from fused_mup.launcher import KernelConfig
from fused_mup.optim.mesh_norm import MeshNorm, Unsupported
from fused_mup.optim.plan import Plan, real_view
from fused_mup.reference import grad_norm_sumsq
from fused_mup.torch_compat import OptState, scaler_state

__all__ = ["PendingClip", "fused_grad_norm", "take_scaler"]


@dataclass
class PendingClip:
    """What ``clip_grad_norm_`` hands to the next ``step()``."""

    buffer: Tensor  # the clip buffer (ClipSlot); the returned norm is a view of it
    grad_addresses: list[int]  # the grads it measured: a step on other grads drops it
    grad_scale: Tensor | None  # GradScaler's scale, when the norm replaced its unscale pass


def take_scaler(grad_scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer):
    """GradScaler's scale and this optimizer's entry in it, checked as unscale_() does; or
    (None, None) after the scaler's own ``unscale_()`` where this torch's GradScaler keeps
    them under other names (:func:`fused_mup.torch_compat.scaler_state`)."""
    found = scaler_state(grad_scaler, id(optimizer))
    if found is None:
        grad_scaler.unscale_(optimizer)
        return None, None
    scale, state = found
    if scale is None:
        raise RuntimeError(
            "clip_grad_norm_(grad_scaler=...) needs a scaler that has scaled a loss: call "
            "scaler.scale(loss).backward() first."
        )
    if state["stage"] is OptState.UNSCALED:
        raise RuntimeError(
            "unscale_() has already been called on this optimizer since the last update()."
        )
    if state["stage"] is OptState.STEPPED:
        raise RuntimeError("unscale_() is being called after step().")
    return scale, state


def fused_grad_norm(
    plan: Plan,
    grads: list[Tensor | None],
    device: torch.device,
    grad_scale: Tensor,
    max_norm: float,
    config: KernelConfig,
) -> Tensor:
    """The clip buffer for ``max_norm``: one grad-norm launch per bucket, plus the reference path
    for the tensors the kernel does not take, summed over the mesh for DTensor params."""
    mesh = plan.sharded
    if isinstance(mesh, Unsupported):
        raise mesh.error()
    # GradScaler's scale lives where the loss was scaled, which need not be the grads' device
    # (step() moves it too). A no-op when it is already there.
    grad_scale = grad_scale.to(device, non_blocking=True)
    # Fresh per call: the returned norm and GradScaler's found_inf are views of it.
    clip = torch.empty(CLIP_SLOTS, dtype=torch.float32, device=device)
    for n, (bucket, _) in enumerate(plan.buckets):
        launcher.launch_grad_norm(bucket, grad_scale, clip, max_norm, n > 0, config)
    if plan.unlaunched:
        having = [real_view(grads[i]) for i in plan.unlaunched if grads[i] is not None]
        sumsq = grad_norm_sumsq(having, grad_scale)
        if plan.buckets:
            sumsq = sumsq + clip[ClipSlot.SUMSQ]
        clip[ClipSlot.SUMSQ] = sumsq
        clip[ClipSlot.MAX_NORM] = max_norm
    if mesh is not None:
        _sum_over_mesh(clip, mesh, grads, grad_scale)
    if plan.unlaunched or mesh is not None:
        clip[ClipSlot.NONFINITE] = (~torch.isfinite(clip[ClipSlot.SUMSQ])).float()
    return clip


def _sum_over_mesh(
    clip: Tensor, mesh: MeshNorm, grads: list[Tensor | None], grad_scale: Tensor
) -> None:
    """Turns this rank's sum of squares into the whole model's, on the device (no host read)."""
    sumsq = clip[ClipSlot.SUMSQ : ClipSlot.SUMSQ + 1]
    for share, indices in mesh.over_counted:
        # The kernel counted every local shard; a param Replicate r-fold over the mesh is on r
        # ranks, so each keeps 1/r of it. grad_norm_sumsq re-reads those grads (biases, norms).
        having = [real_view(grads[i]) for i in indices if grads[i] is not None]
        over = grad_norm_sumsq(having, grad_scale) * share
        # An inf grad keeps the sum inf, as torch's norm is (inf - inf would be nan).
        sumsq.copy_(torch.where(torch.isfinite(over), sumsq - over, sumsq))
    for group in mesh.groups:
        torch.distributed.all_reduce(sumsq, group=group)
