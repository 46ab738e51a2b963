"""Timing primitives: device time, synchronized wall time, host time, launch counts and the
copy bandwidth that every GB/s figure is compared with."""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "count_launches",
    "interleaved_times",
    "device_time",
    "host_times",
    "measure_copy_bandwidth",
    "quantiles",
    "sync",
    "wall_times",
]


def sync(device: torch.device) -> None:
    """Wait for the device's queue (no-op on the CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """Median, p20, p80 (the convention of do_bench's ``quantiles=[0.5, 0.2, 0.8]``)."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return statistics.median(xs), q[1], q[7]


def wall_times(fn: Callable[[], Any], device: torch.device, reps: int) -> list[float]:
    """Per-call wall time in ms with a sync before and after each call."""
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def host_times(fn: Callable[[], Any], device: torch.device, reps: int) -> list[float]:
    """Host time of the call alone in ms: queue drained before, no sync inside the timing."""
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    sync(device)
    return out


def interleaved_times(
    steps: dict[str, Callable[[], Any]],
    device: torch.device,
    rounds: int,
    synchronized: bool = True,
    before: Callable[[str], Any] | None = None,
    on_round: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Per-call times in ms of several step functions, interleaved: each round calls every
    function once, starting from a different one each round, so a slow spell on a shared
    machine hits all of them alike and no one always runs first.

    Args:
        steps: name -> function to time.
        device: Where the functions run (synchronized before each call).
        rounds: Calls per function.
        synchronized: Sync after each call too (wall time); False times the host alone.
        before: Called with the name before each call, outside the timing (e.g. new grads).
        on_round: Called after each round (e.g. a progress bar's update).

    Returns:
        name -> ``rounds`` times in ms, round by round.
    """
    names = list(steps)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if before is not None:
                before(name)
            sync(device)
            t0 = time.perf_counter()
            steps[name]()
            if synchronized:
                sync(device)
            out[name].append((time.perf_counter() - t0) * 1e3)
        if on_round is not None:
            on_round()
    sync(device)
    return out


def device_time(
    fn: Callable[[], Any], device: torch.device, warmup_ms: float, rep_ms: float, reps: int
) -> tuple[float, float, float]:
    """Device time per call in ms: (median, p20, p80).

    CUDA: ``triton.testing.do_bench`` (flushes L2 between calls). CPU: the call is
    synchronous, so its wall time over ``reps`` calls is the device time.
    """
    if device.type == "cuda":
        do_bench = importlib.import_module("triton.testing").do_bench
        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return med, p20, p80
    return quantiles(wall_times(fn, device, reps))


def count_launches(fn: Callable[[], Any], device: torch.device, steps: int) -> float | None:
    """CUDA kernel launches per call, from torch.profiler kernel events (None on CPU)."""
    if device.type != "cuda":
        return None
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    events = prof.events()
    # GPU-side copies of record_function ranges (e.g. "Optimizer.step#AdamW.step") carry
    # the CPU range's name; only needed where events have no activity_type.
    cpu_names = {e.name for e in events if e.device_type == DeviceType.CPU}
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and _is_kernel(e, cpu_names)]
    return len(kernels) / steps


def _is_kernel(evt: Any, cpu_names: set[str]) -> bool:
    """A device event that is a kernel launch (not a memcpy, memset, sync or annotation)."""
    kind = getattr(evt, "activity_type", None)
    if isinstance(kind, str) and kind:
        return kind.lower() == "kernel"  # kineto: "kernel" (some builds "Kernel"), "gpu_memcpy"
    name = evt.name
    return (
        not name.startswith(("Memcpy", "Memset")) and "Sync" not in name and (name not in cpu_names)
    )


def measure_copy_bandwidth(
    device: torch.device,
    nbytes: int,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    reps: int = 20,
) -> dict[str, float]:
    """Device-to-device copy bandwidth in GB/s, counting read + write (2 × nbytes).

    Args:
        device: Where to copy.
        nbytes: Buffer size (1 GiB on GPU by default).
        warmup_ms, rep_ms: do_bench's warm-up and repetition time (CUDA).
        reps: Timed copies on the CPU.

    Returns:
        ``{"bytes", "ms", "p20_ms", "p80_ms", "gbps"}``.
    """
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)
    fn()
    med, p20, p80 = device_time(fn, device, warmup_ms, rep_ms, reps)
    return {
        "bytes": n * 4,
        "ms": med,
        "p20_ms": p20,
        "p80_ms": p80,
        "gbps": 2 * n * 4 / (med * 1e-3) / 1e9,
    }
