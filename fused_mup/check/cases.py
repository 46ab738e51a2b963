"""The cases of ``fused-mup check``: each trains ``fused_mup.AdamW`` and ``torch.optim.AdamW``
from the same params and grads and compares params and states (see the package docstring)."""

from __future__ import annotations

import importlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fused_mup.check.report import CheckRow
from fused_mup.optim import AdamW, to_torch_state_dict
from fused_mup.tolerances import TOLERANCES, errors

__all__ = [
    "DTYPES",
    "FLAGS",
    "STEPS",
    "checkpoint_case",
    "clip_case",
    "grad_scaler_case",
    "launch_case",
    "load_factory",
    "model_case",
    "trajectory_case",
]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
FLAGS = {
    "plain": {},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True},
}
# Three groups: multipliers below, at and above 1, one undecayed group, odd shapes that span
# several kernel programs at the default tile size.
_GROUPS: list[dict[str, Any]] = [
    {"shapes": [(7, 13), (127,), (4099,)], "lr": 1e-2, "lr_mult": 0.25, "wd_mult": 4.0},
    {
        "shapes": [(3, 1, 65), (1,)],
        "lr": 3e-3,
        "lr_mult": 1.0,
        "wd_mult": 0.0,
        "eps": 1e-6,
        "betas": (0.8, 0.99),
    },
    {"shapes": [(300,), (2, 2)], "lr": 1e-2, "lr_mult": 4.0, "wd_mult": 0.5},
]
_WEIGHT_DECAY = 0.1
STEPS = 8


# --------------------------------------------------------------------------------------------
# Runs: one set of params + optimizer, fused or torch
# --------------------------------------------------------------------------------------------


@dataclass
class _Run:
    opt: torch.optim.Optimizer
    groups: list[list[Tensor]]  # params per group
    round_to: list[list[torch.dtype | None]]  # per param: round fp32 reference to this dtype

    @property
    def params(self) -> list[Tensor]:
        return [p for g in self.groups for p in g]

    def round_(self) -> None:
        """The reference keeps fp32 values; storage in a low-precision format rounds them."""
        for p, dt in zip(self.params, (d for g in self.round_to for d in g), strict=True):
            if dt is None:
                continue
            p.data.copy_(p.data.to(dt).float())
            for key, value in self.opt.state[p].items():
                if key in _STATE_KEYS:
                    value.copy_(value.to(dt).float())


def _initial(shapes: Sequence[Sequence[tuple[int, ...]]], seed: int) -> list[list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in g] for g in shapes]


def _fused_run(
    init: list[list[Tensor]],
    dtype: torch.dtype,
    device: str,
    kw: dict[str, Any],
    backend: str,
    specs: list[dict[str, Any]],
) -> _Run:
    groups = [[t.to(device, dtype, copy=True).requires_grad_() for t in g] for g in init]
    opt_groups = [{**_spec_keys(s), "params": ps} for s, ps in zip(specs, groups, strict=True)]
    opt = AdamW(opt_groups, weight_decay=_WEIGHT_DECAY, backend=backend, **kw)
    return _Run(opt, groups, [[None] * len(g) for g in groups])


def _torch_run(
    init: list[list[Tensor]],
    dtype: torch.dtype,
    device: str,
    kw: dict[str, Any],
    specs: list[dict[str, Any]],
    *,
    bake: bool = True,
) -> _Run:
    low = dtype in (torch.bfloat16, torch.float16)
    # Same starting values as the fused run (rounded to dtype), kept in fp32 for torch's math.
    groups = [
        [t.to(dtype).to(device, torch.float32, copy=True).requires_grad_() for t in g] for g in init
    ]
    opt_groups = []
    for s, ps in zip(specs, groups, strict=True):
        keys = _spec_keys(s)
        lr_mult, wd_mult = keys.pop("lr_mult", 1.0), keys.pop("wd_mult", 1.0)
        if bake:  # torch has no multipliers: the equivalent torch group
            keys["lr"] = keys["lr"] * lr_mult
            keys["weight_decay"] = _WEIGHT_DECAY * wd_mult
        opt_groups.append({**keys, "params": ps})
    opt = torch.optim.AdamW(opt_groups, weight_decay=_WEIGHT_DECAY, foreach=False, **kw)
    return _Run(opt, groups, [[dtype if low else None] * len(g) for g in groups])


def _spec_keys(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "shapes"}


def _grads(runs: Sequence[_Run], gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0):
    """The same grads (rounded to ``dtype``) for every run."""
    for tensors in zip(*(r.params for r in runs), strict=True):
        g = (torch.randn(tensors[0].shape, generator=gen) * scale).to(dtype)
        for p in tensors:
            p.grad = g.to(p.device, p.dtype, copy=True)  # own copy: clipping writes in place


def _step(run: _Run) -> None:
    run.opt.step()
    run.round_()


def _compare(row: CheckRow, fused: _Run, ref: _Run, dtype: torch.dtype) -> CheckRow:
    """Worst errors over params and states; pass iff within the dtype's tolerances."""
    tol = TOLERANCES[dtype]
    row.tol_rel, row.tol_abs = tol["rel"], tol["abs"]
    worst_rel = worst_abs = 0.0
    problems: list[str] = []
    if {p.data_ptr() for p in fused.params} & {q.data_ptr() for q in ref.params}:
        problems.append("the two runs share param memory: nothing would be compared")
    for i, (p, q) in enumerate(zip(fused.params, ref.params, strict=True)):
        pairs = [("param", p, q)]
        s_f, s_r = fused.opt.state.get(p, {}), ref.opt.state.get(q, {})
        for key in _STATE_KEYS:
            if key in s_r:
                if key not in s_f:
                    problems.append(f"param {i}: no {key}")
                    continue
                pairs.append((key, s_f[key], s_r[key]))
        if "step" in s_r and float(s_f.get("step", -1)) != float(s_r["step"]):
            problems.append(f"param {i}: step {float(s_f.get('step', -1))} != {float(s_r['step'])}")
        for _name, a, b in pairs:
            rel, ab = errors(a.detach(), b.detach())
            worst_rel = max(worst_rel, rel) if not math.isnan(rel) else math.nan
            worst_abs = max(worst_abs, ab) if not math.isnan(ab) else math.nan
            if math.isnan(worst_rel):
                break
    row.rel, row.abs = worst_rel, worst_abs
    ok = worst_rel <= tol["rel"] and worst_abs <= tol["abs"] and not problems
    row.status = "pass" if ok else "FAIL"
    if problems:
        row.note = "; ".join(problems[:3])
    elif math.isnan(worst_rel):
        row.note = "non-finite values or a shape mismatch"
    return row


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def trajectory_case(device: str, backend: str, dtype_name: str, flag: str, seed: int) -> CheckRow:
    dtype = DTYPES[dtype_name]
    init = _initial([s["shapes"] for s in _GROUPS], seed)
    fused = _fused_run(init, dtype, device, FLAGS[flag], backend, _GROUPS)
    ref = _torch_run(init, dtype, device, FLAGS[flag], _GROUPS)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(STEPS):
        _grads([fused, ref], gen, dtype)
        _step(fused)
        _step(ref)
    return _compare(CheckRow(f"trajectory/{flag}", dtype_name), fused, ref, dtype)


def _scaled_backward(run: _Run, scaler: torch.amp.GradScaler, grads: list[Tensor]) -> None:
    # A loss whose grad is exactly `grads`, so GradScaler scales a real backward.
    run.opt.zero_grad(set_to_none=True)
    loss = sum((p * g.to(p.device, p.dtype)).sum() for p, g in zip(run.params, grads, strict=True))
    scaler.scale(loss).backward()


def grad_scaler_case(device: str, backend: str, seed: int, *, clip: float | None) -> CheckRow:
    name = "grad_scaler+inf" if clip is None else "clip+grad_scaler+inf"
    dtype = torch.float32
    init = _initial([s["shapes"] for s in _GROUPS], seed)
    fused = _fused_run(init, dtype, device, {}, backend, _GROUPS)
    ref = _torch_run(init, dtype, device, {}, _GROUPS)
    scalers = [
        torch.amp.GradScaler(torch.device(device).type, init_scale=2.0**12, growth_interval=2)
        for _ in "ab"
    ]
    gen = torch.Generator().manual_seed(seed + 1)
    inf_step = 3
    norms: list[tuple[float, float]] = []
    for step in range(STEPS):
        grads = [torch.randn(p.shape, generator=gen) for p in fused.params]
        for run, scaler in zip((fused, ref), scalers, strict=True):
            _scaled_backward(run, scaler, grads)
            if step == inf_step:
                run.params[0].grad.view(-1)[0] = math.inf
            if clip is not None and run is fused:
                n_f = run.opt.clip_grad_norm_(clip, grad_scaler=scaler)
            elif clip is not None:
                scaler.unscale_(run.opt)
                n_r = nn.utils.clip_grad_norm_(run.params, clip)
            scaler.step(run.opt)
            scaler.update()
        if clip is not None and step != inf_step:
            norms.append((float(n_f), float(n_r)))
    row = _compare(CheckRow(name, "fp32"), fused, ref, dtype)
    notes = [row.note] if row.note else []
    if scalers[0].get_scale() != scalers[1].get_scale():
        notes.append(f"scale {scalers[0].get_scale()} != torch's {scalers[1].get_scale()}")
    bad = [(a, b) for a, b in norms if not math.isclose(a, b, rel_tol=1e-5)]
    if bad:
        notes.append(f"grad norm {bad[0][0]:.6g} != torch's {bad[0][1]:.6g}")
    if len(notes) > (1 if row.note else 0):
        row.status = "FAIL"
    row.note = "; ".join(notes)
    return row


def clip_case(device: str, backend: str, seed: int) -> CheckRow:
    dtype = torch.float32
    init = _initial([s["shapes"] for s in _GROUPS], seed)
    fused = _fused_run(init, dtype, device, {}, backend, _GROUPS)
    ref = _torch_run(init, dtype, device, {}, _GROUPS)
    gen = torch.Generator().manual_seed(seed + 1)
    bad = []
    for _ in range(STEPS):
        _grads([fused, ref], gen, dtype)
        n_f = fused.opt.clip_grad_norm_(1.0)
        n_r = nn.utils.clip_grad_norm_(ref.params, 1.0)
        if not math.isclose(float(n_f), float(n_r), rel_tol=1e-5):
            bad.append((float(n_f), float(n_r)))
        _step(fused)
        _step(ref)
    row = _compare(CheckRow("clip", "fp32"), fused, ref, dtype)
    if bad:
        row.status = "FAIL"
        row.note = f"grad norm {bad[0][0]:.6g} != torch's {bad[0][1]:.6g}"
    return row


def _poisoned(init: list[list[Tensor]], make: Callable[..., _Run]) -> _Run:
    """A fresh run whose params and optimizer state hold NaN until a checkpoint fills them."""
    fresh = make(init)
    for p in fresh.params:
        p.grad = torch.full_like(p, math.nan)
    fresh.opt.step()  # NaN moments and a step counter that the checkpoint must replace
    with torch.no_grad():
        for p in fresh.params:
            p.fill_(math.nan)
    return fresh


def checkpoint_case(device: str, backend: str, seed: int, direction: str) -> CheckRow:
    """First half in one optimizer, state_dict through a buffer, second half in the other."""
    dtype = torch.float32
    # A fused checkpoint crosses to torch through to_torch_state_dict, multipliers and all; a
    # torch checkpoint has none to carry (fused groups without multipliers load it).
    specs = (
        [{k: v for k, v in s.items() if k not in ("lr_mult", "wd_mult")} for s in _GROUPS]
        if direction == "torch->fused"
        else _GROUPS
    )
    init = _initial([s["shapes"] for s in specs], seed)
    src_kind, dst_kind = direction.split("->")

    def make(kind: str) -> Callable[[list[list[Tensor]]], _Run]:
        if kind == "fused":
            return lambda i: _fused_run(i, dtype, device, {"amsgrad": True}, backend, specs)
        return lambda i: _torch_run(i, dtype, device, {"amsgrad": True}, specs)

    ref = _torch_run(init, dtype, device, {"amsgrad": True}, specs)
    src = make(src_kind)(init)
    gen = torch.Generator().manual_seed(seed + 1)
    half = STEPS // 2
    for _ in range(half):
        _grads([src, ref], gen, dtype)
        _step(src)
        _step(ref)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in src.params], "opt": src.opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu")  # as from a file, on the host
    dst = _poisoned(init, make(dst_kind))
    with torch.no_grad():
        for p, value in zip(dst.params, saved["params"], strict=True):
            p.copy_(value)
    state = saved["opt"]
    dst.opt.load_state_dict(to_torch_state_dict(state) if direction == "fused->torch" else state)
    for _ in range(STEPS - half):
        _grads([dst, ref], gen, dtype)
        _step(dst)
        _step(ref)
    return _compare(CheckRow(f"checkpoint/{direction}", "fp32"), dst, ref, dtype)


def launch_case(device: str, backend: str, seed: int) -> CheckRow:
    row = CheckRow("launches/step", "fp32")
    if not device.startswith("cuda"):
        row.status = "skip"
        row.note = "kernel launches are counted on CUDA only (the CPU path launches no kernel)"
        return row
    from torch.profiler import ProfilerActivity, profile

    init = _initial([s["shapes"] for s in _GROUPS], seed)
    fused = _fused_run(init, torch.float32, device, {}, backend, _GROUPS)
    gen = torch.Generator().manual_seed(seed + 1)
    _grads([fused], gen, torch.float32)
    fused.opt.step()  # warm-up: compile and build the plan outside the profile
    steps = 3
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            _grads([fused], gen, torch.float32)
            fused.opt.step()
        torch.cuda.synchronize()
    launches = sum(e.count for e in prof.key_averages() if "adamw_kernel" in e.key)
    row.status = "pass" if launches == steps else "FAIL"
    row.note = f"{launches} adamw_kernel launches in {steps} steps of 3 groups (want {steps})"
    return row


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``"package.module:function"`` -> the function (a model factory taking no arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model expects module:factory (e.g. mypkg.models:tiny), got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ValueError(f"{spec!r}: {attr!r} is not a callable in {module_name!r}")
    return factory


def model_case(
    factory: Callable[[], nn.Module], device: str, backend: str, steps: int, seed: int
) -> list[CheckRow]:
    """The user's model: its own shapes and dtypes, synthetic grads, one row per dtype."""
    torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    params = [p for p in model.parameters() if p.requires_grad]
    dtypes = [p.dtype for p in params]
    init = [[p.detach().to("cpu", copy=True) for p in params]]
    fused_groups = [[t.to(device, copy=True).requires_grad_() for t in init[0]]]
    fused = _Run(
        AdamW([{"params": fused_groups[0]}], lr=1e-3, weight_decay=_WEIGHT_DECAY, backend=backend),
        fused_groups,
        [[None] * len(params)],
    )
    low = (torch.bfloat16, torch.float16)
    ref_groups = [
        [
            t.to(device, torch.float32 if t.dtype in low else t.dtype, copy=True).requires_grad_()
            for t in init[0]
        ]
    ]
    ref = _Run(
        torch.optim.AdamW(ref_groups[0], lr=1e-3, weight_decay=_WEIGHT_DECAY, foreach=False),
        ref_groups,
        [[dt if dt in low else None for dt in dtypes]],
    )
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p, q in zip(fused.params, ref.params, strict=True):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype if p.is_complex() else None)
            p.grad = g.to(device, p.dtype, copy=True)
            q.grad = p.grad.to(q.dtype, copy=True)
        _step(fused)
        _step(ref)
    rows = []
    for dt in sorted(set(dtypes), key=str):
        if dt not in TOLERANCES:
            rows.append(CheckRow("model", str(dt), "skip", note="no tolerance for this dtype"))
            continue
        idx = [i for i, d in enumerate(dtypes) if d == dt]
        sub_f = _Run(fused.opt, [[fused.params[i] for i in idx]], [[None] * len(idx)])
        sub_r = _Run(ref.opt, [[ref.params[i] for i in idx]], [[None] * len(idx)])
        name = _dtype_name(dt)
        row = _compare(CheckRow(f"model ({steps} steps)", name), sub_f, sub_r, dt)
        row.note = (row.note + "; " if row.note else "") + f"{len(idx)} params"
        rows.append(row)
    return rows


def _dtype_name(dt: torch.dtype) -> str:
    return next((k for k, v in DTYPES.items() if v == dt), str(dt).removeprefix("torch."))
