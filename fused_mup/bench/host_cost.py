"""Host cost of one ``step()``: what the Python side costs when the kernel itself is free.

``fused_mup.AdamW`` steps with its kernel launches replaced by counting no-ops, so the
timing holds everything the optimizer does on the host for the kernel path: gathering
grads, checking the plan, rewriting tables when grads moved, group scalars, the launch
call's argument handling up to the stub. ``torch.optim.AdamW(fused=True)`` steps with
``torch._fused_adamw_`` stubbed the same way: its grouping by device and dtype, the step
counter ``_foreach_add_`` and its Python around them.

Without a GPU the params are CPU tensors and fused_mup is asked for ``backend="triton"``
with ``TRITON_INTERPRET=1`` set for the run, so it plans the kernel path; the stub means the
interpreter never runs. What differs from CUDA: table uploads are CPU copies instead of
pinned host-to-device copies, and torch's step counter add runs on the CPU.

Two grad regimes: "grads kept" (the same grad tensors every step, as with
``zero_grad(set_to_none=False)``) and "grads new" (``set_to_none`` and fresh grad tensors
every step, alternating between two sets so their addresses really change).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fused_mup import launcher
from fused_mup.bench.environment import device_slug, environment_info
from fused_mup.bench.impls import BASELINE_IMPL, BuildContext, default_impls
from fused_mup.bench.progress import progress_bar
from fused_mup.bench.results import write_json_and_markdown
from fused_mup.bench.timing import interleaved_times, quantiles, sync
from fused_mup.bench.workloads import Workload, allocate_params, many_small_workload

__all__ = [
    "GRAD_MODES",
    "HOST_IMPLS",
    "HostCostConfig",
    "check_stubs_reached",
    "format_host_cost",
    "host_steps",
    "host_workloads",
    "run_host_cost",
    "stubbed_launches",
]

GRAD_MODES = ("grads kept", "grads new")
HOST_IMPLS = ("fused_mup", BASELINE_IMPL)


def host_workloads() -> dict[str, Workload]:
    """150 and 1,024 tensors of 4,096 elements in 5 groups (sizes hardly matter here)."""
    ws = [many_small_workload(f"{n}x4096", n, 5, 4096, 4096) for n in (150, 1024)]
    return {w.name: w for w in ws}


@contextlib.contextmanager
def stubbed_launches() -> Iterator[dict[str, int]]:
    """Replace every ``launch*`` function of :mod:`fused_mup.launcher` (and any module of
    fused_mup that imported one by name) and ``torch._fused_adamw_`` with counting no-ops;
    set ``TRITON_INTERPRET=1`` so CPU tensors take the kernel path. Yields the counts."""
    counts: dict[str, int] = {}
    originals = {
        n: getattr(launcher, n)
        for n in dir(launcher)
        if n.startswith("launch") and callable(getattr(launcher, n))
    }
    patched: list[tuple[Any, str, Any]] = []

    def stub_for(name: str):
        def stub(*args: Any, **kwargs: Any) -> None:
            counts[name] += 1

        return stub

    for name, fn in originals.items():
        counts[name] = 0
        stub = stub_for(name)
        for mod in [m for k, m in sys.modules.items() if k.startswith("fused_mup") and m]:
            if getattr(mod, name, None) is fn:
                patched.append((mod, name, fn))
                setattr(mod, name, stub)
    counts["torch._fused_adamw_"] = 0
    patched.append((torch, "_fused_adamw_", torch._fused_adamw_))
    torch._fused_adamw_ = stub_for("torch._fused_adamw_")
    env = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield counts
    finally:
        for mod, name, fn in patched:
            setattr(mod, name, fn)
        if env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = env


@dataclass
class HostCostConfig:
    """What ``fused-mup bench --host-cost`` runs."""

    device: str = "cpu"
    workloads: Sequence[str] | None = None  # None: all of host_workloads()
    rounds: int = 300
    warmup_steps: int = 5
    threads: int | None = 1
    progress: bool = True
    seed: int = 0
    out: Path | None = None


def host_steps(
    w: Workload, mode: str, device: torch.device, seed: int
) -> tuple[dict[str, Any], Any]:
    """``{impl: step()}`` for fused_mup (the kernel path) and torch fused on ``w``, and the
    ``before(impl)`` hook that gives an impl new grad tensors (None for "grads kept")."""
    registry = {i.name: i for i in default_impls()}
    backend = "triton" if device.type == "cpu" else "auto"  # the kernel path, stubbed
    steps, pools = {}, {}
    for name in HOST_IMPLS:
        groups = allocate_params(w, device, seed)
        params = [p for g in groups for p in g["params"]]
        plain = [{k: v for k, v in g.items() if k != "name"} for g in groups]
        _, steps[name] = registry[name].build(BuildContext(w, plain, device, backend=backend))
        # Two grad sets to alternate between: "grads new" gets new addresses every step.
        pools[name] = (params, [[p.grad for p in params], [p.grad.clone() for p in params]])
    flips = dict.fromkeys(HOST_IMPLS, 0)

    def new_grads(name: str) -> None:
        params, sets = pools[name]
        flips[name] ^= 1
        for p in params:
            p.grad = None  # zero_grad(set_to_none=True), then backward's fresh grads
        for p, g in zip(params, sets[flips[name]], strict=True):
            p.grad = g

    return steps, (new_grads if mode == "grads new" else None)


def check_stubs_reached(counts: dict[str, int]) -> None:
    if counts["launch"] == 0 or counts["torch._fused_adamw_"] == 0:
        raise RuntimeError(
            f"the stubs were not reached ({counts}): fused_mup did not take its kernel path or "
            "torch did not call _fused_adamw_, so this would not time the host path"
        )


def _one(
    w: Workload,
    mode: str,
    device: torch.device,
    cfg: HostCostConfig,
    counts: dict[str, int],
    bar: Any,
) -> dict[str, Any]:
    steps, before = host_steps(w, mode, device, cfg.seed)
    for name, step in steps.items():
        for _ in range(cfg.warmup_steps):
            if before is not None:
                before(name)
            step()
    check_stubs_reached(counts)
    sync(device)
    times = interleaved_times(
        steps,
        device,
        cfg.rounds,
        synchronized=False,
        before=before,
        on_round=bar.update,
    )
    us = {n: [1e3 * t for t in ts] for n, ts in times.items()}
    paired = [a / b for a, b in zip(us["fused_mup"], us[BASELINE_IMPL], strict=True)]
    return {
        "workload": w.name,
        "description": w.description,
        "n_tensors": w.n_tensors,
        "n_groups": len(w.groups),
        "grads": mode,
        "us": {
            n: dict(zip(("median", "p20", "p80"), quantiles(ts), strict=True))
            for n, ts in us.items()
        },
        "ratio_vs_torch_fused": statistics.median(paired),
    }


def run_host_cost(cfg: HostCostConfig) -> dict[str, Any]:
    """Host time per ``step()`` with the launches stubbed, ours against torch fused's, for
    each workload and grad regime; writes ``results.json`` / ``results.md`` to ``cfg.out``.
    """
    device = torch.device(cfg.device)
    all_w = host_workloads()
    names = list(cfg.workloads or all_w)
    if unknown := [n for n in names if n not in all_w]:
        raise ValueError(f"unknown workload(s) {unknown}; known: {list(all_w)}")
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        meta = environment_info(device)
        meta.update(rounds=cfg.rounds, warmup_steps=cfg.warmup_steps, baseline=BASELINE_IMPL)
        rows = []
        total = len(names) * len(GRAD_MODES) * cfg.rounds
        with (
            stubbed_launches() as counts,
            progress_bar(total, "host cost", "round", cfg.progress) as bar,
        ):
            for name in names:
                for mode in GRAD_MODES:
                    bar.set_postfix_str(f"{name} {mode}")
                    rows.append(_one(all_w[name], mode, device, cfg, counts, bar))
        meta["load_average_after"] = environment_info(device)["load_average"]
    finally:
        torch.set_num_threads(threads)
    results = {"meta": meta, "rows": rows}
    write_json_and_markdown(results, cfg.out, format_host_cost)
    return results


def default_host_cost_dir(device: torch.device) -> Path:
    """``bench/results/<device>-host-cost/``: re-runs replace it; git keeps the history."""
    return Path("bench") / "results" / f"{device_slug({'device': str(device)})}-host-cost"


def format_host_cost(results: dict[str, Any]) -> str:
    """Markdown: environment and one row per workload and grad regime."""
    meta = results["meta"]
    lines = [
        f"# Host time per step(), launches stubbed: {meta['device_name']}, {meta['date']}",
        "",
        f"- device `{meta['device']}` ({meta['device_name']}), {meta['cpu_count']} CPUs, "
        f"torch threads during the run: {meta['torch_threads']}",
        f"- torch `{meta['torch']}`, triton `{meta['triton']}`, fused_mup "
        f"`{meta['fused_mup']}`, commit `{meta['git_commit']}`, {meta['time_utc']}",
        f"- load average before {meta['load_average']}, after {meta.get('load_average_after')}",
        f"- {meta['rounds']} interleaved rounds after {meta['warmup_steps']} warm-up steps; "
        "fused_mup's launches and `torch._fused_adamw_` replaced by no-ops",
        "- ratio: median over rounds of fused_mup / torch fused host time in the same round "
        "(below 1: less host time than torch)",
        "",
        "| workload | groups | grads | fused_mup µs (p20–p80) | torch fused µs (p20–p80) "
        "| fused_mup / torch fused |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        cell = lambda n, r=r: (
            f"{r['us'][n]['median']:.0f} ({r['us'][n]['p20']:.0f}–{r['us'][n]['p80']:.0f})"
        )
        lines.append(
            f"| {r['workload']} | {r['n_groups']} | {r['grads']} | "
            f"{cell('fused_mup')} | {cell(BASELINE_IMPL)} | "
            f"**{r['ratio_vs_torch_fused']:.2f}** |"
        )
    return "\n".join(lines) + "\n"
