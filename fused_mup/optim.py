"""``fused_mup.AdamW``: a drop-in torch.optim.AdamW that updates the whole model in one launch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.launcher import Bucket, BucketKey, KernelConfig, TensorSlot
from fused_mup.reference import adamw_step_

__all__ = ["AdamW", "KernelConfig"]

_BACKENDS = ("auto", "triton", "torch")
_WEIGHT_DECAY_MODES = ("coupled", "independent")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Group keys that fused_mup adds to torch's; kept across load_state_dict of a torch checkpoint.
_EXTRA_GROUP_KEYS = {"lr_mult": 1.0, "wd_mult": 1.0, "weight_decay_mode": "coupled"}


def _is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense: its elements fill its storage span, in any dim order."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _check_hyperparameters(group: dict[str, Any], where: str) -> None:
    """torch's ValueErrors, with the group named when it is not the constructor's defaults."""
    lr, eps, betas, weight_decay = group["lr"], group["eps"], group["betas"], group["weight_decay"]
    suffix = "" if not where else f" in {where}"
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"Tensor lr must be 1-element{suffix}")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}{suffix}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}{suffix}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}{suffix}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}{suffix}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}{suffix}")
    if not 0.0 <= group["lr_mult"]:
        raise ValueError(f"Invalid lr_mult value: {group['lr_mult']}{suffix}")
    if not 0.0 <= group["wd_mult"]:
        raise ValueError(f"Invalid wd_mult value: {group['wd_mult']}{suffix}")
    if group["weight_decay_mode"] not in _WEIGHT_DECAY_MODES:
        raise ValueError(
            f"Invalid weight_decay_mode: {group['weight_decay_mode']!r}{suffix}; "
            f"expected one of {_WEIGHT_DECAY_MODES}"
        )


@dataclass
class _Plan:
    """What a step launches, valid while params, grads and states stay where they are."""

    param_addresses: list[int]  # per param in group order; -1 where it had no grad
    grad_addresses: list[int]
    buckets: list[tuple[Bucket, list[int]]]  # bucket and the flat param indices of its slots
    plain: list[tuple[int, int, int]]  # (flat index, group index, param index) on the torch path
    devices: list[torch.device]
    switches: list[tuple[bool, bool]]  # (amsgrad, maximize) per group: compile-time switches
    grad_copies: dict[int, bool]  # flat index -> grad needs a copy to match the param's strides


class AdamW(torch.optim.Optimizer):
    r"""AdamW whose step is one Triton kernel launch for all params of all groups.

    A drop-in for :class:`torch.optim.AdamW` (same arguments, defaults, errors and state_dict
    format) with two extra group keys: ``lr_mult`` and ``wd_mult`` (default 1.0), so that
    ``lr_eff = group["lr"] * lr_mult`` and ``wd_eff = group["weight_decay"] * wd_mult``. LR
    schedulers rewrite ``group["lr"]`` and the multipliers stay put.

    Each step, for every param with a grad::

        p <- p * (1 - decay)           decay = lr_eff * wd_eff        ("coupled", torch's rule)
                                       decay = (lr / initial_lr) * wd_eff      ("independent")
        Adam step with lr_eff, math in fp32, states in the param dtype (or ``state_dtype``)

    ``weight_decay_mode`` is a third group key. ``initial_lr`` is what torch's LR schedulers
    record; without a scheduler ``lr / initial_lr`` is 1, so independent decay removes the
    fraction ``wd_eff`` per step whatever the peak LR.

    Args:
        params: iterable of tensors, of dicts (param groups), or of (name, tensor) pairs.
        lr, betas, eps, weight_decay, amsgrad, maximize: as in torch.optim.AdamW.
        foreach, fused: accepted for compatibility and ignored: the update is always fused.
        capturable: not supported yet (raises NotImplementedError when True).
        differentiable: not supported (raises NotImplementedError when True).
        backend: "auto" (Triton on CUDA tensors, plain torch on CPU), "triton" (always the
            kernel; CPU tensors need ``TRITON_INTERPRET=1`` set before triton is imported), or
            "torch" (always the plain-torch path).
        state_dtype: dtype of new exp_avg / exp_avg_sq; None keeps the param dtype, as torch.
        kernel_config: tile sizes of the kernel (:class:`KernelConfig`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
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
            **_EXTRA_GROUP_KEYS,
        }
        _check_hyperparameters(defaults, where="")
        if differentiable:
            raise NotImplementedError(
                "fused_mup.AdamW does not support differentiable=True: the fused kernel updates "
                "in place outside autograd. Use torch.optim.AdamW(differentiable=True)."
            )
        if capturable:
            raise NotImplementedError(
                "fused_mup.AdamW does not support capturable=True yet; lr and step are read "
                "from host values."
            )
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if backend not in _BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r}; expected one of {_BACKENDS}")
        if state_dtype is not None and state_dtype not in _KERNEL_DTYPES:
            raise ValueError(
                f"Invalid state_dtype: {state_dtype}; expected None or one of {_KERNEL_DTYPES}"
            )
        self.backend = backend
        self.state_dtype = state_dtype
        self.kernel_config = kernel_config or KernelConfig()
        self._plan: _Plan | None = None
        self._group_values: list[float] | None = None
        self._device_tables: dict[torch.device, torch.Tensor] = {}
        self._amp_defaults: dict[torch.device, tuple[Tensor, Tensor]] = {}
        super().__init__(params, defaults)
        # GradScaler hands us grad_scale / found_inf instead of unscaling and checking itself
        # through separate passes (torch's fused optimizers do the same).
        self._step_supports_amp_scaling = True

    # ---- param groups and checkpoints -------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        filled = {**self.defaults, **param_group}
        _check_hyperparameters(filled, where=f"param group {len(self.param_groups)}")
        super().add_param_group(param_group)
        self._plan = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _EXTRA_GROUP_KEYS.items():
                group.setdefault(key, value)
            group.setdefault("decoupled_weight_decay", True)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("kernel_config", KernelConfig())
        self._plan = None
        self._group_values = None
        self._device_tables = {}
        self._amp_defaults = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a fused_mup or torch.optim.AdamW state_dict.

        Group keys the checkpoint lacks (``lr_mult``, ``wd_mult``, ``weight_decay_mode`` in a
        torch checkpoint) keep their current values, so a μP optimizer resumes from a torch
        checkpoint with its multipliers intact.
        """
        kept = [
            {k: v for k, v in group.items() if k != "params"} for group in self.param_groups
        ]
        super().load_state_dict(state_dict)
        for group, old, saved in zip(self.param_groups, kept, state_dict["param_groups"]):
            for key, value in old.items():
                if key not in saved:
                    group[key] = value
        if self.state_dtype is not None:
            # torch's loader casts states to the param dtype; restore the requested precision
            # from the checkpoint's own tensors, which still hold it.
            saved_states = state_dict["state"]
            ids = [i for g in state_dict["param_groups"] for i in g["params"]]
            params = [p for g in self.param_groups for p in g["params"]]
            for pid, p in zip(ids, params):
                for key, value in saved_states.get(pid, {}).items():
                    if key != "step" and torch.is_tensor(value) and not p.is_complex():
                        self.state[p][key] = value.to(p.device, self.state_dtype)
        self._plan = None

    # ---- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step.

        Args:
            closure: reevaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grads = [p.grad for group in self.param_groups for p in group["params"]]
        plan = self._current_plan(grads)
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        values = self._group_scalars()

        for bucket, flat_indices in plan.buckets:
            device = bucket.key.device
            grad_refs = []  # keeps grad copies alive until the launch is enqueued
            addresses = []
            for i in flat_indices:
                g = grads[i]
                if plan.grad_copies.get(i):
                    g = self._grad_like_param(bucket, i, g)
                    grad_refs.append(g)
                addresses.append(g.data_ptr())
            launcher.update_grad_addresses(bucket, addresses)
            scale, inf = self._amp_tensors(device, grad_scale, found_inf)
            launcher.launch(
                bucket, self._device_group_table(device, values), scale, inf, self.kernel_config
            )

        for i, gi, pi in plan.plain:
            group = self.param_groups[gi]
            p = group["params"][pi]
            state = self.state[p]
            real = torch.view_as_real if p.is_complex() else (lambda t: t)
            lr_eff, decay, beta1, beta2, eps = values[5 * gi : 5 * gi + 5]
            adamw_step_(
                real(p),
                real(grads[i]),
                real(state["exp_avg"]),
                real(state["exp_avg_sq"]),
                real(state["max_exp_avg_sq"]) if group["amsgrad"] else None,
                state["step"],
                lr=lr_eff,
                decay=decay,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
        return loss

    # ---- per-step host work, kept small -------------------------------------------------------

    def _group_scalars(self) -> list[float]:
        """lr_eff, decay, beta1, beta2, eps per group, as fp64 host values."""
        values: list[float] = []
        for gi, group in enumerate(self.param_groups):
            lr = group["lr"]
            if isinstance(lr, Tensor):
                if lr.device.type != "cpu":
                    raise NotImplementedError(
                        f"param group {gi}: lr is a {lr.device} tensor; reading it would "
                        "synchronize with the device. Pass a float or a CPU tensor."
                    )
                lr = float(lr)
            lr_eff = lr * group["lr_mult"]
            wd_eff = group["weight_decay"] * group["wd_mult"]
            if group["weight_decay_mode"] == "coupled":
                decay = lr_eff * wd_eff
            elif group["weight_decay_mode"] == "independent":
                initial = group.get("initial_lr", lr)
                initial = float(initial) if isinstance(initial, Tensor) else initial
                decay = (lr / initial if initial else 0.0) * wd_eff
            else:
                raise ValueError(
                    f"Invalid weight_decay_mode: {group['weight_decay_mode']!r} in param group "
                    f"{gi}; expected one of {_WEIGHT_DECAY_MODES}"
                )
            beta1, beta2 = group["betas"]
            values += [lr_eff, decay, float(beta1), float(beta2), float(group["eps"])]
        return values

    def _device_group_table(self, device: torch.device, values: list[float]) -> Tensor:
        if values != self._group_values:
            self._device_tables = {}
            self._group_values = values
        table = self._device_tables.get(device)
        if table is None:
            table = launcher.group_table(values, device, out=None)
            self._device_tables[device] = table
        return table

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

    def _grad_like_param(self, bucket: Bucket, flat_index: int, grad: Tensor) -> Tensor:
        """A grad copy with the param's strides, for grads whose layout differs from it."""
        param = self._flat_param(flat_index)
        out = torch.empty_like(param)
        out.copy_(grad)
        return torch.view_as_real(out) if out.is_complex() else out

    def _flat_param(self, flat_index: int) -> Tensor:
        for group in self.param_groups:
            if flat_index < len(group["params"]):
                return group["params"][flat_index]
            flat_index -= len(group["params"])
        raise IndexError(flat_index)

    def _current_plan(self, grads: list[Tensor | None]) -> _Plan:
        """The cached plan, or a new one if params or grads moved. Costs two lists per step."""
        params = [p for group in self.param_groups for p in group["params"]]
        try:
            param_addresses = [
                p.data_ptr() if g is not None else -1 for p, g in zip(params, grads)
            ]
            grad_addresses = [g.data_ptr() if g is not None else -1 for g in grads]
        except RuntimeError:  # e.g. a sparse grad has no data pointer; the full check says so
            param_addresses, grad_addresses = [], []
        plan = self._plan
        switches = [(bool(g["amsgrad"]), bool(g["maximize"])) for g in self.param_groups]
        if (
            plan is not None
            and param_addresses == plan.param_addresses
            and switches == plan.switches
        ):
            if grad_addresses != plan.grad_addresses:
                # New grad tensors (zero_grad(set_to_none=True)): recheck only their layout.
                for i in range(len(grads)):
                    if grad_addresses[i] != plan.grad_addresses[i] and grads[i] is not None:
                        plan.grad_copies[i] = grads[i].stride() != params[i].stride()
                plan.grad_addresses = grad_addresses
            return plan
        self._plan = self._build_plan(params, grads)
        return self._plan

    # ---- (re)building, only when something structural changed --------------------------------

    def _param_name(self, gi: int, pi: int) -> str:
        group = self.param_groups[gi]
        p = group["params"][pi]
        desc = f"shape {tuple(p.shape)}, {p.dtype}, {p.device}"
        names = group.get("param_names")
        if names is not None and pi < len(names):
            return f"parameter '{names[pi]}' (param group {gi}, {desc})"
        return f"parameter {pi} of param group {gi} ({desc})"

    def _use_kernel(self, p: Tensor, where: str) -> bool:
        real_dtype = p.real.dtype if p.is_complex() else p.dtype
        dense = _is_dense(p)
        if self.backend == "torch":
            return False
        if self.backend == "triton":
            if real_dtype not in _KERNEL_DTYPES:
                raise TypeError(
                    f"backend='triton' supports float32, bfloat16 and float16 params; "
                    f"{where} is {p.dtype}. Use backend='auto' to update it with plain torch."
                )
            if not dense:
                raise RuntimeError(
                    f"backend='triton' needs dense params; {where} has strides {p.stride()}"
                )
            if not launcher.triton_available_for(p.device):
                raise RuntimeError(
                    f"backend='triton' cannot run on {where}: Triton runs CUDA tensors, and CPU "
                    "tensors only in its interpreter (set TRITON_INTERPRET=1 before importing "
                    "triton)."
                )
            return True
        return p.device.type == "cuda" and real_dtype in _KERNEL_DTYPES and dense

    def _checked_state(self, p: Tensor, group: dict[str, Any], where: str) -> dict[str, Tensor]:
        """Creates state lazily; moves it to the param's device; refuses what cannot match."""
        state = self.state[p]
        if p.is_complex():
            state_dtype = p.dtype
        else:
            state_dtype = self.state_dtype or p.dtype
        if len(state) == 0:
            # step lives on the param's device, as in torch's fused AdamW, so that the kernel
            # counts it and a GradScaler-skipped step costs no host sync.
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(
                p, dtype=state_dtype, memory_format=torch.preserve_format
            )
            state["exp_avg_sq"] = torch.zeros_like(
                p, dtype=state_dtype, memory_format=torch.preserve_format
            )
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        for key in keys:
            value = state.get(key)
            if not torch.is_tensor(value):
                raise RuntimeError(f"optimizer state '{key}' of {where} is missing")
            if value.shape != p.shape:
                raise RuntimeError(
                    f"optimizer state '{key}' of {where} has shape {tuple(value.shape)}, but "
                    f"the parameter has shape {tuple(p.shape)}"
                )
            if value.dtype != state[keys[0]].dtype or value.is_complex() != p.is_complex():
                raise RuntimeError(
                    f"optimizer states of {where} disagree in dtype: "
                    + ", ".join(f"{k}={state[k].dtype}" for k in keys)
                )
        step = state.get("step")
        if not torch.is_tensor(step):
            step = torch.tensor(float(step or 0.0))
        if step.device != p.device or step.dtype != torch.float32 or step.dim() != 0:
            state["step"] = step.to(device=p.device, dtype=torch.float32).reshape(())
        for key in keys:
            value = state[key]
            if value.device != p.device or value.stride() != p.stride():
                moved = torch.empty_like(p, dtype=value.dtype)
                moved.copy_(value)
                state[key] = moved
        return state

    def _build_plan(self, params: list[Tensor], grads: list[Tensor | None]) -> _Plan:
        # Validate everything before touching anything, so an error loses no state.
        entries = []
        flat = 0
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                g = grads[flat]
                if g is not None:
                    where = self._param_name(gi, pi)
                    if g.is_sparse:
                        raise RuntimeError(
                            "AdamW does not support sparse gradients, please consider "
                            f"SparseAdam instead ({where})"
                        )
                    if g.device != p.device or g.shape != p.shape or g.dtype != p.dtype:
                        raise RuntimeError(
                            f"grad of {where} is {tuple(g.shape)}, {g.dtype}, {g.device}; it "
                            "must match the parameter's shape, dtype and device"
                        )
                    entries.append((flat, gi, pi, p, g, where, self._use_kernel(p, where)))
                flat += 1

        groups_by_key: dict[BucketKey, tuple[list[TensorSlot], list[int], list[int]]] = {}
        plain: list[tuple[int, int, int]] = []
        grad_copies: dict[int, bool] = {}
        for flat, gi, pi, p, g, where, use_kernel in entries:
            group = self.param_groups[gi]
            state = self._checked_state(p, group, where)
            if not use_kernel:
                plain.append((flat, gi, pi))
                continue
            real = torch.view_as_real if p.is_complex() else (lambda t: t)
            exp_avg = real(state["exp_avg"])
            key = BucketKey(
                device=p.device,
                param_dtype=real(p).dtype,
                state_dtype=exp_avg.dtype,
                amsgrad=bool(group["amsgrad"]),
                maximize=bool(group["maximize"]),
            )
            slot = TensorSlot(
                param=real(p),
                exp_avg=exp_avg,
                exp_avg_sq=real(state["exp_avg_sq"]),
                max_exp_avg_sq=real(state["max_exp_avg_sq"]) if group["amsgrad"] else None,
                step=state["step"],
                group_index=gi,
            )
            slots, indices, addresses = groups_by_key.setdefault(key, ([], [], []))
            slots.append(slot)
            indices.append(flat)
            grad_copies[flat] = g.stride() != p.stride()
            addresses.append(0 if grad_copies[flat] else real(g).data_ptr())

        buckets = [
            (launcher.build_bucket(key, slots, addresses, self.kernel_config), indices)
            for key, (slots, indices, addresses) in groups_by_key.items()
        ]
        return _Plan(
            param_addresses=[
                p.data_ptr() if g is not None else -1 for p, g in zip(params, grads)
            ],
            grad_addresses=[g.data_ptr() if g is not None else -1 for g in grads],
            buckets=buckets,
            plain=plain,
            devices=sorted({b.key.device for b, _ in buckets}, key=str),
            switches=[(bool(g["amsgrad"]), bool(g["maximize"])) for g in self.param_groups],
            grad_copies=grad_copies,
        )
