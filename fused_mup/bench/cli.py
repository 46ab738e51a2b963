"""``fused-mup bench``: parse arguments, call the library, print the table. Thin on purpose:
everything it runs is importable from :mod:`fused_mup.bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fused_mup.bench.environment import environment_info
from fused_mup.bench.host_cost import (
    HOST_IMPLS,
    HostCostConfig,
    default_host_cost_dir,
    format_host_cost,
    host_workloads,
    run_host_cost,
)
from fused_mup.bench.host_instructions import (
    HostInstructionsConfig,
    default_host_instructions_dir,
    format_host_instructions,
    run_host_instructions,
)
from fused_mup.bench.impls import default_impls
from fused_mup.bench.results import default_out_dir, format_text_table
from fused_mup.bench.run import BenchConfig, estimate_seconds, run
from fused_mup.bench.step_ratio import (
    CPU_WORKLOADS,
    CUDA_WORKLOADS,
    StepRatioConfig,
    default_step_ratio_dir,
    format_step_ratio,
    ratio_workloads,
    run_step_ratio,
)
from fused_mup.bench.workloads import QUICK_WORKLOADS, workloads

__all__ = ["build_parser", "main"]

# A CPU run estimated longer than this asks for --yes first.
CONFIRM_ABOVE_S = 600.0


class _ListAction(argparse.Action):
    """A list option: ``a,b,c``, ``a b c`` and ``a,b c`` all give ``[a, b, c]``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = [x.strip() for v in values for x in v.split(",") if x.strip()]
        if not items:
            parser.error(f"{option_string}: expected at least one name")
        setattr(namespace, self.dest, items)


def _positive(kind: type):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            v = 0
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``fused-mup bench``."""
    impl_names = [i.name for i in default_impls()]
    p = argparse.ArgumentParser(
        prog="fused-mup bench",
        description="AdamW step bench: fused_mup against torch foreach/fused/compile, apex, "
        "TransformerEngine and optimi on model-shaped param lists with μP groups. "
        "Lists take commas or spaces: --impls fused_mup,torch_fused or --impls a b.",
    )
    size = p.add_argument_group("what to run")
    mode = size.add_mutually_exclusive_group()
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="tiny workloads on the CPU in seconds (CI); the numbers mean nothing",
    )
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"bounded run: workloads {','.join(QUICK_WORKLOADS)}, shorter timing",
    )
    mode.add_argument(
        "--step-ratio",
        action="store_true",
        help="fused_mup vs torch fused (and foreach) step time, interleaved in one run; "
        "single-threaded on the CPU. Workloads: "
        + ",".join(CPU_WORKLOADS)
        + " (CPU), "
        + ",".join(CUDA_WORKLOADS)
        + " (CUDA), or any bench workload",
    )
    mode.add_argument(
        "--host-cost",
        action="store_true",
        help="host time per step() with the launches stubbed, fused_mup vs torch fused, "
        "grads kept and grads new (moe-634: a steady and a changing grad set); workloads "
        + ",".join(host_workloads()),
    )
    mode.add_argument(
        "--host-instructions",
        action="store_true",
        help="the same host path as --host-cost, counted in instructions by callgrind (CPU, "
        "needs valgrind; repeatable on a loaded machine; minutes of CPU per child process; "
        "--impls fused_mup counts one implementation with half the children)",
    )
    size.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    size.add_argument(
        "--workloads",
        nargs="+",
        action=_ListAction,
        default=None,
        help="default all: "
        + ",".join(workloads(False))
        + " (smoke: "
        + ",".join(workloads(True))
        + ")",
    )
    size.add_argument(
        "--impls",
        nargs="+",
        action=_ListAction,
        default=None,
        help="default all: " + ",".join(impl_names),
    )
    size.add_argument(
        "--skip",
        nargs="+",
        action=_ListAction,
        default=[],
        help="implementations to skip, e.g. torch_compile (or 'compile')",
    )
    size.add_argument("--amsgrad", action="store_true", help="bench the AMSGrad variant")
    size.add_argument(
        "--yes",
        action="store_true",
        help="run even when the CPU run is estimated to take more than "
        f"{CONFIRM_ABOVE_S / 60:.0f} minutes",
    )
    timing = p.add_argument_group("timing")
    timing.add_argument(
        "--rounds",
        type=_positive(int),
        default=None,
        help="interleaved rounds for --step-ratio (default 50) and --host-cost (300)",
    )
    timing.add_argument(
        "--rep-ms", type=_positive(float), default=None, help="do_bench rep time (ms)"
    )
    timing.add_argument(
        "--wall-reps", type=_positive(int), default=None, help="steps for e2e/host timing"
    )
    timing.add_argument(
        "--budget-s",
        type=_positive(float),
        default=None,
        help="stop starting new runs after this many seconds (rows say so)",
    )
    timing.add_argument(
        "--compile-max-tensors",
        type=_positive(int),
        default=None,
        help="skip torch_compile on workloads with more tensors (compile time)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default bench/results/<device>-<date>/)",
    )
    out.add_argument("--no-plot", action="store_true", help="skip bandwidth.png")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_device(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda, got {args.device!r}")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here; use --device cpu or --smoke")


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BenchConfig:
    """Turn parsed arguments into a ``BenchConfig``; bad values are usage errors."""
    impl_names = [i.name for i in default_impls()]
    skip = sorted({"torch_compile" if s in ("compile", "torch.compile") else s for s in args.skip})
    for option, names in (("--skip", skip), ("--impls", args.impls or [])):
        if bad := [n for n in names if n not in impl_names]:
            parser.error(f"{option}: unknown implementation(s) {bad}; known: {impl_names}")
    _check_device(args, parser)
    cfg = BenchConfig(
        skip=skip,
        amsgrad=args.amsgrad,
        plot=not args.no_plot,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    cfg.impls = args.impls
    if args.smoke:
        cfg.smoke, cfg.device = True, args.device or "cpu"
        cfg.wall_reps, cfg.warmup_steps, cfg.profile_steps = 3, 1, 1
        cfg.copy_bytes = 32 << 20
        # torch.compile of an optimizer step takes ~20 s per workload on a small CPU.
        if not args.impls or "torch_compile" not in args.impls:
            cfg.skip = sorted({*cfg.skip, "torch_compile"})
    elif args.device:
        cfg.device = args.device
    if args.quick:
        cfg.workloads = list(QUICK_WORKLOADS)
        cfg.rep_ms, cfg.warmup_ms, cfg.wall_reps = 50.0, 10.0, 10
    if args.workloads:
        known = list(workloads(cfg.smoke))
        if bad := [n for n in args.workloads if n not in known]:
            kind = "smoke workload" if cfg.smoke else "workload"
            parser.error(f"--workloads: unknown {kind}(s) {bad}; known: {known}")
        cfg.workloads = list(args.workloads)
    if args.rep_ms is not None:
        cfg.rep_ms = args.rep_ms
    if args.wall_reps is not None:
        cfg.wall_reps = args.wall_reps
    cfg.budget_s = args.budget_s
    cfg.compile_max_tensors = args.compile_max_tensors
    cfg.out = args.out
    return cfg


def _confirm_cpu_run(cfg: BenchConfig, yes: bool) -> str | None:
    """The warning that stops a long CPU run without ``--yes``; None when it may go on."""
    if cfg.device.split(":")[0] != "cpu" or cfg.smoke or yes:
        return None
    seconds = estimate_seconds(cfg)
    if seconds <= CONFIRM_ABOVE_S:
        return None
    names = ",".join(cfg.workloads or workloads(False))
    return (
        f"fused-mup bench: this runs the GPU-sized workloads ({names}) on the CPU, "
        f"roughly {seconds / 3600:.1f} hours or more by a bandwidth estimate.\n"
        "  --smoke        tiny workloads in seconds (checks that the bench runs)\n"
        "  --step-ratio   fused_mup vs torch fused on the CPU (minutes)\n"
        "  --yes          run it anyway"
    )


def _out_dir(args: argparse.Namespace, default: Path) -> Path:
    return args.out if args.out is not None else default


def _step_ratio(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    known = list(ratio_workloads())
    if bad := [n for n in args.workloads or [] if n not in known]:
        parser.error(f"--workloads: unknown workload(s) {bad} for --step-ratio; known: {known}")
    cfg = StepRatioConfig(
        device=str(device),
        workloads=args.workloads,
        progress=not args.no_progress,
        out=_out_dir(args, default_step_ratio_dir(device)),
    )
    if args.rounds is not None:
        cfg.rounds = args.rounds
    results = run_step_ratio(cfg)
    print(format_step_ratio(results) + f"\nwrote {cfg.out}/results.json, results.md")
    return 0


def _host_cost(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = torch.device(args.device or "cpu")
    known = list(host_workloads())
    if bad := [n for n in args.workloads or [] if n not in known]:
        parser.error(f"--workloads: unknown workload(s) {bad} for --host-cost; known: {known}")
    cfg = HostCostConfig(
        device=str(device),
        workloads=args.workloads,
        progress=not args.no_progress,
        out=_out_dir(args, default_host_cost_dir(device)),
    )
    if args.rounds is not None:
        cfg.rounds = args.rounds
    results = run_host_cost(cfg)
    print(format_host_cost(results) + f"\nwrote {cfg.out}/results.json, results.md")
    return 0


def _host_instructions(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.device not in (None, "cpu"):
        parser.error("--host-instructions: CPU only (callgrind runs no GPU)")
    known = list(host_workloads())
    if bad := [n for n in args.workloads or [] if n not in known]:
        parser.error(
            f"--workloads: unknown workload(s) {bad} for --host-instructions; known: {known}"
        )
    if bad := [i for i in args.impls or [] if i not in HOST_IMPLS]:
        parser.error(
            f"--impls: {bad} not counted by --host-instructions; known: {list(HOST_IMPLS)}"
        )
    cfg = HostInstructionsConfig(
        workloads=args.workloads,
        progress=not args.no_progress,
        out=_out_dir(args, default_host_instructions_dir()),
        impls=tuple(args.impls or HOST_IMPLS),
    )
    results = run_host_instructions(cfg)
    print(format_host_instructions(results) + f"\nwrote {cfg.out}/results.json, results.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``fused-mup bench``: run, print the table, write JSON/markdown/PNG.

    Args:
        argv: Arguments after ``bench`` (default: ``sys.argv[1:]``).

    Returns:
        Process exit code: 0 on success (even when some implementations are missing), 2 on
        a usage error or a long CPU run without ``--yes``.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds is not None and not (args.step_ratio or args.host_cost):
        parser.error("--rounds: only for --step-ratio and --host-cost")
    _check_device(args, parser)
    if args.step_ratio:
        return _step_ratio(args, parser)
    if args.host_cost:
        return _host_cost(args, parser)
    if args.host_instructions:
        return _host_instructions(args, parser)
    cfg = config_from_args(args, parser)
    if (warning := _confirm_cpu_run(cfg, args.yes)) is not None:
        print(warning, file=sys.stderr)
        return 2
    if cfg.smoke and "torch_compile" in cfg.skip and "torch_compile" not in args.skip:
        print(
            "torch_compile skipped in smoke mode (compiling takes ~20 s per workload on "
            "the CPU); run with --smoke --impls torch_compile to include it.",
            flush=True,
        )
    if cfg.out is None:
        meta = environment_info(torch.device(cfg.device)) | {"smoke": cfg.smoke}
        cfg.out = default_out_dir(meta)
    results = run(cfg)
    print(format_text_table(results))
    print(f"\nwrote {cfg.out}/results.json, results.md" + (", bandwidth.png" if cfg.plot else ""))
    return 0
