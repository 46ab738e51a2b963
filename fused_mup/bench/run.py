"""The bench run: every workload × implementation on the same params, into result rows."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fused_mup.bench.environment import environment_info, free_memory_bytes
from fused_mup.bench.impls import (
    BASELINE_IMPL,
    BuildContext,
    Impl,
    default_impls,
    fused_mup_backend,
)
from fused_mup.bench.progress import progress_bar
from fused_mup.bench.results import write_outputs
from fused_mup.bench.targets import evaluate_targets
from fused_mup.bench.timing import (
    count_launches,
    device_time,
    host_times,
    measure_copy_bandwidth,
    quantiles,
    sync,
    wall_times,
)
from fused_mup.bench.workloads import (
    Workload,
    allocate_params,
    bytes_per_param,
    dtype_name,
    workloads,
)

__all__ = ["BenchConfig", "Row", "estimate_seconds", "run"]


@dataclass
class BenchConfig:
    """Run settings; ``fused-mup bench`` builds one from the command line."""

    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    smoke: bool = False
    workloads: Sequence[str] | None = None  # None: all
    impls: Sequence[str] | None = None  # None: all
    skip: Sequence[str] = ()
    out: Path | None = None
    amsgrad: bool = False
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    wall_reps: int = 20
    warmup_steps: int = 3
    profile_steps: int = 3
    copy_bytes: int = 1 << 30
    budget_s: float | None = None
    compile_max_tensors: int | None = None  # compile time grows with the tensor count
    plot: bool = True
    progress: bool = True
    seed: int = 0


@dataclass
class Row:
    """One workload × implementation result (times in ms, bandwidth in GB/s)."""

    workload: str
    impl: str
    status: str  # "ok", or why it did not run
    numel: int = 0
    n_tensors: int = 0
    n_groups: int = 0
    mode: str = ""
    state_dtype: str = ""
    bytes_per_param: float | None = None
    device_ms: float | None = None
    device_p20_ms: float | None = None
    device_p80_ms: float | None = None
    e2e_ms: float | None = None
    e2e_p20_ms: float | None = None
    e2e_p80_ms: float | None = None
    host_ms: float | None = None
    launches: float | None = None
    gbps: float | None = None
    frac_copy: float | None = None
    speedup_device: float | None = None
    speedup_e2e: float | None = None
    note: str = ""


# A CPU core moves roughly this many bytes per second through an AdamW step; only used to
# warn before a run that would take hours (the measured figure is usually higher).
_CPU_STEP_BYTES_PER_S = 2e9


def estimate_seconds(cfg: BenchConfig) -> float:
    """Rough lower bound on a CPU run's length: bytes moved by every timed and warm-up step of
    every implementation at ~2 GB/s. Meant for the "this will take hours" warning only."""
    all_w = workloads(cfg.smoke)
    names = list(cfg.workloads) if cfg.workloads else list(all_w)
    impls = [i for i in default_impls() if (not cfg.impls or i.name in cfg.impls)]
    steps = cfg.warmup_steps + cfg.wall_reps + cfg.profile_steps
    total = 0.0
    for name in names:
        w = all_w[name]
        n_impls = sum(1 for i in impls if i.applies(w) and i.name not in cfg.skip)
        total += n_impls * steps * w.numel * bytes_per_param(w.param_dtype, w.state_dtype)
    return total / _CPU_STEP_BYTES_PER_S


def _traffic_bytes(opt: Any, params: list[torch.Tensor], w: Workload, amsgrad: bool) -> int:
    """Minimum bytes per step given the state the optimizer actually keeps.

    ``2·P + G`` per param plus read + write of every param-sized state tensor found in
    ``opt.state``; falls back to ``bytes_per_param`` with the workload's state dtype when
    an optimizer keeps its state elsewhere.
    """
    state = getattr(opt, "state", {})
    total = 0
    for p in params:
        base = 2 * p.numel() * p.element_size() + p.grad.numel() * p.grad.element_size()
        st = state.get(p) if hasattr(state, "get") else None
        s_bytes = 0
        if st:
            s_bytes = sum(
                t.numel() * t.element_size()
                for t in st.values()
                if torch.is_tensor(t) and t.numel() == p.numel() and t.numel() > 1
            )
        if s_bytes == 0:
            total += p.numel() * bytes_per_param(w.param_dtype, w.state_dtype, amsgrad)
        else:
            total += base + 2 * s_bytes
    return total


def _state_dtype_name(opt: Any, params: list[torch.Tensor], w: Workload) -> str:
    state = getattr(opt, "state", {})
    st = state.get(params[0]) if params and hasattr(state, "get") else None
    for key in ("exp_avg", "exp_avg_sq"):
        if st and torch.is_tensor(st.get(key)):
            return dtype_name(st[key].dtype)
    return dtype_name(w.state_dtype or w.param_dtype) + "?"


def _free_cuda(device: torch.device) -> None:
    if device.type == "cuda":  # gc.collect costs ~0.2 s with torch loaded; GPU only
        gc.collect()
        torch.cuda.empty_cache()


def _bench_one(
    impl: Impl, w: Workload, groups: list[dict], device: torch.device, cfg: BenchConfig
) -> Row:
    params = [p for g in groups for p in g["params"]]
    row = Row(w.name, impl.name, "ok", w.numel, w.n_tensors, len(w.groups), w.mode)
    plain = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    ctx = BuildContext(w, plain, device, cfg.amsgrad)
    opt = step = None
    try:
        opt, step = impl.build(ctx)
        # Warm-up: creates state, compiles (torch.compile / Triton JIT).
        for _ in range(cfg.warmup_steps):
            step()
        sync(device)
        row.state_dtype = _state_dtype_name(opt, params, w)
        traffic = _traffic_bytes(opt, params, w, cfg.amsgrad)
        row.bytes_per_param = traffic / w.numel + impl.extra_bytes(w)
        if device.type == "cuda":
            timed = device_time(step, device, cfg.warmup_ms, cfg.rep_ms, cfg.wall_reps)
            row.device_ms, row.device_p20_ms, row.device_p80_ms = timed
            e2e = quantiles(wall_times(step, device, cfg.wall_reps))
            row.e2e_ms, row.e2e_p20_ms, row.e2e_p80_ms = e2e
            row.host_ms = quantiles(host_times(step, device, cfg.wall_reps))[0]
        else:
            # A CPU step is synchronous: device, end-to-end and host time are one and the
            # same measurement (and under TRITON_INTERPRET=1 each step costs ~0.3 s).
            q = quantiles(wall_times(step, device, cfg.wall_reps))
            row.device_ms, row.device_p20_ms, row.device_p80_ms = q
            row.e2e_ms, row.e2e_p20_ms, row.e2e_p80_ms = q
            row.host_ms = q[0]
        row.launches = count_launches(step, device, cfg.profile_steps)
        row.gbps = row.bytes_per_param * w.numel / (row.device_ms * 1e-3) / 1e9
        if any(not torch.isfinite(p).all() for p in params[:4]):
            row.note = "non-finite params after stepping"
    except torch.OutOfMemoryError:
        row.status = "OOM"
    except Exception as e:  # noqa: BLE001 - one broken implementation must not stop the run
        first = str(e).splitlines()[0][:120] if str(e) else ""
        row.status = f"error: {type(e).__name__}: {first}"
    finally:
        del opt, step  # the bound step method holds the optimizer (and its states) too
        if impl.cleanup is not None:
            impl.cleanup()
        _free_cuda(device)
    return row


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the bench and return the results dict (what ``results.json`` holds).

    Args:
        cfg: What to run and where to write it (``cfg.out``; nothing written if ``None``).

    Returns:
        ``{"meta", "copy", "rows", "targets", "skipped_workloads"}``.

    Raises:
        ValueError: on an unknown workload or implementation, or CUDA asked for and absent.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA requested but not available; use --smoke or --device cpu")
    all_w = workloads(cfg.smoke)
    names = list(cfg.workloads) if cfg.workloads else list(all_w)
    if unknown := [n for n in names if n not in all_w]:
        raise ValueError(f"unknown workload(s) {unknown}; known: {list(all_w)}")
    known = [i.name for i in default_impls()]
    if unknown := [n for n in (*(cfg.impls or ()), *cfg.skip) if n not in known]:
        raise ValueError(f"unknown implementation(s) {unknown}; known: {known}")
    impls = [i for i in default_impls() if (not cfg.impls or i.name in cfg.impls)]

    meta = environment_info(device)
    meta.update(
        smoke=cfg.smoke,
        amsgrad=cfg.amsgrad,
        fused_mup_backend=fused_mup_backend(device),
        skipped_impls=sorted(set(cfg.skip)),
    )
    results: dict[str, Any] = {"meta": meta, "rows": [], "skipped_workloads": {}}
    # Smoke on CPU: one intra-op thread. The tensors are tiny, and on a shared CI box
    # two OpenMP threads fighting other jobs turned 0.2 ms steps into 100+ ms ones.
    threads = torch.get_num_threads()
    if cfg.smoke and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        _run_workloads(cfg, device, results, [all_w[n] for n in names], impls)
    finally:
        torch.set_num_threads(threads)
    results["targets"] = evaluate_targets(results)
    if cfg.out is not None:
        write_outputs(results, Path(cfg.out), plot=cfg.plot)
    return results


def _skip_reason(
    impl: Impl, w: Workload, cfg: BenchConfig, device: torch.device, elapsed_s: float
) -> str | None:
    if impl.name in cfg.skip:
        if cfg.smoke and impl.name == "torch_compile":
            return "skipped in smoke mode (compiling is slow on the CPU)"
        return "skipped (--skip)"
    if reason := impl.check(device):
        return reason
    if cfg.budget_s and elapsed_s > cfg.budget_s:
        return f"skipped: time budget {cfg.budget_s:.0f}s spent"
    max_t = cfg.compile_max_tensors
    if impl.name == "torch_compile" and max_t is not None and w.n_tensors > max_t:
        return f"skipped: {w.n_tensors} tensors > --compile-max-tensors {max_t}"
    return None


def _run_workloads(
    cfg: BenchConfig,
    device: torch.device,
    results: dict[str, Any],
    ws: list[Workload],
    impls: list[Impl],
) -> None:
    results["copy"] = measure_copy_bandwidth(
        device, cfg.copy_bytes, cfg.warmup_ms, cfg.rep_ms, cfg.wall_reps
    )
    copy_gbps = results["copy"]["gbps"]
    t_start = time.perf_counter()

    total = sum(1 for w in ws for i in impls if i.applies(w))
    with progress_bar(total, "bench", "run", cfg.progress) as bar:
        for w in ws:
            w_impls = [i for i in impls if i.applies(w)]
            blank = lambda status, w=w: Row(
                w.name, status[0], status[1], w.numel, w.n_tensors, len(w.groups), w.mode
            )
            need, free = w.estimate_bytes(cfg.amsgrad), free_memory_bytes(device)
            if free is not None and need > 0.9 * free:
                results["skipped_workloads"][w.name] = (
                    f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
                )
                results["rows"] += [
                    asdict(blank((i.name, "skipped: does not fit"))) for i in w_impls
                ]
                bar.update(len(w_impls))
                continue
            try:
                groups = allocate_params(w, device, cfg.seed)
            except torch.OutOfMemoryError:
                results["skipped_workloads"][w.name] = "OOM while allocating params and grads"
                _free_cuda(device)
                continue
            rows: list[Row] = []
            for impl in w_impls:
                reason = _skip_reason(impl, w, cfg, device, time.perf_counter() - t_start)
                if reason is not None:
                    row = blank((impl.name, reason))
                else:
                    bar.set_postfix_str(f"{w.name} {impl.name}")
                    row = _bench_one(impl, w, groups, device, cfg)
                rows.append(row)
                bar.update()
            _fill_relative(rows, copy_gbps)
            results["rows"].extend(asdict(r) for r in rows)
            del groups
            _free_cuda(device)
            if cfg.out is not None:  # partial results survive a killed run
                results["targets"] = evaluate_targets(results)
                write_outputs(results, Path(cfg.out), plot=False)


def _fill_relative(rows: list[Row], copy_gbps: float) -> None:
    base = next((r for r in rows if r.impl == BASELINE_IMPL and r.status == "ok"), None)
    for r in rows:
        if r.status != "ok":
            continue
        r.frac_copy = r.gbps / copy_gbps if r.gbps and copy_gbps else None
        if base is not None:
            r.speedup_device = base.device_ms / r.device_ms
            r.speedup_e2e = base.e2e_ms / r.e2e_ms
