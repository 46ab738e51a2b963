"""``fused-mup transfer``: width x LR x preset x seed sweeps and the transfer metrics.

Python API::

    from fused_mup.transfer import SweepSpec, run_sweep, make_report

    spec = SweepSpec.quick()                   # or SweepSpec.full(), or SweepSpec(...)
    records = run_sweep(spec, "runs/transfer/quick", jobs=2)
    report = make_report("runs/transfer/quick")  # report.md, metrics.json, figures

The CLI is the same thing: ``fused-mup transfer --quick``. See ``docs/transfer.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fused_mup.transfer_model import RunConfig, count_params, load_corpus, train_run
from fused_mup.transfer_params import PRESETS, available_impl

__all__ = [
    "SweepSpec",
    "load_results",
    "load_timing",
    "main",
    "make_report",
    "run_key_id",
    "run_sweep",
]

RESULTS = "results.jsonl"
SPEC = "spec.json"
TIMING = "timing.jsonl"


def _pow2(lo: int, hi: int) -> tuple[float, ...]:
    return tuple(2.0**e for e in range(lo, hi + 1))


@dataclass
class SweepSpec:
    """A sweep: the grid plus everything shared by its runs.

    Exactly one of ``tokens`` (fixed tokens per run) and ``tokens_per_param`` (tokens =
    ratio x non-embedding parameters, so wider models train longer) sets the budget.
    """

    presets: tuple[str, ...] = PRESETS
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    lrs: tuple[float, ...] = _pow2(-14, -4)
    seeds: tuple[int, ...] = (0,)
    depth: int = 4
    heads: int = 8
    context: int = 128
    batch: int = 32
    base_width: int = 64
    tokens: int | None = 4096 * 2000  # 2000 steps of 32 x 128
    tokens_per_param: float | None = None
    weight_decay: float = 0.0
    weight_decay_mode: str = "independent"
    warmup: float = 0.1
    eval_batches: int = 16
    text: str | None = None
    max_bytes: int = 8_000_000
    device: str = "auto"
    impl: str = "auto"
    name: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw: Any) -> SweepSpec:
        """The ``--quick`` sweep: <= 10 min on a 2-core CPU, and SP's optimum still drifts."""
        base: dict[str, Any] = dict(
            widths=(32, 64, 128, 256),
            lrs=_pow2(-10, -4),
            depth=2,
            heads=4,
            context=32,
            batch=16,
            base_width=32,
            tokens=16 * 32 * 100,  # 100 steps
            eval_batches=8,
            max_bytes=2_000_000,
            device="cpu",
            name="quick",
        )
        base.update(kw)
        return cls(**base)

    @classmethod
    def full(cls, **kw: Any) -> SweepSpec:
        """The default / ``--full`` sweep, sized for one GPU and about an hour."""
        return cls(**kw)

    def resolved(self) -> SweepSpec:
        """Copy with ``device`` and ``impl`` resolved from "auto"."""
        dev = self.device
        if dev == "auto":
            import torch

            dev = "cuda" if torch.cuda.is_available() else "cpu"
        impl = available_impl() if self.impl == "auto" else self.impl
        return dataclasses.replace(self, device=dev, impl=impl)

    def steps_for(self, width: int) -> int:
        """Optimizer steps of a run at ``width`` under this budget."""
        per_step = self.batch * self.context
        if self.tokens_per_param is not None:
            tokens = self.tokens_per_param * count_params(width, self.depth, self.context)
        elif self.tokens is not None:
            tokens = self.tokens
        else:
            raise ValueError("set tokens or tokens_per_param")
        return max(1, math.ceil(tokens / per_step))

    def runs(self) -> list[RunConfig]:
        """Every run of the grid (device/impl must be resolved)."""
        if self.device == "auto" or self.impl == "auto":
            return self.resolved().runs()
        fp = load_corpus(self.text, self.max_bytes).fingerprint
        text = None if self.text is None else str(Path(self.text).resolve())
        return [
            RunConfig(
                preset=p,
                width=w,
                lr=lr,
                seed=s,
                depth=self.depth,
                heads=self.heads,
                context=self.context,
                batch=self.batch,
                steps=self.steps_for(w),
                base_width=self.base_width,
                weight_decay=self.weight_decay,
                weight_decay_mode=self.weight_decay_mode,
                warmup=self.warmup,
                eval_batches=self.eval_batches,
                data=fp,
                text=text,
                max_bytes=self.max_bytes,
                impl=self.impl,
                device=self.device,
            )
            for p in self.presets
            for w in self.widths
            for lr in self.lrs
            for s in self.seeds
        ]

    def to_json(self) -> dict[str, Any]:
        """JSON form (for ``spec.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepSpec:
        """Inverse of :meth:`to_json`."""
        d = dict(d)
        for k in ("presets", "widths", "lrs", "seeds"):
            d[k] = tuple(d[k])
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# results file


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


def _cost(cfg: RunConfig) -> float:
    # Relative run cost for the ETA: training + evaluation FLOPs-ish plus a fixed overhead.
    n = count_params(cfg.width, cfg.depth, cfg.context, embeddings=True)
    n += cfg.depth * cfg.context * cfg.width  # attention scores
    return (3 * cfg.steps + 2 * cfg.eval_batches) * cfg.batch * cfg.context * n + 2e8


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
    done = {rec.get("id") for rec in load_results(results)}
    todo = [c for c in runs if run_key_id(c.key()) not in done]
    # Biggest first: the pool then ends on short runs and idles less.
    todo.sort(key=_cost, reverse=True)
    jobs = default_jobs(spec.device) if jobs is None else max(1, jobs)
    total = sum(_cost(c) for c in todo)
    bar = _Progress(total, len(todo), len(runs) - len(todo), enabled=progress)
    t0, cpu0, load0 = time.time(), _cpu_seconds(), _loadavg()

    def finish(cfg: RunConfig, res: dict[str, Any]) -> None:
        key = cfg.key()
        rec = {"id": run_key_id(key), "key": key, **res, "finished": time.time()}
        _append(results, rec)
        bar.update(_cost(cfg), rec)
        if on_record is not None:
            on_record(rec)

    try:
        if jobs == 1 or len(todo) <= 1:
            for cfg in todo:
                finish(cfg, train_run(cfg, threads=None if jobs == 1 else 1))
        else:
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
    finally:
        bar.close()
        if todo:
            _append(out / TIMING, _timing(t0, cpu0, load0, jobs, bar.k, len(runs)))
    if todo and progress:
        print(f"{len(todo)} runs in {time.time() - t0:.0f} s -> {results}", file=sys.stderr)
    by_id = {rec["id"]: rec for rec in load_results(results)}
    return [by_id[i] for i in (run_key_id(c.key()) for c in runs) if i in by_id]


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


class _Progress:
    """tqdm over estimated run cost (so the ETA is right for mixed sizes), or plain lines."""

    def __init__(self, total: float, n: int, skipped: int, enabled: bool) -> None:
        self.n, self.k, self.enabled, self.bar = n, 0, enabled and n > 0, None
        self.t0 = time.time()
        if skipped and enabled:
            print(f"resuming: {skipped} runs already in the results file", file=sys.stderr)
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm

            fmt = "{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]"
            self.bar = tqdm(total=total, desc="transfer", bar_format=fmt, file=sys.stderr)
            self.bar.set_postfix_str(f"0/{n} runs")
        except ImportError:
            self.total, self.acc = total, 0.0

    def update(self, cost: float, rec: dict[str, Any]) -> None:
        self.k += 1
        if not self.enabled:
            return
        k = rec["key"]
        tag = f"{self.k}/{self.n} runs, last {k['preset']} d={k['width']} lr={k['lr']:.3g}"
        if self.bar is not None:
            self.bar.set_postfix_str(tag, refresh=False)
            self.bar.update(cost)
        else:
            self.acc += cost
            el = time.time() - self.t0
            eta = el * (self.total / max(self.acc, 1e-9) - 1)
            print(f"[{el:.0f}s, ETA {eta:.0f}s] {tag}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------
# report


def make_report(
    out_dir: str | Path,
    spec: SweepSpec | None = None,
    n_boot: int = 200,
    plots: bool = True,
) -> dict[str, Any]:
    """Compute the metrics of a finished (or partial) sweep and write the report.

    Writes ``report.md``, ``metrics.json`` and (with matplotlib) ``transfer.png`` (loss vs
    log2 lr, one panel per preset, one curve per width) and ``eta_star.png`` (eta* vs width
    with the power-law fits) into ``out_dir``.

    Args:
        out_dir: the sweep's output directory.
        spec: restrict to this spec's runs (default: ``out_dir/spec.json``, else all records).
        n_boot: bootstrap replicates (used when there are >= 2 seeds).
        plots: write the figures.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    from fused_mup.transfer_report import write_report

    out = Path(out_dir)
    recs = load_results(out / RESULTS)
    if spec is None and (out / SPEC).exists():
        spec = SweepSpec.from_json(json.loads((out / SPEC).read_text()))
    if spec is not None:
        ids = {run_key_id(c.key()) for c in spec.resolved().runs()}
        recs = [r for r in recs if r.get("id") in ids]
    if not recs:
        raise SystemExit(f"no results for this sweep in {out / RESULTS}")
    return write_report(out, recs, spec, n_boot=n_boot, plots=plots, timing=load_timing(out))


# ----------------------------------------------------------------------------------------------
# CLI


def _float(x: str) -> float:
    # "1e-3" or "2**-10" (no eval of user input)
    if "**" in x:
        base, exp = x.split("**", 1)
        return float(base) ** float(exp)
    return float(x)


def _floats(s: str) -> tuple[float, ...]:
    return tuple(_float(x.strip()) for x in s.split(",") if x.strip())


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    """The ``fused-mup transfer`` argument parser."""
    p = argparse.ArgumentParser(
        prog="fused-mup transfer",
        description="Width x LR x preset sweep of a small byte-level transformer; reports the "
        "transfer metrics E, kappa, R_inf (docs/transfer.md). Resumable.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="<= 10 min on a 2-core CPU")
    size.add_argument("--full", action="store_true", help="one GPU, about an hour (default)")
    p.add_argument("--out", default=None, help="output dir (default runs/transfer/<quick|full>)")
    p.add_argument("--presets", type=lambda s: tuple(s.split(",")), help=",".join(PRESETS))
    p.add_argument("--widths", type=_ints, help="comma list, e.g. 32,64,128,256")
    p.add_argument("--lrs", type=_floats, help="comma list, e.g. 2**-10,2**-9 or 1e-3,2e-3")
    p.add_argument("--lr-range", type=_ints, metavar="LO,HI", help="lrs = 2**LO .. 2**HI")
    p.add_argument("--seeds", type=_ints, help="comma list of seeds, e.g. 0,1,2")
    p.add_argument("--depth", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--context", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--base-width", type=int, help="width where all presets equal SP")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=float, help="fixed tokens per run")
    budget.add_argument("--tokens-per-param", type=float, help="tokens = ratio x params")
    p.add_argument("--weight-decay", type=float, help="0 = off (default)")
    p.add_argument("--weight-decay-mode", choices=("coupled", "independent"))
    p.add_argument("--text", help="train on this file's bytes instead of the stdlib sources")
    p.add_argument("--max-bytes", type=int, help="corpus cap")
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto")
    p.add_argument("--jobs", type=int, help="worker processes (default: cores; 4 on cuda)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--report-only", action="store_true", help="recompute report, no training")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def spec_from_args(a: argparse.Namespace) -> SweepSpec:
    """The :class:`SweepSpec` an argument namespace describes."""
    kw: dict[str, Any] = {}
    for name in (
        "presets widths lrs seeds depth heads context batch base_width weight_decay "
        "weight_decay_mode text max_bytes device"
    ).split():
        v = getattr(a, name)
        if v is not None:
            kw[name] = v
    if a.lr_range is not None:
        lo, hi = a.lr_range
        kw["lrs"] = _pow2(lo, hi)
    if a.tokens is not None:
        kw.update(tokens=int(a.tokens), tokens_per_param=None)
    if a.tokens_per_param is not None:
        kw.update(tokens=None, tokens_per_param=a.tokens_per_param)
    bad = set(kw.get("presets", ())) - set(PRESETS)
    if bad:
        raise SystemExit(f"unknown presets {sorted(bad)}; choose from {PRESETS}")
    return SweepSpec.quick(**kw) if a.quick else SweepSpec.full(**kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fused-mup transfer``; returns the exit status."""
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(a.out or f"runs/transfer/{'quick' if a.quick else 'full'}")
    if a.report_only:
        spec = None
        if any(getattr(a, k) is not None for k in ("widths", "lrs", "presets", "seeds")):
            spec = spec_from_args(a)
    else:
        spec = spec_from_args(a).resolved()
        n = len(spec.runs())
        print(
            f"transfer[{spec.name}]: {n} runs ({len(spec.presets)} presets x "
            f"{len(spec.widths)} widths x {len(spec.lrs)} lrs x {len(spec.seeds)} seeds) on "
            f"{spec.device}, impl={spec.impl}, jobs={a.jobs or default_jobs(spec.device)}, "
            f"out={out}",
            file=sys.stderr,
        )
        run_sweep(spec, out, jobs=a.jobs, progress=not a.no_progress)
    metrics = make_report(out, spec, n_boot=a.bootstrap, plots=not a.no_plots)
    print((out / "report.md").read_text() if metrics else "", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
