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

Two grad regimes for the dense workloads: "grads kept" (the same grad tensors every step, as
with ``zero_grad(set_to_none=False)``) and "grads new" (``set_to_none`` and fresh grad tensors
every step, alternating between two sets so their addresses really change). Two for the MoE
workload, both with new grads as in "grads new": "set steady" (the same half of each layer's
experts gets grads every step) and "set changing" (a random half each step, as experts without
tokens under ``zero_grad(set_to_none=True)``). Every regime of a workload and both
implementations are interleaved in the same rounds, so changing / steady compares like with
like on a loaded machine.
"""

from __future__ import annotations

import contextlib
import os
import random
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
from fused_mup.bench.workloads import (
    MoeWorkload,
    Workload,
    allocate_params,
    many_small_workload,
    moe_workload,
)

__all__ = [
    "GRAD_MODES",
    "HANDOVER_MODES",
    "HOST_IMPLS",
    "SET_MODES",
    "HostCostConfig",
    "changing_vs_steady",
    "check_stubs_reached",
    "format_host_cost",
    "grad_modes",
    "host_steps",
    "host_workloads",
    "routes",
    "run_host_cost",
    "stubbed_launches",
]

GRAD_MODES = ("grads kept", "grads new")
SET_MODES = ("set steady", "set changing")
# Regimes that hand over new grad tensors before each step (set_to_none, then backward).
HANDOVER_MODES = ("grads new", *SET_MODES)
HOST_IMPLS = ("fused_mup", BASELINE_IMPL)


def host_workloads() -> dict[str, Workload]:
    """150 and 1,024 tensors of 4,096 elements in 5 groups (sizes hardly matter here), and an
    MoE of 634 tensors: 8 layers of 24 SwiGLU experts (576 matrices) and 58 shared tensors."""
    ws = [many_small_workload(f"{n}x4096", n, 5, 4096, 4096) for n in (150, 1024)]
    ws.append(moe_workload("moe-634", d=64, n_layers=8, n_experts=24, ffn=128, vocab=1024))
    return {w.name: w for w in ws}


def grad_modes(w: Workload) -> tuple[str, ...]:
    """The grad regimes a workload is timed in: grad sets for an MoE, grad tensors otherwise."""
    return SET_MODES if isinstance(w, MoeWorkload) else GRAD_MODES


def routes(w: MoeWorkload, mode: str, seed: int) -> Iterator[list[bool]]:
    """Which params get a grad, call by call (in :func:`allocate_params` order).

    The first call routes to every expert, so each has its state before anything is timed (a
    warm-up step); then every shared param and half the experts of each layer: the same half
    every call ("set steady") or a random half ("set changing"), seeded, so repeatable.
    """
    experts = w.expert_of()
    rng = random.Random(seed)
    half = w.n_experts // 2
    yield [True] * len(experts)
    while True:
        if mode == "set steady":
            chosen = [set(range(half))] * w.n_layers
        else:
            chosen = [set(rng.sample(range(w.n_experts), half)) for _ in range(w.n_layers)]
        yield [e is None or e[1] in chosen[e[0]] for e in experts]


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
    ``before(impl)`` hook that gives an impl new grad tensors (None for "grads kept"): all of
    them for "grads new", those :func:`routes` picks for the grad-set regimes."""
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
    # Both implementations see the same sequence of grad sets.
    masks = {n: routes(w, mode, seed) for n in HOST_IMPLS} if mode in SET_MODES else None

    def new_grads(name: str) -> None:
        params, sets = pools[name]
        flips[name] ^= 1
        for p in params:
            p.grad = None  # zero_grad(set_to_none=True), then backward's fresh grads
        if masks is None:
            for p, g in zip(params, sets[flips[name]], strict=True):
                p.grad = g
            return
        for p, g, routed in zip(params, sets[flips[name]], next(masks[name]), strict=True):
            if routed:
                p.grad = g

    return steps, (new_grads if mode in HANDOVER_MODES else None)


def check_stubs_reached(counts: dict[str, int]) -> None:
    if counts["launch"] == 0 or counts["torch._fused_adamw_"] == 0:
        raise RuntimeError(
            f"the stubs were not reached ({counts}): fused_mup did not take its kernel path or "
            "torch did not call _fused_adamw_, so this would not time the host path"
        )


def _paired_median(xs: list[float], ys: list[float]) -> float:
    """Median over rounds of x / y in the same round."""
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True))


def _one(
    w: Workload,
    device: torch.device,
    cfg: HostCostConfig,
    counts: dict[str, int],
    bar: Any,
) -> list[dict[str, Any]]:
    """One row per regime of ``w``; all regimes and implementations in the same rounds."""
    steps, befores = {}, {}
    for mode in grad_modes(w):
        by_impl, before = host_steps(w, mode, device, cfg.seed)
        for impl, step in by_impl.items():
            steps[mode, impl] = step
            befores[mode, impl] = before

    def before(key: tuple[str, str]) -> None:
        if (hook := befores[key]) is not None:
            hook(key[1])

    for key, step in steps.items():
        for _ in range(cfg.warmup_steps):
            before(key)
            step()
    check_stubs_reached(counts)
    sync(device)
    times = interleaved_times(
        steps, device, cfg.rounds, synchronized=False, before=before, on_round=bar.update
    )
    us = {key: [1e3 * t for t in ts] for key, ts in times.items()}
    rows = []
    for mode in grad_modes(w):
        row = {
            "workload": w.name,
            "description": w.description,
            "n_tensors": w.n_tensors,
            "n_groups": len(w.groups),
            "grads": mode,
            "us": {
                impl: dict(zip(("median", "p20", "p80"), quantiles(us[mode, impl]), strict=True))
                for impl in HOST_IMPLS
            },
            "ratio_vs_torch_fused": _paired_median(us[mode, "fused_mup"], us[mode, BASELINE_IMPL]),
        }
        if mode == "set changing":
            row["ratio_vs_steady"] = {
                impl: _paired_median(us[mode, impl], us["set steady", impl]) for impl in HOST_IMPLS
            }
        rows.append(row)
    return rows


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
        with (
            stubbed_launches() as counts,
            progress_bar(len(names) * cfg.rounds, "host cost", "round", cfg.progress) as bar,
        ):
            for name in names:
                bar.set_postfix_str(name)
                rows += _one(all_w[name], device, cfg, counts, bar)
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
        "- every regime of a workload and both implementations interleaved in the same rounds",
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
    return "\n".join(lines + changing_vs_steady(results["rows"], "host time")) + "\n"


def changing_vs_steady(rows: list[dict[str, Any]], what: str) -> list[str]:
    """Markdown lines: each implementation's changing / steady grad set, where measured."""
    changing = [r for r in rows if "ratio_vs_steady" in r]
    if not changing:
        return []
    lines = [
        "",
        f"Grad set changing / steady, {what} of the same implementation: set steady = the same "
        "half of each layer's experts gets grads every step, set changing = a random half "
        "(the first warm-up step routes to every expert, so each has its state).",
        "",
        "| workload | fused_mup changing / steady | torch fused changing / steady |",
        "|---|---|---|",
    ]
    for r in changing:
        ours, theirs = (
            f"{r['ratio_vs_steady'][i]:.2f}" if i in r["ratio_vs_steady"] else "not measured"
            for i in HOST_IMPLS
        )
        lines.append(f"| {r['workload']} | **{ours}** | {theirs} |")
    return lines
