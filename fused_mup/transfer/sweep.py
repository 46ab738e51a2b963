"""Running a ``fused-mup transfer`` sweep: worker processes, the resumable results file.

Each finished run is one JSON line in ``results.jsonl``; restarting skips every run whose key
is already there. ``timing.jsonl`` gets one line per invocation.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fused_mup.bench.progress import progress_bar
from fused_mup.tiny_gpt import flops_per_token
from fused_mup.transfer.data import parse_tokenizer
from fused_mup.transfer.spec import HEADLINE, SweepSpec
from fused_mup.transfer.train import RunConfig, train_run

__all__ = [
    "RESULTS",
    "SPEC",
    "TIMING",
    "default_jobs",
    "estimate_seconds",
    "load_results",
    "load_timing",
    "run_key_id",
    "run_order",
    "run_sweep",
]

RESULTS = "results.jsonl"
SPEC = "spec.json"
TIMING = "timing.jsonl"


def run_key_id(key: dict[str, Any]) -> str:
    """Stable id of a run key (sha1 of its canonical JSON)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a results file, skipping a torn last line left by an interruption."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            out.append(rec)
    return out


def _append(path: Path, rec: dict[str, Any]) -> None:
    # Each finished run is one self-contained line, flushed to disk at once: a crash loses at
    # most the line being written, and load_results() skips a torn one.
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(rec, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(cfg: RunConfig) -> dict[str, Any]:
    return train_run(cfg, threads=1)


# Sustained throughput of one CPU core on these tiny models, in _cost units per CPU-second:
# 6.5e10 for a d=256 --standard run and 5.5e10 for d=64 (65 and 6 CPU-s, 2-core Xeon at load
# ~2.8). Used only for the estimate printed before a sweep starts (and the --yes guard), so
# it assumes the cores are not shared.
CPU_COST_PER_S = 6e10
# Per-run cost that does not scale with FLOPs (model build, evaluation, Python), in the same
# units: about one second of a CPU core, which dominates the narrowest runs.
OVERHEAD = 2e10


def _cost(cfg: RunConfig) -> float:
    # Relative run cost for the ETA and the largest-first order: training + evaluation FLOPs
    # plus a fixed per-run overhead.
    per_token = flops_per_token(
        cfg.width, cfg.depth, cfg.context, parse_tokenizer(cfg.tokenizer) or 256
    )
    return (cfg.steps + cfg.eval_batches / 3) * cfg.batch * cfg.context * per_token + OVERHEAD


def run_order(cfg: RunConfig) -> tuple[bool, int, float]:
    """Sort key of the work list: headline presets first, then seed by seed (a sweep cut
    short leaves whole seeds, which a partial report can use), and biggest run first within
    that (the pool then ends on short runs and idles less)."""
    return (cfg.preset not in HEADLINE, cfg.seed, -_cost(cfg))


def estimate_seconds(spec: SweepSpec, out_dir: str | Path | None = None, jobs: int = 1) -> float:
    """Rough wall-time estimate of the runs of ``spec`` not yet in ``out_dir`` (CPU rate)."""
    done = set() if out_dir is None else {r.get("id") for r in load_results(out_dir)}
    todo = [c for c in spec.resolved().runs() if run_key_id(c.key()) not in done]
    return sum(_cost(c) for c in todo) / (CPU_COST_PER_S * max(1, jobs))


def default_jobs(device: str) -> int:
    """Worker processes: one per available core on CPU, 4 sharing the GPU on CUDA."""
    if device.startswith("cuda"):
        return 4
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    jobs: int | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every not-yet-finished run of ``spec``, appending each to ``out_dir/results.jsonl``.

    Resumable: runs whose key is already in the results file are skipped. Diverged runs are
    recorded (``"diverged": true``), never dropped.

    Args:
        spec: the sweep.
        out_dir: output directory (created); also receives ``spec.json``.
        jobs: worker processes (default: one per core on CPU). 1 runs in-process.
        progress: show a tqdm progress bar with ETA (falls back to plain lines without tqdm).
        on_record: called with each new record after it is written.

    Returns:
        The records of this spec (old and new), in grid order.
    """
    spec = spec.resolved()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC).write_text(json.dumps(spec.to_json(), indent=1) + "\n")
    results = out / RESULTS
    runs = spec.runs()
    finished = {rec.get("id") for rec in load_results(results)}
    todo = [c for c in runs if run_key_id(c.key()) not in finished]
    todo.sort(key=run_order)
    jobs = default_jobs(spec.device) if jobs is None else max(1, jobs)
    total = sum(_cost(c) for c in todo)
    if progress and len(runs) > len(todo):
        print(
            f"resuming: {len(runs) - len(todo)} runs already in the results file", file=sys.stderr
        )
    t0, cpu0, load0 = time.time(), _cpu_seconds(), _loadavg()
    done = 0
    fmt = "{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]"
    with progress_bar(
        total, "transfer", enabled=progress and bool(todo), leave=True, bar_format=fmt
    ) as bar:
        bar.set_postfix_str(f"0/{len(todo)} runs")

        def finish(cfg: RunConfig, res: dict[str, Any]) -> None:
            nonlocal done
            key = cfg.key()
            rec = {"id": run_key_id(key), "key": key, **res, "finished": time.time()}
            _append(results, rec)
            done += 1
            tag = f"{done}/{len(todo)} runs, last {cfg.preset} d={cfg.width} lr={cfg.lr:.3g}"
            bar.set_postfix_str(tag, refresh=False)
            bar.update(_cost(cfg))  # over estimated cost: the ETA is right for mixed sizes
            if on_record is not None:
                on_record(rec)

        try:
            _run_all(todo, jobs, finish)
        finally:
            if todo:
                _append(out / TIMING, _timing(t0, cpu0, load0, jobs, done, len(runs)))
    if todo and progress:
        print(f"{len(todo)} runs in {time.time() - t0:.0f} s -> {results}", file=sys.stderr)
    by_id = {rec["id"]: rec for rec in load_results(results)}
    return [by_id[i] for i in (run_key_id(c.key()) for c in runs) if i in by_id]


def _run_all(
    todo: list[RunConfig], jobs: int, finish: Callable[[RunConfig, dict[str, Any]], None]
) -> None:
    # In-process for one job; otherwise a spawn pool of single-threaded workers.
    if jobs == 1 or len(todo) <= 1:
        for cfg in todo:
            finish(cfg, train_run(cfg, threads=None if jobs == 1 else 1))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no inherited torch thread pools / CUDA state
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
        pending = {pool.submit(_run_one, c): c for c in todo}
        try:
            while pending:
                fin, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in fin:
                    finish(pending.pop(fut), fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped pool workers
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _timing(
    t0: float, cpu0: float, load0: float | None, jobs: int, done: int, n: int
) -> dict[str, Any]:
    # One line per invocation: the report quotes wall time and CPU time, and the load average
    # says whether other work shared the cores (wall time alone would hide that).
    return {
        "key": None,
        "started": t0,
        "wall_s": round(time.time() - t0, 2),
        "cpu_s": round(_cpu_seconds() - cpu0, 2),
        "jobs": jobs,
        "cores": default_jobs("cpu"),
        "runs_done": done,
        "runs_in_spec": n,
        "loadavg_start": load0,
        "loadavg_end": _loadavg(),
    }


def load_timing(out_dir: str | Path) -> list[dict[str, Any]]:
    """The per-invocation timing lines of a sweep directory (``timing.jsonl``)."""
    path = Path(out_dir) / TIMING
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
