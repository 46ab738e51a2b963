"""Host instructions per ``step()``, counted by callgrind: the repeatable counterpart of
--host-cost.

On a shared machine host timings move with the load; instruction counts do not. Each
(workload, grad regime, implementation) runs in a child process under ``valgrind
--tool=callgrind`` twice, with the same warm-up and then 0 or ``steps`` counted steps; the
difference divided by ``steps`` is one ``step()``, with import and setup cancelled out. The
launches are stubbed as in :mod:`fused_mup.bench.host_cost` (fused_mup plans its kernel path,
``torch._fused_adamw_`` does nothing), so the count is the host path alone.

The child: ``python -m fused_mup.bench.host_instructions IMPL WORKLOAD MODE STEPS WARMUP``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fused_mup.bench.environment import environment_info
from fused_mup.bench.host_cost import (
    HANDOVER_MODES,
    HOST_IMPLS,
    changing_vs_steady,
    grad_modes,
    host_steps,
    host_workloads,
    stubbed_launches,
)
from fused_mup.bench.impls import BASELINE_IMPL
from fused_mup.bench.progress import progress_bar
from fused_mup.bench.results import write_json_and_markdown

__all__ = [
    "HostInstructionsConfig",
    "count_instructions",
    "default_host_instructions_dir",
    "format_host_instructions",
    "run_host_instructions",
]

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


@dataclass
class HostInstructionsConfig:
    """What ``fused-mup bench --host-instructions`` runs (CPU only: callgrind runs no GPU)."""

    workloads: list[str] | None = None  # None: all of host_workloads()
    steps: int = 100
    warmup_steps: int = 5
    # Implementations to count; fused_mup alone halves the children (each costs minutes of
    # CPU under callgrind, mostly importing torch), e.g. for changing / steady grad sets.
    impls: tuple[str, ...] = HOST_IMPLS
    jobs: int = 2  # children at a time
    progress: bool = True
    out: Path | None = None


# The child that only hands over new grads (fused_mup's set; torch's is the same size): what
# "grads new" and the grad-set regimes cost outside step(), subtracted from both counts.
GRADS_ONLY = "grads-only"


def _child(impl: str, workload: str, mode: str, steps: int, warmup: int) -> None:
    torch.set_num_threads(1)
    w = host_workloads()[workload]
    with stubbed_launches() as counts:
        steps_by_impl, before = host_steps(w, mode, torch.device("cpu"), seed=0)
        if impl == GRADS_ONLY:
            for _ in range(warmup + steps):
                before("fused_mup")
            return
        step = steps_by_impl[impl]
        for _ in range(warmup + steps):
            if before is not None:
                before(impl)
            step()
    stub = "launch" if impl == "fused_mup" else "torch._fused_adamw_"
    if counts[stub] == 0:
        raise RuntimeError(
            f"{impl} never reached its stub {stub!r}: this would not count its host path"
        )


def count_instructions(impl: str, workload: str, mode: str, steps: int, warmup: int) -> int:
    """Instructions callgrind collects for a child that runs ``warmup + steps`` steps."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "fused_mup.bench.host_instructions",
        impl,
        workload,
        mode,
        str(steps),
        str(warmup),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    match = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind child failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return int(match.group(1))


def run_host_instructions(cfg: HostInstructionsConfig) -> dict[str, Any]:
    """Instructions per ``step()`` for fused_mup and torch fused, each workload and regime."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("--host-instructions needs valgrind (apt install valgrind)")
    all_w = host_workloads()
    names = list(cfg.workloads or all_w)
    if unknown := [n for n in names if n not in all_w]:
        raise ValueError(f"unknown workload(s) {unknown}; known: {list(all_w)}")
    meta = environment_info(torch.device("cpu"))
    if unknown := [i for i in cfg.impls if i not in HOST_IMPLS]:
        raise ValueError(f"unknown implementation(s) {unknown}; known: {list(HOST_IMPLS)}")
    impls = tuple(cfg.impls)
    meta.update(steps=cfg.steps, warmup_steps=cfg.warmup_steps, baseline=BASELINE_IMPL)
    runs = [
        (name, mode, impl, steps)
        for name in names
        for mode in grad_modes(all_w[name])
        for impl in ((*impls, GRADS_ONLY) if mode in HANDOVER_MODES else impls)
        for steps in (0, cfg.steps)
    ]
    # Each child is one process with one thread; instruction counts do not depend on how many
    # run side by side, so they run cfg.jobs at a time.
    with (
        progress_bar(len(runs), "callgrind", "run", cfg.progress) as bar,
        ThreadPoolExecutor(cfg.jobs) as pool,
    ):
        futures = {
            run: pool.submit(count_instructions, run[2], run[0], run[1], run[3], cfg.warmup_steps)
            for run in runs
        }
        for future in as_completed(futures.values()):
            future.result()
            bar.update(1)
    collected = {run: future.result() for run, future in futures.items()}
    rows = []
    for name in names:
        for mode in grad_modes(all_w[name]):

            def per(impl: str, name=name, mode=mode) -> float:
                return (
                    collected[name, mode, impl, cfg.steps] - collected[name, mode, impl, 0]
                ) / cfg.steps

            outside = per(GRADS_ONLY) if mode in HANDOVER_MODES else 0.0
            per_step = {impl: per(impl) - outside for impl in impls}
            rows.append(
                {
                    "workload": name,
                    "n_tensors": all_w[name].n_tensors,
                    "n_groups": len(all_w[name].groups),
                    "grads": mode,
                    "instructions_per_step": per_step,
                }
            )
            if set(HOST_IMPLS) <= set(impls):
                ratio = per_step["fused_mup"] / per_step[BASELINE_IMPL]
                rows[-1]["ratio_vs_torch_fused"] = ratio
            if mode == "set changing":
                steady = rows[-2]["instructions_per_step"]
                rows[-1]["ratio_vs_steady"] = {i: per_step[i] / steady[i] for i in impls}
    # Every child's raw count too: another commit's children can be compared or reused.
    raw = [
        {"workload": n, "grads": m, "impl": i, "steps": k, "instructions": c}
        for (n, m, i, k), c in collected.items()
    ]
    results = {"meta": meta, "rows": rows, "collected": raw}
    write_json_and_markdown(results, cfg.out, format_host_instructions)
    return results


def default_host_instructions_dir() -> Path:
    """``bench/results/cpu-host-instructions/``: re-runs replace it; git keeps the history."""
    return Path("bench") / "results" / "cpu-host-instructions"


def format_host_instructions(results: dict[str, Any]) -> str:
    """Markdown: environment and one row per workload and grad regime."""
    meta = results["meta"]
    lines = [
        f"# Host instructions per step(), launches stubbed (callgrind): {meta['date']}",
        "",
        f"- torch `{meta['torch']}`, triton `{meta['triton']}`, fused_mup `{meta['fused_mup']}`, "
        f"commit `{meta['git_commit']}`, {meta['time_utc']}, one torch thread",
        f"- per implementation: instructions of a child with {meta['warmup_steps']} warm-up "
        f"steps and then {meta['steps']} steps, minus those of the same child with 0 steps, "
        f"over {meta['steps']}; fused_mup's launches and `torch._fused_adamw_` are no-ops; "
        "for grads new and the grad sets, minus the instructions of handing over the new grads "
        "alone (a child that does only that), as --host-cost times step() alone",
        "- ratio: fused_mup / torch fused (below 1: fewer host instructions than torch)",
        "",
        "| workload | groups | grads | fused_mup instructions | torch fused instructions "
        "| fused_mup / torch fused |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        counts = r["instructions_per_step"]
        ours, theirs = (f"{counts[i]:,.0f}" if i in counts else "not counted" for i in HOST_IMPLS)
        ratio = f"**{r['ratio_vs_torch_fused']:.2f}**" if "ratio_vs_torch_fused" in r else "–"
        lines.append(
            f"| {r['workload']} | {r['n_groups']} | {r['grads']} | {ours} | {theirs} | {ratio} |"
        )
    return "\n".join(lines + changing_vs_steady(results["rows"], "instructions")) + "\n"


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
