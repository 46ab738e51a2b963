"""The plan of a step: which tensors go to which kernel launch and which to the reference path.

A plan is rebuilt only when something structural changes (params, their sizes, the state dict,
the compile-time switches, the tile config); per step it costs one scan of data pointers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.launcher import Bucket, BucketKey, KernelConfig, TensorSlot
from fused_mup.optim.cpu_fused import CpuFusedGroup, takes
from fused_mup.optim.mesh_norm import MeshNorm, Unsupported, mesh_norm
from fused_mup.optim.modes import update_mode
from fused_mup.optim.state import CountingStateDict, is_dense, layout_strides, prepare_state
from fused_mup.optim.validation import KERNEL_DTYPES

try:  # DTensor params (FSDP2, tensor parallel): the kernel updates their local shards.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None

__all__ = [
    "ParamRef",
    "cpu_fused_grads",
    "Plan",
    "Planner",
    "local",
    "param_name",
    "real_view",
    "refuse_during_capture",
]


def local(t: Tensor) -> Tensor:
    """The tensor whose memory the kernel touches: a DTensor's local shard, else ``t``."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


def real_view(t: Tensor) -> Tensor:
    """Local, and real: complex tensors are updated through view_as_real, as torch does."""
    t = local(t)
    return torch.view_as_real(t) if t.is_complex() else t


def param_name(param_groups: list[dict[str, Any]], gi: int, pi: int) -> str:
    """How errors name a parameter: by its name if the groups carry ``param_names``."""
    group = param_groups[gi]
    p = group["params"][pi]
    desc = f"shape {tuple(p.shape)}, {p.dtype}, {p.device}"
    names = group.get("param_names")
    if names is not None and pi < len(names):
        return f"parameter '{names[pi]}' (param group {gi}, {desc})"
    return f"parameter {pi} of param group {gi} ({desc})"


def refuse_during_capture(what: str) -> None:
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"fused_mup.AdamW: {what} during CUDA graph capture. Run a few eager steps "
            "first and keep params and grads static while capturing."
        )


class PlannedOptimizer(Protocol):
    """What a plan reads from the optimizer (``fused_mup.AdamW``)."""

    param_groups: list[dict[str, Any]]
    state: Any
    backend: str
    state_dtype: torch.dtype | None
    kernel_config: KernelConfig


class ParamRef(NamedTuple):
    """Where a param sits: its index over all groups, its group, its index in the group."""

    flat: int
    group: int
    index: int


class _Entry(NamedTuple):
    """A param with a grad, checked, while a plan is built."""

    ref: ParamRef
    param: Tensor
    grad: Tensor
    where: str
    use_kernel: bool


@dataclass
class Plan:
    """What a step launches, valid while params, grads and states stay where they are."""

    param_addresses: list[int]  # per param in group order; -1 where not a member
    grad_addresses: list[int]  # -1 where no grad
    buckets: list[tuple[Bucket, list[int]]]  # a launch and the flat indices of its slots
    reference: list[ParamRef]  # params updated by the reference path (fused_mup.reference)
    cpu_fused: list[CpuFusedGroup]  # CPU params updated by torch's fused kernel, per group
    switches: list[tuple]  # per group: the keys that pick a bucket (compile-time switches)
    grad_copies: dict[int, bool]  # flat index -> grad needs a copy to match the param's strides
    unlaunched: list[int] = field(default_factory=list)  # flat indices not in a kernel bucket
    sharded: MeshNorm | Unsupported | None = None  # grad norms over DTensor shards
    sizes: list[int] = field(default_factory=list)  # numel per member, -1 for the rest
    # Members: the params the tables hold, those with a grad or a state when it was built. A
    # member without a grad is skipped (present False) without a new plan: MoE experts that
    # got no tokens, LayerDrop, multi-task heads. Only a non-member with a grad rebuilds.
    members: list[bool] = field(default_factory=list)
    present: list[bool] = field(default_factory=list)  # per param: has a grad this step
    grad_ids: list[int] = field(default_factory=list)  # id() of each grad, for re-strided ones
    config: KernelConfig | None = None  # the tile sizes the chunk tables were built with
    state_version: tuple[int, int] = (0, -1)  # id and version of optimizer.state when built
    has_dtensor: bool = False
    grad_copy_any: bool = False
    grads_moved: bool = True  # grad addresses changed since the tables were last written
    # Non-dense params the kernel updates through a dense copy: (param, staging) pairs.
    staged: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    # The state tensors the tables point at, and their addresses: `t.data = ...` (the
    # optimizer_to(device) offload snippet) moves a storage without touching optimizer.state.
    state_tensors: list[Tensor] = field(default_factory=list)
    state_addresses: list[int] = field(default_factory=list)
    # Flat indices of (non-DTensor) params with a grad-copy flag that were contiguous when the
    # plan was built: a new contiguous grad of one still contiguous needs no stride check.
    contiguous_params: frozenset[int] = frozenset()


def _addresses(tensors: list[Tensor], has_dtensor: bool) -> list[int]:
    if has_dtensor:
        return [local(t).data_ptr() for t in tensors]
    return list(map(Tensor.data_ptr, tensors))  # the per-step scan: no call per tensor in Python


def _switches(param_groups: list[dict[str, Any]]) -> list[tuple]:
    """Per group, what the plan depends on besides addresses: the compile-time switches
    and the group's size (a param moved between groups keeps its address)."""
    return [
        (bool(g["amsgrad"]), bool(g["maximize"]), g["bf16_update"], len(g["params"]))
        for g in param_groups
    ]


def _use_kernel(p: Tensor, backend: str, where: str) -> bool:
    real_dtype = p.real.dtype if p.is_complex() else p.dtype
    if backend == "reference" or p.is_meta:  # meta params step as a no-op on every backend
        return False
    if backend == "triton":
        if real_dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"backend='triton' supports float32, bfloat16 and float16 params; "
                f"{where} is {p.dtype}. Use backend='auto' to update it on the reference path."
            )
        launcher.require_triton(f"backend='triton' ({where})")
        if not launcher.triton_available_for(p.device):
            raise RuntimeError(
                f"backend='triton' cannot run on {where}: Triton runs CUDA tensors, and CPU "
                "tensors only in its interpreter (set TRITON_INTERPRET=1 before importing "
                "triton)."
            )
        return True
    return (
        p.device.type == "cuda"
        and real_dtype in KERNEL_DTYPES
        and launcher.triton_available_for(p.device)
    )


def _kernel_state_keys(group: dict[str, Any], mode: Any) -> list[str]:
    keys = ["exp_avg", "exp_avg_sq", "step"]
    if group["amsgrad"]:
        keys.append("max_exp_avg_sq")
    if mode.aux_key:
        keys.append(mode.aux_key)
    return keys


def _shard_group(entries: list[_Entry]) -> MeshNorm | Unsupported | None:
    """How the grad norm of DTensor params adds up across their mesh, or None."""
    return mesh_norm((e.ref.flat, e.param, e.grad, e.where) for e in entries)


def _has_stepped(state: Any, p: Tensor) -> bool:
    """Whether ``p`` has a state from earlier steps (read without creating one)."""
    s = state.get(p) if isinstance(state, dict) else None
    return bool(s) and "step" in s


def _build(opt: PlannedOptimizer, params: list[Tensor], grads: list[Tensor | None]) -> Plan:
    # Validate everything before touching anything, so an error loses no state.
    entries: list[_Entry] = []
    flat = 0
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            g = grads[flat]
            if g is None and _has_stepped(opt.state, p):  # a member, skipped while gradless
                where = param_name(opt.param_groups, gi, pi)
                use = _use_kernel(p, opt.backend, where)
                entries.append(_Entry(ParamRef(flat, gi, pi), p, None, where, use))
            if g is not None:
                where = param_name(opt.param_groups, gi, pi)
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
                if p.is_meta and group["fused"]:
                    # torch's fused AdamW refuses meta params (its default path steps them as
                    # a no-op, as we do); asked for fused=True, give torch's error.
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices, but {p.dtype} and meta ({where})"
                    )
                use = _use_kernel(p, opt.backend, where)
                entries.append(_Entry(ParamRef(flat, gi, pi), p, g, where, use))
            flat += 1

    by_key: dict[BucketKey, tuple[list[TensorSlot], list[int], list[int]]] = {}
    reference: list[ParamRef] = []
    fused: dict[int, CpuFusedGroup] = {}
    grad_copies: dict[int, bool] = {}
    staged: list[tuple[Tensor, Tensor]] = []
    state_tensors: list[Tensor] = []
    for ref, p, g, where, use in entries:
        group = opt.param_groups[ref.group]
        mode = update_mode(p, group, where)
        state = prepare_state(opt.state[p], p, group, mode, opt.state_dtype, where)
        if not use:
            real, exp_avg = real_view(p), real_view(state["exp_avg"])
            if opt.backend == "auto" and takes(real, exp_avg, mode.code, is_dense(real)):
                amsgrad = bool(group["amsgrad"])
                fg = fused.setdefault(
                    ref.group, CpuFusedGroup(ref.group, amsgrad, bool(group["maximize"]))
                )
                fg.flat.append(ref.flat)
                fg.views = fg.views or real is not p
                fg.params.append(real)
                fg.exp_avgs.append(exp_avg)
                fg.exp_avg_sqs.append(real_view(state["exp_avg_sq"]))
                if amsgrad:
                    fg.max_exp_avg_sqs.append(real_view(state["max_exp_avg_sq"]))
                fg.steps.append(state["step"])
                grad_copies[ref.flat] = g is not None and local(g).stride() != local(p).stride()
            else:
                reference.append(ref)
            continue
        exp_avg = real_view(state["exp_avg"])
        target = local(p)
        if not is_dense(target):
            # The kernel walks memory in order: it updates a dense copy, which the step copies
            # in and out (two extra copies of the param per step, see docs/optimizer.md).
            staging = torch.empty_like(target)
            staged.append((target, staging))
            target = staging
        key = BucketKey(
            device=p.device,
            param_dtype=real_view(p).dtype,
            state_dtype=exp_avg.dtype,
            amsgrad=bool(group["amsgrad"]),
            maximize=bool(group["maximize"]),
            update=mode.code,
        )
        slot = TensorSlot(
            param=real_view(target),
            exp_avg=exp_avg,
            exp_avg_sq=real_view(state["exp_avg_sq"]),
            max_exp_avg_sq=real_view(state["max_exp_avg_sq"]) if group["amsgrad"] else None,
            step=state["step"],
            group_index=ref.group,
            aux=real_view(state[mode.aux_key]) if mode.aux_key else None,
        )
        state_tensors += [state[k] for k in _kernel_state_keys(group, mode)]
        slots, indices, addresses = by_key.setdefault(key, ([], [], []))
        slots.append(slot)
        indices.append(ref.flat)
        grad_copies[ref.flat] = g is not None and local(g).stride() != target.stride()
        addresses.append(0 if g is None or grad_copies[ref.flat] else local(g).data_ptr())

    buckets = [
        (launcher.build_bucket(key, slots, addresses, opt.kernel_config), indices)
        for key, (slots, indices, addresses) in by_key.items()
    ]
    has_dtensor = DTensor is not None and any(isinstance(e.param, DTensor) for e in entries)
    members = [False] * len(params)
    for e in entries:
        members[e.ref.flat] = True
    return Plan(
        param_addresses=[local(p).data_ptr() if m else -1 for p, m in zip(params, members)],
        grad_addresses=[local(g).data_ptr() if g is not None else -1 for g in grads],
        members=members,
        present=[g is not None for g in grads],
        grad_ids=list(map(id, grads)),
        buckets=buckets,
        reference=reference,
        cpu_fused=list(fused.values()),
        unlaunched=sorted(
            [r.flat for r in reference] + [i for fg in fused.values() for i in fg.flat]
        ),
        switches=_switches(opt.param_groups),
        sharded=_shard_group(entries),
        has_dtensor=has_dtensor,
        grad_copy_any=any(grad_copies.values()),
        grad_copies=grad_copies,
        staged=staged,
        state_tensors=state_tensors,
        state_addresses=_addresses(state_tensors, has_dtensor),
        contiguous_params=frozenset()
        if has_dtensor
        else frozenset(i for i in grad_copies if params[i].is_contiguous()),
        sizes=[p.numel() if m else -1 for p, m in zip(params, members)],
    )


def _grad_like_param(param: Tensor, grad: Tensor) -> Tensor:
    """A copy of ``grad`` with the param's strides, for a grad laid out differently: the
    kernels walk both in memory order."""
    copy = torch.empty_like(local(param))
    copy.copy_(local(grad))
    return copy


def cpu_fused_grads(
    plan: Plan, fused: CpuFusedGroup, params: list[Tensor], grads: list[Tensor | None]
) -> list[Tensor]:
    """This step's grads of one torch-fused group, as real views with the params' strides."""
    if not fused.views and not plan.grad_copy_any:  # the common case: the grads as they are
        return [grads[i] for i in fused.flat]
    out = []
    for i in fused.flat:
        g = grads[i]
        if plan.grad_copy_any and plan.grad_copies.get(i):
            g = _grad_like_param(params[i], g)
        out.append(real_view(g))
    return out


class Planner:
    """Keeps the current plan; rebuilds it only when the cheap per-step key changes."""

    def __init__(self) -> None:
        self.plan: Plan | None = None
        # Buckets a CUDA graph captured: their tables outlive any new plan, for the replays.
        self.graph_buckets: list[Bucket] = []

    def invalidate(self) -> None:
        """Drops the plan, and with it every reference to params, grads and states (so that
        offloading them frees their memory now, not at the next step)."""
        plan, self.plan = self.plan, None
        if plan is not None:
            kept = {id(b) for b in self.graph_buckets}
            self.graph_buckets += [
                b for b, _ in plan.buckets if (b.captured or b.retired) and id(b) not in kept
            ]

    def current(self, opt: PlannedOptimizer, grads: list[Tensor | None]) -> Plan:
        """The cached plan, or a new one if params or states moved.

        Per step this costs lists of data pointers, sizes and grad ids and an O(1) check of the
        state dict; only grads that moved to new tensors are looked at further.
        """
        params = [p for group in opt.param_groups for p in group["params"]]
        plan = self.plan
        present = [g is not None for g in grads]
        members = plan.members if plan is not None else present
        try:
            if plan is None or plan.has_dtensor:
                grad_addresses = [local(g).data_ptr() if g is not None else -1 for g in grads]
                param_addresses = [
                    local(p).data_ptr() if m else -1 for p, m in zip(params, members)
                ]
            else:  # the common case, without a function call per tensor
                grad_addresses = [g.data_ptr() if g is not None else -1 for g in grads]
                param_addresses = [p.data_ptr() if m else -1 for p, m in zip(params, members)]
            # p.data = p.data[:n] keeps the address: sizes are part of the key too.
            sizes = [p.numel() if m else -1 for p, m in zip(params, members)]
        except RuntimeError:  # e.g. a sparse grad has no data pointer; the full check says so
            param_addresses, grad_addresses, sizes = [], [], []
        if (
            plan is not None
            and param_addresses == plan.param_addresses
            and sizes == plan.sizes
            and (present == plan.present or _members_cover(present, plan.members))
            and (id(opt.state), getattr(opt.state, "version", -2)) == plan.state_version
            and _switches(opt.param_groups) == plan.switches
            and opt.kernel_config == plan.config
            and _addresses(plan.state_tensors, plan.has_dtensor) == plan.state_addresses
        ):
            grad_ids = list(map(id, grads))
            if grad_addresses != plan.grad_addresses or grad_ids != plan.grad_ids:
                # New grad tensors (zero_grad(set_to_none=True)), or a grad re-strided at the
                # same address (a new view of a reused buffer): recheck only their layout.
                refuse_during_capture("grads moved to new tensors")
                _recheck_layouts(plan, params, grads, grad_addresses, grad_ids)
            if present != plan.present:
                refuse_during_capture("the set of params with a grad changed")
                plan.present = present
                _select(plan)
            return plan
        refuse_during_capture("the set of params or states, or where they live, changed")
        if not isinstance(opt.state, CountingStateDict):  # replaced by a caller: keep counting
            opt.state = CountingStateDict(dict, opt.state)
        opt.state.on_change = self.invalidate
        self.invalidate()
        plan = _build(opt, params, grads)
        plan.state_version = (id(opt.state), opt.state.version)
        plan.config = opt.kernel_config
        _select(plan)
        self.plan = plan
        return plan

    def point_at_grads(self, params: list[Tensor], grads: list[Tensor | None]) -> list[Tensor]:
        """Writes this step's grad addresses into the tables if grads moved; returns grad
        copies to keep alive until the launches are enqueued."""
        plan = self.plan
        if not plan.grads_moved and not plan.grad_copy_any:
            return []
        refs = []
        if plan.grad_copy_any:
            refuse_during_capture("grads need a copy to match their params' strides")
        for bucket, flat_indices in plan.buckets:
            addresses = []
            for i in flat_indices:
                g = grads[i]
                if g is None:  # a member skipped this step: its chunks are not launched
                    addresses.append(0)
                    continue
                if plan.grad_copy_any and plan.grad_copies.get(i):
                    g = _grad_like_param(params[i], g)
                    refs.append(g)
                    addresses.append(local(g).data_ptr())
                else:
                    addresses.append(plan.grad_addresses[i])
            launcher.update_grad_addresses(bucket, addresses)
        plan.grads_moved = False
        return refs


def _members_cover(present: list[bool], members: list[bool]) -> bool:
    """Every param with a grad is a member (the plan can skip the others without a rebuild)."""
    return len(present) == len(members) and all(m for p, m in zip(present, members) if p)


def _recheck_layouts(
    plan: Plan,
    params: list[Tensor],
    grads: list[Tensor | None],
    grad_addresses: list[int],
    grad_ids: list[int],
) -> None:
    copies = plan.grad_copies
    moved = [
        i
        for i, (new, old, gid, old_id) in enumerate(
            zip(grad_addresses, plan.grad_addresses, grad_ids, plan.grad_ids)
        )
        if (new != old or gid != old_id) and i in copies and grads[i] is not None
    ]
    contiguous = plan.contiguous_params
    for i in moved:
        g = grads[i]
        if i in contiguous and g.is_contiguous() and params[i].is_contiguous():
            copies[i] = False  # the common case: one memory order, no copy
        else:
            copies[i] = local(g).stride() != layout_strides(local(params[i]))
    plan.grad_copy_any = any(copies.values())
    plan.grad_addresses = grad_addresses
    plan.grad_ids = grad_ids
    plan.grads_moved = True


def _select(plan: Plan) -> None:
    """Points each bucket's launch at the members that have a grad this step."""
    present = plan.present
    for bucket, flat_indices in plan.buckets:
        selected = tuple(present[i] for i in flat_indices)
        launcher.select_tensors(bucket, None if all(selected) else selected)
