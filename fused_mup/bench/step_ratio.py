"""Step ratio: ``fused_mup.AdamW`` against ``torch.optim.AdamW(fused=True)`` in one run.

Each implementation steps its own copy of the same params (same values, same fixed grads,
same μP groups); the steps are interleaved round by round, so load on a shared machine hits
all of them alike. On the CPU the run is single-threaded (``torch.set_num_threads(1)``), as
a training loop on a small CPU box would be with other work beside it. The figure is the
median over rounds of ``time(impl) / time(torch fused)`` from the same round: below 1 is
faster than torch fused.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fused_mup.bench.environment import device_slug, environment_info
from fused_mup.bench.impls import BASELINE_IMPL, BuildContext, default_impls
from fused_mup.bench.progress import progress_bar
from fused_mup.bench.results import write_json_and_markdown
from fused_mup.bench.timing import interleaved_times, quantiles, sync
from fused_mup.bench.workloads import (
    Workload,
    allocate_params,
    gpt2_workload,
    many_small_workload,
    workloads,
)

__all__ = [
    "RATIO_IMPLS",
    "StepRatioConfig",
    "format_step_ratio",
    "ratio_workloads",
    "run_step_ratio",
]

RATIO_IMPLS = ("fused_mup", BASELINE_IMPL, "torch_foreach")
CPU_WORKLOADS = ("gpt-6x256", "1024x4096")
CUDA_WORKLOADS = ("gpt-6x256", "1024x4096", "gpt2-124m", "many-small")


def ratio_workloads() -> dict[str, Workload]:
    """The step-ratio workloads, plus every full bench workload by its name."""
    own = [
        # The transfer audit's scale: a 6-layer, 256-wide GPT-2-shaped list, 76 tensors.
        gpt2_workload("gpt-6x256", 256, 6, vocab=256, ctx=64),
        # Many mid-sized tensors in 5 groups: per-tensor overhead against bandwidth.
        many_small_workload("1024x4096", 1024, 5, 4096, 4096),
    ]
    return {w.name: w for w in own} | workloads(smoke=False)


@dataclass
class StepRatioConfig:
    """What ``fused-mup bench --step-ratio`` runs."""

    device: str = "cpu"
    workloads: Sequence[str] | None = None  # None: CPU_WORKLOADS or CUDA_WORKLOADS
    rounds: int = 50
    warmup_steps: int = 3
    threads: int | None = 1  # CPU intra-op threads during the run; None: leave as is
    progress: bool = True
    seed: int = 0
    out: Path | None = None


def _one_workload(
    w: Workload, device: torch.device, cfg: StepRatioConfig, bar: Any
) -> dict[str, Any]:
    registry = {i.name: i for i in default_impls()}
    steps, params = {}, {}
    for name in RATIO_IMPLS:
        groups = allocate_params(w, device, cfg.seed)  # identical copy per implementation
        plain = [{k: v for k, v in g.items() if k != "name"} for g in groups]
        # backend "auto": the optimizer's own CPU path, never the Triton interpreter.
        _, steps[name] = registry[name].build(BuildContext(w, plain, device, backend="auto"))
        params[name] = [p for g in groups for p in g["params"]]
    for step in steps.values():
        for _ in range(cfg.warmup_steps):
            step()
    sync(device)
    times = interleaved_times(steps, device, cfg.rounds, on_round=bar.update)
    base = times[BASELINE_IMPL]
    ms, ratio, spread = {}, {}, {}
    for name, ts in times.items():
        med, p20, p80 = quantiles(ts)
        ms[name] = {"median": med, "p20": p20, "p80": p80}
        paired = [a / b for a, b in zip(ts, base, strict=True)]
        ratio[name] = statistics.median(paired)
        spread[name] = quantiles(paired)[1:]  # p20, p80 of the per-round ratios
    # Same math: every copy must end where torch fused ended.
    worst = max(
        (a - b).abs().max().item()
        for name in RATIO_IMPLS
        for a, b in zip(params[name], params[BASELINE_IMPL], strict=True)
    )
    return {
        "workload": w.name,
        "description": w.description,
        "n_tensors": w.n_tensors,
        "numel": w.numel,
        "n_groups": len(w.groups),
        "mode": w.mode,
        "ms": ms,
        "ratio_vs_torch_fused": ratio,
        "ratio_p20_p80": spread,
        "max_abs_param_diff": worst,
    }


def run_step_ratio(cfg: StepRatioConfig) -> dict[str, Any]:
    """Measure the step ratio on each workload; write ``results.json`` / ``results.md`` to
    ``cfg.out`` when set.

    Returns:
        ``{"meta", "rows"}``; each row has per-implementation medians (ms) and the median
        paired ratio to torch fused.
    """
    device = torch.device(cfg.device)
    names = list(cfg.workloads or (CUDA_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS))
    all_w = ratio_workloads()
    if unknown := [n for n in names if n not in all_w]:
        raise ValueError(f"unknown workload(s) {unknown}; known: {list(all_w)}")
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        meta = environment_info(device)
        meta.update(
            rounds=cfg.rounds,
            warmup_steps=cfg.warmup_steps,
            impls=list(RATIO_IMPLS),
            baseline=BASELINE_IMPL,
        )
        rows = []
        total = len(names) * cfg.rounds
        with progress_bar(total, "step ratio", "round", cfg.progress) as bar:
            for name in names:
                bar.set_postfix_str(name)
                rows.append(_one_workload(all_w[name], device, cfg, bar))
        meta["load_average_after"] = environment_info(device)["load_average"]
    finally:
        torch.set_num_threads(threads)
    results = {"meta": meta, "rows": rows}
    write_json_and_markdown(results, cfg.out, format_step_ratio)
    return results


def default_step_ratio_dir(device: torch.device) -> Path:
    """``bench/results/<device>-step-ratio/``: re-runs replace it; git keeps the history."""
    return Path("bench") / "results" / f"{device_slug({'device': str(device)})}-step-ratio"


def _ratio_cell(row: dict[str, Any], impl: str) -> str:
    value = f"{row['ratio_vs_torch_fused'][impl]:.2f}"
    if impl == "fused_mup":
        value = f"**{value}**"
    p20, p80 = row["ratio_p20_p80"][impl]
    return f"{value} ({p20:.2f}–{p80:.2f})"


def format_step_ratio(results: dict[str, Any]) -> str:
    """Markdown: environment, then one row per workload with times and ratios."""
    meta = results["meta"]
    impls = meta["impls"]
    lines = [
        f"# Step ratio against torch fused: {meta['device_name']}, {meta['date']}",
        "",
        f"- device `{meta['device']}` ({meta['device_name']}), {meta['cpu_count']} CPUs, "
        f"torch threads during the run: {meta['torch_threads']}",
        f"- torch `{meta['torch']}`, triton `{meta['triton']}`, fused_mup "
        f"`{meta['fused_mup']}`, commit `{meta['git_commit']}`, {meta['time_utc']}",
        f"- load average before {meta['load_average']}, after {meta.get('load_average_after')}",
        f"- {meta['rounds']} interleaved rounds after {meta['warmup_steps']} warm-up steps; "
        "each implementation steps its own copy of the same params and grads",
        "- ratio: median over rounds of time(impl) / time(torch fused) in the same round "
        "(p20–p80 of the per-round ratios in brackets); below 1 is faster than torch fused",
        "",
        "| workload | tensors | params | groups | "
        + " | ".join(f"{i} ms" for i in impls)
        + " | "
        + " | ".join(f"{i} / torch fused" for i in impls if i != meta["baseline"])
        + " |",
        "|" + "---|" * (4 + len(impls) + len(impls) - 1),
    ]
    for r in results["rows"]:
        ms = " | ".join(f"{r['ms'][i]['median']:.2f}" for i in impls)
        ratio = " | ".join(_ratio_cell(r, i) for i in impls if i != meta["baseline"])
        lines.append(
            f"| {r['workload']} | {r['n_tensors']} | {r['numel']:,} | "
            f"{r['n_groups']} | {ms} | {ratio} |"
        )
    lines += ["", "Workloads:", ""]
    lines += [f"- `{r['workload']}`: {r['description']}, {r['mode']}" for r in results["rows"]]
    lines += [
        "",
        "Largest difference between a copy's final params and torch fused's: "
        + ", ".join(f"{r['workload']} {r['max_abs_param_diff']:.1e}" for r in results["rows"]),
    ]
    return "\n".join(lines) + "\n"
