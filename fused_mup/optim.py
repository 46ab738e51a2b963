"""``fused_mup.AdamW``: a drop-in torch.optim.AdamW that updates the whole model in one launch."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.kernels import UPDATE_KAHAN, UPDATE_MASTER, UPDATE_ROUND, UPDATE_STOCHASTIC
from fused_mup.launcher import Bucket, BucketKey, KernelConfig, TensorSlot
from fused_mup.reference import adamw_step_

try:  # DTensor params (FSDP2, tensor parallel): the kernel updates their local shards.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None

__all__ = ["AdamW", "KernelConfig"]

_BACKENDS = ("auto", "triton", "torch")
_WEIGHT_DECAY_MODES = ("coupled", "independent")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Group keys that fused_mup adds to torch's; kept across load_state_dict of a torch checkpoint.
_EXTRA_GROUP_KEYS = {
    "lr_mult": 1.0,
    "wd_mult": 1.0,
    "weight_decay_mode": "coupled",
    "bf16_update": "round",
}
_BF16_UPDATES = {
    "round": UPDATE_ROUND,
    "kahan": UPDATE_KAHAN,
    "stochastic": UPDATE_STOCHASTIC,
    "master": UPDATE_MASTER,
}
# State key of each mode's helper buffer.
_AUX_STATE = {UPDATE_KAHAN: "kahan_comp", UPDATE_MASTER: "master_param"}


def _local(t: Tensor) -> Tensor:
    """The tensor whose memory the kernel touches: a DTensor's local shard, else ``t``."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


def _storage(t: Tensor) -> Tensor:
    """Local, and real: complex tensors are updated through view_as_real, as torch does."""
    t = _local(t)
    return torch.view_as_real(t) if t.is_complex() else t


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


def _peak_lr(group: dict[str, Any], lr: Any) -> Any:
    """The LR that independent decay is relative to: OneCycleLR's ``max_lr`` (its
    ``initial_lr`` is the warm-up start), else ``initial_lr`` (set by every torch scheduler),
    else the current lr, so that without a scheduler the ratio is 1."""
    return group.get("max_lr", group.get("initial_lr", lr))


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
    if group["bf16_update"] not in _BF16_UPDATES:
        raise ValueError(
            f"Invalid bf16_update: {group['bf16_update']!r}{suffix}; "
            f"expected one of {tuple(_BF16_UPDATES)}"
        )


class _ParamState(dict):
    """One param's state. Any change to it counts on the optimizer's state, so a step can
    tell in O(1) that a state tensor was replaced and its tables must be rebuilt."""

    def __init__(self, owner: _StateDict, *args: Any) -> None:
        super().__init__(*args)
        self.owner = owner

    def __reduce__(self):  # pickles and deep-copies as a plain dict
        return dict, (dict(self),)


def _counting(method_name: str):
    method = getattr(dict, method_name)

    def counted(self, *args, **kwargs):
        self._touch()
        return method(self, *args, **kwargs)

    counted.__name__ = method_name
    return counted


for _name in ("__setitem__", "__delitem__", "clear", "pop", "popitem", "setdefault", "update"):
    setattr(_ParamState, _name, _counting(_name))
_ParamState._touch = lambda self: self.owner._touch()


class _StateDict(defaultdict):
    """``optimizer.state`` that counts every change, to it and to each param's state dict,
    so a step can tell in O(1) whether its tables still point at the right tensors
    (ZeroRedundancyOptimizer and DCP assign states directly)."""

    def __init__(self, default_factory: Any = None, *args: Any) -> None:
        super().__init__(default_factory, *args)
        self.version = 0
        for key, value in list(dict.items(self)):
            dict.__setitem__(self, key, self._own(value))

    def _touch(self) -> None:
        self.version += 1

    def _own(self, value: Any) -> Any:
        return _ParamState(self, value) if isinstance(value, dict) else value

    def __missing__(self, key: Any) -> _ParamState:
        self._touch()
        value = _ParamState(self)
        dict.__setitem__(self, key, value)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._touch()
        super().__setitem__(key, self._own(value))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._touch()
        return super().setdefault(key, self._own(default))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __reduce__(self):  # pickles and deep-copies as torch's defaultdict(dict)
        return defaultdict, (
            dict,
            {k: dict(v) if isinstance(v, dict) else v for k, v in self.items()},
        )


for _name in ("__delitem__", "clear", "pop", "popitem"):
    setattr(_StateDict, _name, _counting(_name))


class _Unsupported:
    """Stands in for a process group where a fused grad norm would be wrong."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __bool__(self) -> bool:
        raise NotImplementedError(
            f"fused clip_grad_norm_ over DTensor shards supports one 1-D mesh of Shard "
            f"placements; got {self.why}. Use torch.nn.utils.clip_grad_norm_."
        )


@dataclass
class _Plan:
    """What a step launches, valid while params, grads and states stay where they are."""

    param_addresses: list[int]  # per param in group order; -1 where it had no grad
    grad_addresses: list[int]
    buckets: list[tuple[Bucket, list[int]]]  # bucket and the flat param indices of its slots
    plain: list[tuple[int, int, int]]  # (flat index, group index, param index) on the torch path
    switches: list[tuple]  # per group: the keys that pick a bucket (compile-time switches)
    grad_copies: dict[int, bool]  # flat index -> grad needs a copy to match the param's strides
    sharded: Any = None  # process group to all-reduce grad norms over (DTensor shards)
    sizes: list[int] = field(default_factory=list)  # numel per param with a grad, -1 without
    config: KernelConfig | None = None  # the tile sizes the chunk tables were built with
    # Per param, the state dict the slots point into. ZeroRedundancyOptimizer.load_state_dict
    # assigns opt.state[p] = {...} without going through load_state_dict: that is a rebuild.
    state_version: tuple[int, int] = (0, -1)  # id and version of optimizer.state when built
    has_dtensor: bool = False
    grad_copy_any: bool = False
    grads_moved: bool = True  # grad addresses changed since the tables were last written


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

    ``weight_decay_mode`` is a third group key. ``peak_lr`` is the group's ``max_lr`` if a
    OneCycleLR set one, else the ``initial_lr`` every torch LR scheduler records, else ``lr``
    itself: without a scheduler the ratio is 1, so independent decay removes the fraction
    ``wd_eff`` per step whatever the peak LR.

    Args:
        params: iterable of tensors, of dicts (param groups), or of (name, tensor) pairs.
        lr, betas, eps, weight_decay, amsgrad, maximize: as in torch.optim.AdamW.
        foreach, fused: accepted for compatibility and ignored: the update is always fused.
        capturable: build the group table on the device from tensor LRs (``lr`` may be a
            device tensor that schedulers ``fill_``), so that ``step()`` can be captured in a
            CUDA graph and replayed. Warm up with eager steps before capturing; grads must be
            static tensors (as CUDA graphs require anyway).
        differentiable: not supported (raises NotImplementedError when True).
        backend: "auto" (Triton on CUDA tensors, plain torch on CPU), "triton" (always the
            kernel; CPU tensors need ``TRITON_INTERPRET=1`` set before triton is imported), or
            "torch" (always the plain-torch path).
        state_dtype: dtype of new exp_avg / exp_avg_sq; None keeps the param dtype, as torch.
        bf16_update: how bf16 params take the update: "round" (to nearest even), "kahan"
            (compensation buffer in state["kahan_comp"]), "stochastic" (unbiased stochastic
            rounding from ``seed``), "master" (fp32 weights in state["master_param"]). Also a
            group key. fp16 params accept all but "stochastic"; fp32 params ignore it.
        seed: seed of the stochastic-rounding RNG (counter-based: step and tensor index).
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
        bf16_update: str = "round",
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
            **_EXTRA_GROUP_KEYS,
            "bf16_update": bf16_update,
        }
        _check_hyperparameters(defaults, where="")
        if differentiable:
            raise NotImplementedError(
                "fused_mup.AdamW does not support differentiable=True: the fused kernel updates "
                "in place outside autograd. Use torch.optim.AdamW(differentiable=True)."
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
        self.seed = int(seed)
        self.kernel_config = kernel_config or KernelConfig()
        self._plan: _Plan | None = None
        self._pending_clip: Tensor | None = None
        self._pending_clip_grads: list[int] | None = None
        self._pending_scale: Tensor | None = None
        self._generators: dict[torch.device, torch.Generator] = {}
        self._group_values: list[float] | None = None
        self._device_tables: dict[torch.device, torch.Tensor] = {}
        self._amp_defaults: dict[torch.device, tuple[Tensor, Tensor]] = {}
        super().__init__(params, defaults)
        self.state = _StateDict(dict, self.state)
        # False, as torch.optim.AdamW: GradScaler.step unscales and checks the grads itself.
        # True (torch's fused optimizers) makes Lightning refuse gradient_clip_val with any
        # mixed precision. clip_grad_norm_(grad_scaler=...) sets it for the one step that
        # follows, so that the scaler hands over its scale and inf flag on the device instead.
        self._step_supports_amp_scaling = False

    # ---- param groups and checkpoints -------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        filled = {**self.defaults, **param_group}
        _check_hyperparameters(filled, where=f"param group {len(self.param_groups)}")
        super().add_param_group(param_group)
        self._plan = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = _StateDict(dict, self.state)
        for group in self.param_groups:
            for key, value in _EXTRA_GROUP_KEYS.items():
                group.setdefault(key, value)
            group.setdefault("decoupled_weight_decay", True)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("kernel_config", KernelConfig())
        self.__dict__.setdefault("seed", 0)
        self._plan = None
        self._pending_clip = None
        self._pending_clip_grads = None
        self._pending_scale = None
        self._generators = {}
        self._group_values = None
        self._device_tables = {}
        self._amp_defaults = {}

    def state_dict(self) -> dict[str, Any]:
        """torch's format, with plain dicts, so that ``torch.load(weights_only=True)`` and
        torch.optim.AdamW read it."""
        out = super().state_dict()
        out["state"] = {k: dict(v) for k, v in out["state"].items()}
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
        self._plan = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; also drops a clip_grad_norm_() result that no step() consumed."""
        self._pending_clip = None
        self._pending_scale = None
        super().zero_grad(set_to_none)

    # ---- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step: one kernel launch per bucket.

        Args:
            closure: reevaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        self._step_supports_amp_scaling = False  # back to GradScaler's own unscale pass
        return loss

    # Dynamo cannot trace the launch (its tables hold raw addresses), so inside a compiled
    # function step() is a graph break that runs eagerly, and the compiled model around it
    # stays compiled.
    @torch.compiler.disable
    def _update(self) -> None:
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        plan = self._current_plan(grads)
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        # clip_grad_norm_(grad_scaler=...) left the grads scaled and told the scaler they were
        # not: the scale it read is the one to divide by now.
        clip, self._pending_clip = self._pending_clip, None
        if clip is not None and self._pending_clip_grads is not plan.grad_addresses:
            # The grads moved since clip_grad_norm_ measured them: its coefficient is stale.
            warnings.warn(
                "fused_mup.AdamW: grads changed between clip_grad_norm_() and step(); "
                "stepping without clipping",
                RuntimeWarning,
                stacklevel=3,
            )
            clip = None
        if self._pending_scale is not None:
            grad_scale = self._pending_scale if grad_scale is None else grad_scale
            self._pending_scale = None
        capturable = any(g["capturable"] for g in self.param_groups)
        values = self._group_scalars() if plan.plain or not capturable else []

        refs = self._point_buckets_at_grads(plan, grads)
        for bucket, _ in plan.buckets:
            device = bucket.key.device
            scale, inf = self._amp_tensors(device, grad_scale, found_inf)
            if capturable:
                table = self._capturable_group_table(device)
            else:
                table = self._device_group_table(device, values)
            launcher.launch(
                bucket,
                table,
                scale,
                inf,
                self.kernel_config,
                clip=clip,
                seed=self.seed,
            )
        del refs

        for i, gi, pi in plan.plain:
            group = self.param_groups[gi]
            p = group["params"][pi]
            state = self.state[p]
            lr_eff, decay, beta1, beta2, eps = values[5 * gi : 5 * gi + 5]
            mode = self._update_mode(p, group, "")
            aux_key = _AUX_STATE.get(mode)
            adamw_step_(
                _storage(p),
                _storage(grads[i]),
                _storage(state["exp_avg"]),
                _storage(state["exp_avg_sq"]),
                _storage(state["max_exp_avg_sq"]) if group["amsgrad"] else None,
                state["step"],
                lr=lr_eff,
                decay=decay,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
                clip=clip,
                update=mode,
                aux=_storage(state[aux_key]) if aux_key else None,
                generator=self._generator(p.device) if mode == UPDATE_STOCHASTIC else None,
            )

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
        if float(norm_type) != 2.0:
            raise NotImplementedError(
                f"fused_mup.AdamW.clip_grad_norm_ fuses norm_type=2.0 only, got {norm_type}; "
                "use torch.nn.utils.clip_grad_norm_ for other norms."
            )
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        plan = self._current_plan(grads)
        devices = {b.key.device for b, _ in plan.buckets} | {
            params[i].device for i, _, _ in plan.plain
        }
        if not devices:
            return torch.zeros(())
        if len(devices) > 1:
            raise NotImplementedError(
                "clip_grad_norm_ fuses grads on one device; these are on "
                f"{sorted(map(str, devices))}. Use torch.nn.utils.clip_grad_norm_."
            )
        (device,) = devices
        scale = None
        scaler_state = None
        if grad_scaler is not None and grad_scaler.is_enabled():
            scale, scaler_state = self._take_scaler(grad_scaler)
        scale_t = scale if scale is not None else self._amp_tensors(device, None, None)[0]
        # Fresh per call: the returned norm and GradScaler's found_inf are views of it.
        clip = torch.empty(3, dtype=torch.float32, device=device)

        refs = self._point_buckets_at_grads(plan, grads)
        for n, (bucket, _) in enumerate(plan.buckets):
            launcher.launch_grad_sumsq(
                bucket, scale_t, clip, max_norm, accumulate=n > 0, config=self.kernel_config
            )
        del refs
        if plan.plain:
            inv = 1.0 / scale_t.to(device=device, dtype=torch.float32).reshape(())
            sumsq = sum((_storage(grads[i]).float() * inv).square().sum() for i, _, _ in plan.plain)
            if plan.buckets:
                sumsq = sumsq + clip[0]
            clip[0] = sumsq
            clip[1] = max_norm
            clip[2] = (~torch.isfinite(clip[0])).float()
        if plan.sharded:
            # FSDP2 / DTensor shards: the norm is over the whole model, so sum across ranks.
            torch.distributed.all_reduce(clip[0:1], group=plan.sharded)
            clip[2] = (~torch.isfinite(clip[0])).float()
        total_norm = clip[0].sqrt()
        if error_if_nonfinite and not torch.isfinite(total_norm):  # a host read, as torch's
            raise RuntimeError(
                f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
                "non-finite, so it cannot be clipped. To disable this error and scale the "
                "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
            )
        self._pending_clip = clip
        self._pending_clip_grads = plan.grad_addresses
        if scaler_state is not None:
            from torch.amp.grad_scaler import OptState

            scaler_state["found_inf_per_device"] = {device: clip[2]}
            scaler_state["stage"] = OptState.UNSCALED
            self._pending_scale = scale
            # scaler.step(opt) then passes found_inf on the device (no host read) and calls
            # step(), which skips on inf inside the kernel.
            self._step_supports_amp_scaling = True
        return total_norm

    def _generator(self, device: torch.device) -> torch.Generator:
        """The plain path's stochastic-rounding RNG: seeded once, so a run is reproducible
        from ``seed`` without reading the step on the host."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _take_scaler(self, grad_scaler: torch.amp.GradScaler):
        """GradScaler's scale and this optimizer's entry in it, checked as unscale_() does."""
        from torch.amp.grad_scaler import OptState

        if grad_scaler._scale is None:
            raise RuntimeError(
                "clip_grad_norm_(grad_scaler=...) needs a scaler that has scaled a loss: call "
                "scaler.scale(loss).backward() first."
            )
        state = grad_scaler._per_optimizer_states[id(self)]
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update()."
            )
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        return grad_scaler._scale, state

    def _point_buckets_at_grads(self, plan: _Plan, grads: list[Tensor | None]) -> list[Tensor]:
        """Writes this step's grad addresses into the tables if grads moved; returns grad
        copies to keep alive until the launches are enqueued."""
        if not plan.grads_moved and not plan.grad_copy_any:
            return []
        refs = []
        if plan.grad_copy_any:
            self._refuse_during_capture("grads need a copy to match their params' strides")
        for bucket, flat_indices in plan.buckets:
            if plan.grad_copy_any:
                addresses = []
                for i in flat_indices:
                    g = grads[i]
                    if plan.grad_copies.get(i):
                        g = self._grad_like_param(i, g)
                        refs.append(g)
                    addresses.append(_local(g).data_ptr())
            else:
                addresses = [plan.grad_addresses[i] for i in flat_indices]
            launcher.update_grad_addresses(bucket, addresses)
        plan.grads_moved = False
        return refs

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
                peak = _peak_lr(group, lr)
                peak = float(peak) if isinstance(peak, Tensor) else peak
                decay = (lr / peak if peak else 0.0) * wd_eff
            else:
                raise ValueError(
                    f"Invalid weight_decay_mode: {group['weight_decay_mode']!r} in param group "
                    f"{gi}; expected one of {_WEIGHT_DECAY_MODES}"
                )
            beta1, beta2 = group["betas"]
            values += [lr_eff, decay, float(beta1), float(beta2), float(group["eps"])]
        return values

    def _capturable_group_table(self, device: torch.device) -> Tensor:
        """The group table from device ops only, so that a CUDA graph replays it.

        Float hyperparameters go into a static table (uploaded when they change, which a graph
        capture refuses); a tensor lr scales its row's lr and decay columns on the device.
        """
        rows, scaled = [], []
        for gi, group in enumerate(self.param_groups):
            lr, mult = group["lr"], group["lr_mult"]
            wd_eff = group["weight_decay"] * group["wd_mult"]
            coupled = group["weight_decay_mode"] == "coupled"
            beta1, beta2 = group["betas"]
            tail = [float(beta1), float(beta2), float(group["eps"])]
            peak = _peak_lr(group, lr)
            if isinstance(lr, Tensor):
                if lr.device != device:
                    raise ValueError(
                        f"capturable=True: param group {gi}'s lr is on {lr.device}, its params on "
                        f"{device}; put the lr tensor on the params' device."
                    )
                if coupled:
                    rows.append([mult, mult * wd_eff, *tail])
                    scaled.append((gi, lr, None))
                elif isinstance(peak, Tensor):  # lr * (wd_eff / peak), divided on the device
                    rows.append([mult, wd_eff, *tail])
                    scaled.append((gi, lr, peak))
                else:  # a float peak folds into the static row
                    rows.append([mult, wd_eff / peak if peak else 0.0, *tail])
                    scaled.append((gi, lr, None))
            else:
                peak = float(peak) if isinstance(peak, Tensor) else peak
                decay = lr * mult * wd_eff if coupled else (lr / peak if peak else 0) * wd_eff
                rows.append([lr * mult, decay, *tail])
        values = [v for row in rows for v in row]
        if values != self._group_values or device not in self._device_tables:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    "fused_mup.AdamW: float hyperparameters changed during CUDA graph capture; "
                    "make them tensors or run an eager step first."
                )
            self._device_tables = {} if values != self._group_values else self._device_tables
            self._group_values = values
            self._device_tables[device] = launcher.group_table(values, device, out=None)
        table = self._device_tables[device].clone()
        for gi, lr, peak in scaled:
            lr64 = lr.to(dtype=torch.float64)
            if peak is None:
                table[gi, :2] *= lr64
            else:
                table[gi, 0] *= lr64
                table[gi, 1] *= lr64 / peak.to(device=device, dtype=torch.float64)
        return table

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

    def _grad_like_param(self, flat_index: int, grad: Tensor) -> Tensor:
        """A grad copy with the param's strides, for grads whose layout differs from it."""
        out = torch.empty_like(_local(self._flat_param(flat_index)))
        out.copy_(_local(grad))
        return out

    def _flat_param(self, flat_index: int) -> Tensor:
        for group in self.param_groups:
            if flat_index < len(group["params"]):
                return group["params"][flat_index]
            flat_index -= len(group["params"])
        raise IndexError(flat_index)

    def _current_plan(self, grads: list[Tensor | None]) -> _Plan:
        """The cached plan, or a new one if params or states moved.

        Per step this costs lists of data pointers and sizes and an O(1) check of the state
        dict; only grads that moved to new tensors are looked at further.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        plan = self._plan
        try:
            if plan is None or plan.has_dtensor:
                grad_addresses = [_local(g).data_ptr() if g is not None else -1 for g in grads]
                param_addresses = [
                    _local(p).data_ptr() if g is not None else -1 for p, g in zip(params, grads)
                ]
            else:  # the common case, without a function call per tensor
                grad_addresses = [g.data_ptr() if g is not None else -1 for g in grads]
                param_addresses = [
                    p.data_ptr() if g is not None else -1 for p, g in zip(params, grads)
                ]
            # p.data = p.data[:n] keeps the address: sizes are part of the key too.
            sizes = [p.numel() if g is not None else -1 for p, g in zip(params, grads)]
        except RuntimeError:  # e.g. a sparse grad has no data pointer; the full check says so
            param_addresses, grad_addresses, sizes = [], [], []
        if (
            plan is not None
            and param_addresses == plan.param_addresses
            and sizes == plan.sizes
            and (id(self.state), getattr(self.state, "version", -2)) == plan.state_version
            and self._switches() == plan.switches
            and self.kernel_config == plan.config
        ):
            if grad_addresses != plan.grad_addresses:
                # New grad tensors (zero_grad(set_to_none=True)): recheck only their layout.
                self._refuse_during_capture("grads moved to new tensors")
                for i, (new, old) in enumerate(zip(grad_addresses, plan.grad_addresses)):
                    if new != old and grads[i] is not None and i in plan.grad_copies:
                        g, p = _local(grads[i]), _local(params[i])
                        plan.grad_copies[i] = g.stride() != p.stride()
                plan.grad_copy_any = any(plan.grad_copies.values())
                plan.grad_addresses = grad_addresses
                plan.grads_moved = True
            return plan
        self._refuse_during_capture("the set of params, or where they live, changed")
        if not isinstance(self.state, _StateDict):  # replaced by a caller: keep counting
            self.state = _StateDict(dict, self.state)
        self._plan = self._build_plan(params, grads)
        self._plan.state_version = (id(self.state), self.state.version)
        self._plan.sizes = sizes
        self._plan.config = self.kernel_config
        return self._plan

    def _refuse_during_capture(self, what: str) -> None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"fused_mup.AdamW: {what} during CUDA graph capture. Run a few eager steps "
                "first and keep params and grads static while capturing."
            )

    # ---- (re)building, only when something structural changed --------------------------------

    def _switches(self) -> list[tuple]:
        """Per group, what the plan depends on besides addresses: the compile-time switches
        and the group's size (a param moved between groups keeps its address)."""
        return [
            (bool(g["amsgrad"]), bool(g["maximize"]), g["bf16_update"], len(g["params"]))
            for g in self.param_groups
        ]

    @staticmethod
    def _shard_group(entries) -> Any:
        """The process group whose ranks each hold a shard of the grads, or None."""
        if DTensor is None:
            return None
        meshes = {p.device_mesh for *_, p, g, _w, _k in entries if isinstance(p, DTensor)}
        if not meshes:
            return None
        n_dtensor = sum(isinstance(e[3], DTensor) for e in entries)
        mesh = next(iter(meshes))
        placements = {pl for *_, p, g, _w, _k in entries for pl in p.placements}
        if len(meshes) > 1 or n_dtensor != len(entries) or mesh.ndim != 1:
            return _Unsupported(
                "params on several meshes, a mix of DTensors and tensors, or a "
                "multi-dimensional mesh"
            )
        if not all(pl.is_shard() for pl in placements):
            return _Unsupported(f"placements {sorted(map(str, placements))} (Shard only)")
        return mesh.get_group()

    @staticmethod
    def _update_mode(p: Tensor, group: dict[str, Any], where: str) -> int:
        """The UPDATE switch for ``p``: bf16_update applies to low-precision params only."""
        mode = _BF16_UPDATES[group["bf16_update"]]
        dtype = p.real.dtype if p.is_complex() else p.dtype
        if dtype == torch.float16 and mode == UPDATE_STOCHASTIC:
            raise ValueError(
                f"bf16_update='stochastic' rounds to bfloat16 only; {where} is float16. Use "
                "'kahan' or 'master' for fp16 params."
            )
        return mode if dtype in (torch.bfloat16, torch.float16) else UPDATE_ROUND

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
        dense = _is_dense(_local(p))
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
        aux_key = _AUX_STATE.get(self._update_mode(p, group, where))
        if aux_key == "kahan_comp" and aux_key not in state:
            state[aux_key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif aux_key == "master_param" and aux_key not in state:
            state[aux_key] = p.detach().to(torch.float32, memory_format=torch.preserve_format)
        if aux_key:
            # The kernel trusts these dtypes for its pointer arithmetic: enforce them.
            want = torch.float32 if aux_key == "master_param" else p.dtype
            if state[aux_key].dtype != want:
                state[aux_key] = state[aux_key].to(want)
        if aux_key and (state[aux_key].shape != p.shape or state[aux_key].device != p.device):
            raise RuntimeError(
                f"optimizer state '{aux_key}' of {where} has shape {tuple(state[aux_key].shape)} "
                f"on {state[aux_key].device}; the parameter is {tuple(p.shape)} on {p.device}"
            )
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
            exp_avg = _storage(state["exp_avg"])
            update = self._update_mode(p, group, where)
            aux_key = _AUX_STATE.get(update)
            key = BucketKey(
                device=p.device,
                param_dtype=_storage(p).dtype,
                state_dtype=exp_avg.dtype,
                amsgrad=bool(group["amsgrad"]),
                maximize=bool(group["maximize"]),
                update=update,
            )
            slot = TensorSlot(
                param=_storage(p),
                exp_avg=exp_avg,
                exp_avg_sq=_storage(state["exp_avg_sq"]),
                max_exp_avg_sq=_storage(state["max_exp_avg_sq"]) if group["amsgrad"] else None,
                step=state["step"],
                group_index=gi,
                aux=_storage(state[aux_key]) if aux_key else None,
            )
            slots, indices, addresses = groups_by_key.setdefault(key, ([], [], []))
            slots.append(slot)
            indices.append(flat)
            grad_copies[flat] = _local(g).stride() != _local(p).stride()
            addresses.append(0 if grad_copies[flat] else _local(g).data_ptr())

        buckets = [
            (launcher.build_bucket(key, slots, addresses, self.kernel_config), indices)
            for key, (slots, indices, addresses) in groups_by_key.items()
        ]
        return _Plan(
            param_addresses=[
                _local(p).data_ptr() if g is not None else -1 for p, g in zip(params, grads)
            ],
            grad_addresses=[_local(g).data_ptr() if g is not None else -1 for g in grads],
            buckets=buckets,
            plain=plain,
            switches=self._switches(),
            sharded=self._shard_group(entries),
            has_dtensor=DTensor is not None and any(isinstance(e[3], DTensor) for e in entries),
            grad_copy_any=any(grad_copies.values()),
            grad_copies=grad_copies,
        )
