"""``fused_mup.AdamW``: a drop-in torch.optim.AdamW that updates the whole model in one launch.

As in ``torch/optim/adamw.py``, the class gathers (groups, state, checkpoints) and one function,
:func:`adamw`, dispatches a step: each kernel bucket to the launcher, every other tensor to the
reference path (``fused_mup.reference``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.kernels.tables import ClipSlot, Update
from fused_mup.launcher import KernelConfig
from fused_mup.optim.clip import PendingClip, fused_grad_norm, take_scaler
from fused_mup.optim.cpu_fused import cpu_fused_step
from fused_mup.optim.differentiable import differentiable_step
from fused_mup.optim.group_table import GroupTableCache, host_effective, tensor_effective
from fused_mup.optim.modes import update_mode
from fused_mup.optim.plan import Plan, Planner, cpu_fused_grads, real_view
from fused_mup.optim.state import CountingStateDict
from fused_mup.optim.validation import (
    DEPRECATED_BACKENDS,
    EXTRA_GROUP_KEYS,
    KERNEL_DTYPES,
    check_hyperparameters,
    normalize_backend,
    to_scalar,
)
from fused_mup.reference import adamw_step_
from fused_mup.torch_compat import OptState

__all__ = ["AdamW", "adamw"]


class AdamW(torch.optim.Optimizer):
    r"""AdamW whose step is one Triton kernel launch for all params of all groups.

    A drop-in for :class:`torch.optim.AdamW` (same arguments, defaults, errors and state_dict
    format) with two extra group keys: ``lr_mult`` and ``wd_mult`` (default 1.0), so that
    ``lr_eff = group["lr"] * lr_mult`` and ``wd_eff = group["weight_decay"] * wd_mult``. LR
    schedulers rewrite ``group["lr"]`` and the multipliers stay put.

    Each step, for every param with a grad::

        p <- p * (1 - decay)           decay = lr_eff * wd_eff        ("coupled", torch's rule)
                                       decay = (lr / peak_lr) * wd_eff         ("independent")
        Adam step with lr_eff, math in fp32, states in the param dtype (or ``state_dtype``)

    ``weight_decay_mode`` is a third group key (and a constructor default). ``peak_lr`` is the
    running maximum of the group's lr, never below OneCycleLR's ``max_lr``, a scheduler's
    ``initial_lr`` or a ``peak_lr`` group key the user set; it is kept in the group (and so in
    checkpoints). lr never exceeds it, so independent decay never removes more than ``wd_eff``
    per step, whatever changes lr; without a scheduler the ratio is 1.

    Args:
        params: iterable of tensors, of dicts (param groups), or of (name, tensor) pairs.
        lr, betas, eps, weight_decay, amsgrad, maximize: as in torch.optim.AdamW.
        foreach, fused: accepted for compatibility and ignored (the update is always fused),
            except where torch refuses a combination: ``fused`` with ``foreach`` or
            ``differentiable``, and ``fused=True`` with meta params, raise torch's errors.
        capturable: build the group table on the device from tensor LRs (``lr`` may be a
            device tensor that schedulers ``fill_``), so that ``step()`` can be captured in a
            CUDA graph and replayed. Warm up with eager steps before capturing; grads must be
            static tensors (as CUDA graphs require anyway).
        differentiable: run the step under autograd, through torch's own single-tensor
            AdamW (one call per group; no kernel, no fused clip, bf16_update "round" only).
        backend: "auto" (Triton on CUDA tensors; CPU tensors through torch's fused CPU
            kernel, one call per group, and the reference path for what it cannot take),
            "triton" (always the kernel; CPU tensors need ``TRITON_INTERPRET=1`` set before
            triton is imported), or "reference" (always the reference path: plain torch with
            the kernel's math, ``fused_mup.reference``). "torch" is a deprecated alias of
            "reference" (FutureWarning).
        state_dtype: dtype of new exp_avg / exp_avg_sq; None keeps the param dtype, as torch.
        bf16_update: how bf16 params take the update: "round" (to nearest even), "kahan"
            (compensation buffer in state["kahan_comp"]), "stochastic" (unbiased stochastic
            rounding from ``seed``), "master" (fp32 weights in state["master_param"]). Also a
            group key. fp16 params accept all but "stochastic"; fp32 params ignore it.
        weight_decay_mode: "coupled" (torch's rule) or "independent"; also a group key.
        seed: seed of the stochastic-rounding RNG (counter-based: step and tensor index).
        kernel_config: tile sizes of the kernel (:class:`KernelConfig`).
    """

    # It applies lr_mult / wd_mult itself (fused_mup.ignored_keys warns for other optimizers).
    _applies_fused_mup_group_keys = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
        state_dtype: torch.dtype | None = None,
        bf16_update: str = "round",
        weight_decay_mode: str = "coupled",
        seed: int = 0,
        kernel_config: KernelConfig | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": True,
            **EXTRA_GROUP_KEYS,
            "bf16_update": bf16_update,
            "weight_decay_mode": weight_decay_mode,
        }
        # Before the params are read, as torch: a bad argument is reported as such.
        check_hyperparameters(defaults, where="")
        defaults["betas"] = tuple(map(to_scalar, defaults["betas"]))
        if fused and differentiable:  # torch's checks, in its order
            raise RuntimeError("`fused` does not support `differentiable`")
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        backend = normalize_backend(backend)
        if state_dtype is not None and state_dtype not in KERNEL_DTYPES:
            raise ValueError(
                f"Invalid state_dtype: {state_dtype}; expected None or one of {KERNEL_DTYPES}"
            )
        self.backend = backend
        self.state_dtype = state_dtype
        self.seed = int(seed)
        self.kernel_config = kernel_config or KernelConfig()
        self._reset_caches()
        super().__init__(params, defaults)
        self.state = CountingStateDict(dict, self.state)
        # False, as torch.optim.AdamW: GradScaler.step unscales and checks the grads itself.
        # True (torch's fused optimizers) makes Lightning refuse gradient_clip_val with any
        # mixed precision. clip_grad_norm_(grad_scaler=...) sets it for the one step that
        # follows, so that the scaler hands over its scale and inf flag on the device instead.
        self._step_supports_amp_scaling = False

    def _reset_caches(self) -> None:
        """The derived, rebuildable attributes: listed once, for __init__ and unpickling."""
        self._planner = Planner()
        self._pending_clip: PendingClip | None = None
        self._group_table_cache = GroupTableCache()
        self._generators: dict[torch.device, torch.Generator] = {}
        self._amp_defaults: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # ---- param groups and checkpoints -------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):  # else torch's own TypeError below
            filled = {**self.defaults, **param_group}
            check_hyperparameters(filled, where=f"param group {len(self.param_groups)}")
        super().add_param_group(param_group)
        self._planner.invalidate()

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, param_groups) plus our constructor settings, so that
        copy.deepcopy and pickle keep the backend, state dtype, seed and tile sizes."""
        out = super().__getstate__()
        for key in ("backend", "state_dtype", "seed", "kernel_config"):
            out[key] = self.__dict__[key]
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = CountingStateDict(dict, self.state)
        for group in self.param_groups:
            for key, value in EXTRA_GROUP_KEYS.items():
                group.setdefault(key, value)
            # As torch.optim.AdamW: a loaded torch.optim.Adam checkpoint says False.
            group["decoupled_weight_decay"] = True
            for p in group["params"]:
                # As torch: a plain-number step (older or hand-written checkpoints) becomes a
                # tensor, here on the param's device where the kernel counts it.
                # A param that never stepped may hold an empty state (reading opt.state[p] or
                # DCP's flattened state dict creates one): nothing to convert, as in torch.
                p_state = self.state.get(p)
                step = p_state.get("step") if isinstance(p_state, dict) else None
                if step is not None and not torch.is_tensor(step):
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]), dtype=torch.float32, device=p.device
                    )
        self.__dict__.setdefault("backend", "auto")
        # Pickled under a deprecated name: the same path under its new one.
        self.backend = DEPRECATED_BACKENDS.get(self.backend, self.backend)
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("kernel_config", KernelConfig())
        self.__dict__.setdefault("seed", 0)
        self._reset_caches()

    def state_dict(self) -> dict[str, Any]:
        """torch's format, with plain dicts, so that ``torch.load(weights_only=True)`` and
        torch.optim.AdamW read it."""
        out = super().state_dict()
        # Entries need not be per-param dicts (a state_dict hook may store anything).
        out["state"] = {k: dict(v) if isinstance(v, dict) else v for k, v in out["state"].items()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a fused_mup or torch.optim.AdamW state_dict.

        Group keys the checkpoint lacks (``lr_mult``, ``wd_mult``, ``weight_decay_mode`` in a
        torch checkpoint) keep their current values, so a μP optimizer resumes from a torch
        checkpoint with its multipliers intact.
        """
        kept = [{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, old, saved in zip(self.param_groups, kept, state_dict["param_groups"]):
            for key, value in old.items():
                if key not in saved:
                    group[key] = value
        # torch's loader casts every float state to the param dtype. Restore, from the
        # checkpoint's own tensors, the precision that was asked for: fp32 master weights, and
        # the moments in state_dtype.
        saved_states = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params):
            for key, value in saved_states.get(pid, {}).items():
                if not torch.is_tensor(value) or key == "step" or p.is_complex():
                    continue
                if key == "master_param":
                    self.state[p][key] = value.to(p.device, torch.float32)
                elif self.state_dtype is not None and key != "kahan_comp":
                    self.state[p][key] = value.to(p.device, self.state_dtype)
        self._planner.invalidate()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; also drops a clip_grad_norm_() result that no step() consumed."""
        if self._pending_clip is not None:  # a read, which Dynamo traces; the write may not be
            self._drop_pending_clip()
        super().zero_grad(set_to_none)

    # Dynamo (torch 2.11) refuses a setattr on the optimizer inside a compiled function.
    @torch.compiler.disable
    def _drop_pending_clip(self) -> None:
        self._pending_clip = None

    # ---- the step ----------------------------------------------------------------------------

    def step(self, closure=None):
        """Performs a single optimization step: one kernel launch per bucket (with
        ``differentiable=True``, torch's single-tensor AdamW per group, under autograd).

        Args:
            closure: reevaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.defaults["differentiable"]:
            with torch.enable_grad():  # as torch's _use_grad_for_differentiable
                differentiable_step(self)
        else:
            with torch.no_grad():
                self._update()
        return loss

    # Dynamo cannot trace the launch (its tables hold raw addresses), so inside a compiled
    # function step() is a graph break that runs eagerly, and the compiled model around it
    # stays compiled.
    @torch.compiler.disable
    def _update(self) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        plan = self._planner.current(self, grads)
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        pending, self._pending_clip = self._pending_clip, None
        clip = None
        if pending is not None:
            if pending.grad_addresses is not plan.grad_addresses:
                # The grads moved since clip_grad_norm_ measured them: its coefficient is stale.
                warnings.warn(
                    "fused_mup.AdamW: grads changed between clip_grad_norm_() and step(); "
                    "stepping without clipping",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                clip = pending.buffer
            # clip_grad_norm_(grad_scaler=...) left the grads scaled and told the scaler they
            # were not: the scale it read is the one to divide by now.
            if pending.grad_scale is not None and grad_scale is None:
                grad_scale = pending.grad_scale
        refs = self._planner.point_at_grads(params, grads)
        adamw(self, plan, grads, grad_scale=grad_scale, found_inf=found_inf, clip=clip)
        del refs
        # Back to GradScaler's own unscale pass. Here, not in step(): Dynamo (torch 2.11)
        # refuses a setattr on the optimizer inside a compiled function that calls step().
        self._step_supports_amp_scaling = False

    @torch.compiler.disable
    @torch.no_grad()
    def clip_grad_norm_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
        foreach: bool | None = None,
        *,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """Clips like :func:`torch.nn.utils.clip_grad_norm_`, fused into the next ``step()``.

        One launch computes the squared norm of every grad; the coefficient
        ``min(1, max_norm / (norm + 1e-6))`` is computed on the device and applied inside the
        AdamW kernel, so the grads themselves are left as they are (read them before step() and
        they are unclipped). Call it right before ``step()`` / ``scaler.step(opt)``.

        With ``grad_scaler``, it replaces ``scaler.unscale_(opt)``: the norm is that of the
        unscaled grads, the same pass records GradScaler's inf check (so the scaler runs no
        pass of its own and still skips the step and backs off on inf), and the kernel
        unscales in registers.

        Args:
            max_norm: max norm of the grads.
            norm_type: only 2.0 is fused.
            error_if_nonfinite: raise if the norm is not finite (this reads it on the host).
            foreach: ignored.
            grad_scaler: the ``torch.amp.GradScaler`` that scaled the loss, if any.

        Returns:
            The total norm of the (unscaled) grads, as a 0-d tensor on the grads' device.
        """
        if self.defaults["differentiable"]:
            raise NotImplementedError(
                "fused_mup.AdamW.clip_grad_norm_ applies its coefficient inside the fused step, "
                "which differentiable=True does not run; use torch.nn.utils.clip_grad_norm_."
            )
        if float(norm_type) != 2.0:
            raise NotImplementedError(
                f"fused_mup.AdamW.clip_grad_norm_ fuses norm_type=2.0 only, got {norm_type}; "
                "use torch.nn.utils.clip_grad_norm_ for other norms."
            )
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        plan = self._planner.current(self, grads)
        devices = {b.key.device for b, _ in plan.buckets} | {
            params[i].device for i in plan.unlaunched
        }
        if not devices:
            return torch.zeros(())
        if len(devices) > 1:
            raise NotImplementedError(
                "clip_grad_norm_ fuses grads on one device; these are on "
                f"{sorted(map(str, devices))}. Use torch.nn.utils.clip_grad_norm_."
            )
        (device,) = devices
        scale = scaler_state = None
        if grad_scaler is not None and grad_scaler.is_enabled():
            scale, scaler_state = take_scaler(grad_scaler, self)
        scale_t = scale if scale is not None else self._amp_tensors(device, None, None)[0]
        refs = self._planner.point_at_grads(params, grads)
        clip = fused_grad_norm(plan, grads, device, scale_t, max_norm, self.kernel_config)
        del refs
        total_norm = clip[ClipSlot.SUMSQ].sqrt()
        if error_if_nonfinite and not torch.isfinite(total_norm):  # a host read, as torch's
            raise RuntimeError(
                f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
                "non-finite, so it cannot be clipped. To disable this error and scale the "
                "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
            )
        self._pending_clip = PendingClip(clip, plan.grad_addresses, scale)
        if scaler_state is not None:
            scaler_state["found_inf_per_device"] = {device: clip[ClipSlot.NONFINITE]}
            scaler_state["stage"] = OptState.UNSCALED
            # scaler.step(opt) then passes found_inf on the device (no host read) and calls
            # step(), which skips on inf inside the kernel.
            self._step_supports_amp_scaling = True
        return total_norm

    # ---- per-step helpers ---------------------------------------------------------------------

    def _generator(self, device: torch.device) -> torch.Generator:
        """The reference path's stochastic-rounding RNG: seeded once, so a run is reproducible
        from ``seed`` without reading the step on the host."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _amp_tensors(
        self, device: torch.device, grad_scale: Tensor | None, found_inf: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if device not in self._amp_defaults:
            self._amp_defaults[device] = (
                torch.ones(1, dtype=torch.float32, device=device),
                torch.zeros(1, dtype=torch.float32, device=device),
            )
        one, zero = self._amp_defaults[device]
        scale = one if grad_scale is None else grad_scale.to(device, non_blocking=True)
        inf = zero if found_inf is None else found_inf.to(device, non_blocking=True)
        return scale, inf


def adamw(
    opt: AdamW,
    plan: Plan,
    grads: list[Tensor | None],
    *,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    clip: Tensor | None,
) -> None:
    """One step of ``plan``: a launch per kernel bucket, torch's fused CPU kernel per group for
    the CPU tensors it takes, the reference path for the rest."""
    groups = opt.param_groups
    capturable = any(g["capturable"] for g in groups)
    needs_host = plan.cpu_fused or not capturable
    rows = host_effective(groups) if needs_host else []
    # capturable: a tensor lr stays a tensor on the reference path too, read on the device.
    reference_rows = tensor_effective(groups) if capturable and plan.reference else rows
    for param, staging in plan.staged:
        staging.copy_(param)
    for bucket, _ in plan.buckets:
        device = bucket.key.device
        scale, inf = opt._amp_tensors(device, grad_scale, found_inf)
        if capturable:
            table = opt._group_table_cache.capturable(groups, device)
        else:
            table = opt._group_table_cache.get(device, rows)
        launcher.launch(bucket, table, scale, inf, opt.kernel_config, clip=clip, seed=opt.seed)
    for param, staging in plan.staged:
        param.copy_(staging)

    if plan.cpu_fused:
        params = [p for group in groups for p in group["params"]]
        for fused in plan.cpu_fused:
            fused = fused.having_grads(plan.present)
            if not fused.flat:
                continue
            cpu_fused_step(
                fused,
                cpu_fused_grads(plan, fused, params, grads),
                rows[fused.group],
                grad_scale,
                found_inf,
                clip,
            )

    for ref in plan.reference:
        if grads[ref.flat] is None:  # a member without a grad this step: skipped, as torch
            continue
        group = groups[ref.group]
        p = group["params"][ref.index]
        state = opt.state[p]
        eff = reference_rows[ref.group]
        mode = update_mode(p, group, "")
        adamw_step_(
            real_view(p),
            real_view(grads[ref.flat]),
            real_view(state["exp_avg"]),
            real_view(state["exp_avg_sq"]),
            real_view(state["max_exp_avg_sq"]) if group["amsgrad"] else None,
            state["step"],
            lr=eff.lr,
            decay=eff.decay,
            beta1=eff.beta1,
            beta2=eff.beta2,
            eps=eff.eps,
            maximize=group["maximize"],
            grad_scale=grad_scale,
            found_inf=found_inf,
            clip=clip,
            update=mode.code,
            aux=real_view(state[mode.aux_key]) if mode.aux_key else None,
            generator=opt._generator(p.device) if mode.code == Update.STOCHASTIC else None,
        )
