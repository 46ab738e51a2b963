"""What a step hands the kernels and their reference implementations sits on the params'
device, and the reference path copies nothing from the host (issue 17, defect 9).

No GPU here, so each GPU-only risk is checked on a CPU stand-in that fails the same way:

- a scale on another device: FakeTensorMode's fake CUDA tensors beside CPU grads, which raise
  on a device mismatch as real ones do;
- host-to-device copies: the reference path on ``meta`` tensors (a device other than the
  host), with a mode that records every tensor made from host data on, or moved from the CPU
  to, that device.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fused_mup.kernels.tables import CLIP_SLOTS, ClipSlot
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from fused_mup.launcher import KernelConfig
from fused_mup.optim.clip import fused_grad_norm
from fused_mup.reference import adamw_step_, grad_norm_sumsq


def test_grad_norm_moves_the_scalers_scale_to_the_grads_device():
    """clip_grad_norm_(grad_scaler=...) on CPU grads with the scale on a (fake) GPU: the norm
    reads a copy on the grads' device, as step() does; before, the reference path raised a device
    mismatch (and the kernel would read a pointer of the other device)."""
    grads = [torch.full((3,), 3.0), torch.full((2, 2), 4.0)]
    plan = SimpleNamespace(buckets=[], unlaunched=[0, 1], sharded=None)
    with FakeTensorMode(allow_non_fake_inputs=True):
        scale = torch.full((1,), 2.0, device="cuda")  # where GradScaler scaled the loss
        clip = fused_grad_norm(plan, grads, torch.device("cpu"), scale, 1.0, KernelConfig())
    assert clip.device == torch.device("cpu")
    # The same numbers on real tensors: sum((g / 2)**2).
    real = fused_grad_norm(
        plan, grads, torch.device("cpu"), torch.full((1,), 2.0), 1.0, KernelConfig()
    )
    assert real.shape == (CLIP_SLOTS,)
    assert real[ClipSlot.SUMSQ].item() == pytest.approx(3 * 1.5**2 + 4 * 2.0**2)
    assert real[ClipSlot.MAX_NORM].item() == 1.0


class HostToDevice(TorchFunctionMode):
    """Records tensors made from host data on a non-CPU device, and CPU tensors moved or
    copied to one: each is a host-to-device copy on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in ("tensor", "as_tensor", "asarray", "scalar_tensor", "full"):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu":
                self.copies.append(f"torch.{name}(..., device={device})")
        elif name == "to" and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
            device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            if device is not None and device.type != "cpu":
                self.copies.append(f"cpu tensor .to({device})")
        elif name == "copy_" and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self.copies.append("copy_ from a cpu tensor")
        return func(*args, **kwargs)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_reference_step_copies_nothing_from_the_host(amsgrad):
    """backend="reference" on GPU tensors (fp64 params take it under "auto" too): before, two
    torch.tensor(beta, device=...) per param per step, each a host-to-device copy."""
    device = "meta"  # a device that is not the host
    p = torch.zeros(5, 3, dtype=torch.float64, device=device)
    m, v, vmax = (torch.zeros_like(p) for _ in range(3))
    step = torch.zeros((), dtype=torch.float32, device=device)
    scale = torch.ones(1, device=device)
    found_inf = torch.zeros(1, device=device)
    clip = torch.zeros(CLIP_SLOTS, device=device)
    with HostToDevice() as mode:
        for _ in range(3):
            grad = torch.ones_like(p)
            clip = clip + grad_norm_sumsq([grad], scale).reshape(1)
            adamw_step_(
                p, grad, m, v, vmax if amsgrad else None, step,
                lr=1e-3, decay=1e-5, beta1=0.9, beta2=0.999, eps=1e-8, maximize=False,
                grad_scale=scale, found_inf=found_inf, clip=clip,
            )  # fmt: skip
    assert mode.copies == []


def test_host_to_device_recorder_sees_copies():
    """The recorder itself: each kind of copy it must catch."""
    with HostToDevice() as mode:
        torch.tensor(0.9, dtype=torch.float64, device="meta")
        torch.ones(2).to("meta")
        torch.empty(2, device="meta").copy_(torch.ones(2))
        torch.tensor(0.9).to(torch.float64)  # stays on the host: not a copy
    assert len(mode.copies) == 3, mode.copies
