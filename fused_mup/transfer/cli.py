"""``fused-mup transfer``: parse arguments, run the sweep, write the report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fused_mup.cli_args import add_list, number, positive_int, protect_negative_values
from fused_mup.transfer.data import parse_tokenizer
from fused_mup.transfer.experiments import (
    VOCAB_TOKENIZERS,
    run_vocab,
    run_weight_decay,
    vocab_spec,
    weight_decay_spec,
)
from fused_mup.transfer.report import make_report
from fused_mup.transfer.spec import PRESETS, SweepSpec, pow2
from fused_mup.transfer.sweep import default_jobs, estimate_seconds, run_sweep
from fused_mup.transfer.train import SCHEDULES

__all__ = ["build_parser", "main", "spec_from_args"]

LIST_OPTIONS = (
    "--presets",
    "--widths",
    "--lrs",
    "--lr-range",
    "--seeds",
    "--betas",
    "--tokenizers",
)
EXPERIMENTS = ("width", "weight-decay", "vocab")
CONFIRM_S = 3600.0  # a CPU sweep estimated longer than this needs --yes


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``fused-mup transfer`` argument parser."""
    p = argparse.ArgumentParser(
        prog="fused-mup transfer",
        description="Width x LR x preset sweep of a small transformer; reports how much of "
        "SP's loss gap to muP each preset closes, and the transfer metrics E, kappa, R_inf "
        "(docs/transfer.md). Resumable. Lists: comma- or space-separated.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 seeds, <= 10 min on a 2-core CPU")
    size.add_argument(
        "--standard",
        action="store_true",
        help="3 seeds, widths to 256, 409,600 tokens per run: <= 2 h on a 2-core CPU",
    )
    size.add_argument("--full", action="store_true", help="one GPU (default)")
    p.add_argument(
        "--experiment",
        choices=EXPERIMENTS,
        default="width",
        help="width: the LR-transfer sweep (default); weight-decay: WD off/on at fixed tokens "
        "per parameter (--weight-decay is the 'on' value, default 0.1); vocab: sp_emb vs "
        "sp_emb_sqrt over BPE vocabulary sizes (--tokenizers)",
    )
    p.add_argument(
        "--out", default=None, help="output dir (default runs/transfer/<experiment>-<quick|full>)"
    )
    add_list(p, "--presets", help=",".join(PRESETS))
    add_list(p, "--widths", item=positive_int, help="e.g. 32,64,128,256")
    add_list(p, "--lrs", item=number, help="e.g. 2**-10,2**-9 or 1e-3,2e-3")
    add_list(p, "--lr-range", item=_int, metavar="LO,HI", help="lrs = 2**LO .. 2**HI")
    add_list(p, "--seeds", item=_int, help="e.g. 0,1,2")
    p.add_argument("--depth", type=positive_int)
    p.add_argument("--heads", type=positive_int, help="attention heads, fixed across widths")
    p.add_argument("--head-dim", type=positive_int, help="fixed head width instead of --heads")
    p.add_argument("--context", type=positive_int)
    p.add_argument("--batch", type=positive_int)
    p.add_argument("--base-width", type=positive_int, help="width where all presets equal SP")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=number, help="fixed tokens per run")
    budget.add_argument("--tokens-per-param", type=number, help="tokens = ratio x params")
    p.add_argument("--weight-decay", type=number, help="0 = off (default)")
    p.add_argument("--weight-decay-mode", choices=("coupled", "independent"))
    add_list(p, "--betas", item=number, metavar="B1,B2", help="AdamW betas (0.9,0.999)")
    p.add_argument("--eps", type=number, help="AdamW eps (1e-8)")
    p.add_argument("--schedule", choices=SCHEDULES, help="after warm-up (default cosine)")
    p.add_argument("--warmup", type=number, help="warm-up fraction of the steps (0.1)")
    p.add_argument("--zero-readout", action="store_true", help="zero-init the readout under mup")
    p.add_argument(
        "--mup-attention",
        choices=("on", "off"),
        help="attention scale 1/d_head (on) or 1/sqrt(d_head) (off); default: on for mup only",
    )
    p.add_argument("--tokenizer", help="bytes (default) or bpe-<N>, e.g. bpe-4096")
    add_list(p, "--tokenizers", help="vocab experiment: default bytes,bpe-2048,bpe-8192")
    p.add_argument("--text", help="train on this file instead of the stdlib sources")
    p.add_argument("--max-bytes", type=positive_int, help="corpus cap")
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto")
    p.add_argument("--jobs", type=positive_int, help="worker processes (default: cores; 4 on cuda)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--yes", action="store_true", help="start a CPU sweep that may take hours")
    p.add_argument("--report-only", action="store_true", help="recompute report, no training")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def spec_from_args(
    a: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> SweepSpec:
    """The :class:`SweepSpec` an argument namespace describes; bad values are usage errors."""
    parser = parser or build_parser()
    kw: dict[str, Any] = {}
    for name in (
        "presets widths lrs seeds depth heads head_dim context batch base_width weight_decay "
        "weight_decay_mode eps schedule warmup tokenizer text max_bytes device"
    ).split():
        v = getattr(a, name)
        if v is not None:
            kw[name] = v
    if a.lr_range is not None:
        if len(a.lr_range) != 2 or a.lr_range[0] > a.lr_range[1]:
            parser.error(f"--lr-range takes LO,HI with LO <= HI, got {list(a.lr_range)}")
        kw["lrs"] = pow2(*a.lr_range)
    if a.betas is not None:
        if len(a.betas) != 2 or not all(0 <= b < 1 for b in a.betas):
            parser.error(f"--betas takes B1,B2 in [0, 1), got {list(a.betas)}")
        kw["beta1"], kw["beta2"] = a.betas
    if a.zero_readout:
        kw["zero_readout"] = True
    if a.mup_attention is not None:
        kw["mup_attention"] = a.mup_attention == "on"
    if a.tokens is not None:
        kw.update(tokens=int(a.tokens), tokens_per_param=None)
    if a.tokens_per_param is not None:
        kw.update(tokens=None, tokens_per_param=a.tokens_per_param)
    if a.head_dim is not None:
        kw["heads"] = 1  # unused: heads follow the width
    if a.experiment == "weight-decay":
        kw.pop("weight_decay", None)  # the "on" arm's value, not the spec's
        spec = weight_decay_spec(quick=a.quick, standard=a.standard, **kw)
    elif a.experiment == "vocab":
        spec = vocab_spec(quick=a.quick, **kw)
    else:
        spec = (
            SweepSpec.quick if a.quick else SweepSpec.standard if a.standard else SweepSpec.full
        )(**kw)
    problem = spec_problem(spec)
    if problem:
        parser.error(problem)
    return spec


def spec_problem(spec: SweepSpec) -> str | None:
    """Why ``spec`` cannot run, in one line; None if it can."""
    bad = sorted(set(spec.presets) - set(PRESETS))
    if bad:
        return f"unknown presets {bad}; choose from {', '.join(PRESETS)}"
    div = spec.head_dim or spec.heads
    what = "--head-dim" if spec.head_dim else "--heads"
    odd = [w for w in (*spec.widths, spec.base_width) if w % div]
    if odd:
        return f"widths {odd} are not multiples of {what} {div}"
    if any(lr <= 0 for lr in spec.lrs):
        return "learning rates must be > 0"
    if spec.tokens is not None and spec.tokens < 1 or (spec.tokens_per_param or 1) <= 0:
        return "the token budget must be > 0"
    if not 0 <= spec.warmup <= 1:
        return f"--warmup is a fraction of the steps in [0, 1], got {spec.warmup}"
    for tok in (spec.tokenizer, *spec.extra.get("tokenizers", ())):
        try:
            parse_tokenizer(tok)
        except ValueError as e:
            return str(e)
    return None


def _arms(a: argparse.Namespace, spec: SweepSpec) -> list[SweepSpec]:
    if a.experiment == "weight-decay":
        return [spec, dataclasses.replace(spec, weight_decay=a.weight_decay or 0.1)]
    if a.experiment == "vocab":
        return [dataclasses.replace(spec, tokenizer=t) for t in _tokenizers(a)]
    return [spec]


def _tokenizers(a: argparse.Namespace) -> tuple[str, ...]:
    return tuple(a.tokenizers) if a.tokenizers else VOCAB_TOKENIZERS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fused-mup transfer``; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(protect_negative_values(argv, LIST_OPTIONS))
    size = "quick" if a.quick else "standard" if a.standard else "full"
    name = size if a.experiment == "width" else f"{a.experiment}-{size}"
    out = Path(a.out or f"runs/transfer/{name}")
    if a.tokenizers is not None:
        for t in a.tokenizers:
            try:
                parse_tokenizer(t)
            except ValueError as e:
                parser.error(str(e))
    if a.report_only:
        if a.experiment != "width":
            parser.error("--report-only is for the width sweep; rerun the experiment (resumes)")
        spec = None
        if any(getattr(a, k) is not None for k in ("widths", "lrs", "presets", "seeds")):
            spec = spec_from_args(a, parser)
        make_report(out, spec, a.bootstrap, not a.no_plots, progress=not a.no_progress)
        print((out / "report.md").read_text(), end="")
        return 0
    spec = spec_from_args(a, parser).resolved()
    jobs = a.jobs or default_jobs(spec.device)
    arms = _arms(a, spec)
    n = sum(len(s.runs()) for s in arms)
    sub = {"weight-decay": ("off", "on"), "vocab": _tokenizers(a)}.get(a.experiment)
    est = sum(
        estimate_seconds(s, out if sub is None else out / d, jobs)
        for s, d in zip(arms, sub or (None,), strict=True)
    )
    print(
        f"transfer[{spec.name}]: {n} runs ({len(arms)} arm(s) x {len(spec.presets)} presets x "
        f"{len(spec.widths)} widths x {len(spec.lrs)} lrs x {len(spec.seeds)} seeds) on "
        f"{spec.device}, jobs={jobs}, out={out}; estimated {est / 60:.0f} min",
        file=sys.stderr,
    )
    if spec.device == "cpu" and est > CONFIRM_S and not a.yes:
        print(
            f"fused-mup transfer: this CPU run is estimated at {est / 3600:.1f} hours. Pass "
            "--yes to start it anyway, --quick for the CPU-sized version, or --device cuda "
            "on a GPU.",
            file=sys.stderr,
        )
        return 2
    progress = not a.no_progress
    if a.experiment == "weight-decay":
        run_weight_decay(
            spec, out, a.weight_decay or 0.1, a.jobs, progress, a.bootstrap, not a.no_plots
        )
        print((out / "weight_decay.md").read_text(), end="")
    elif a.experiment == "vocab":
        run_vocab(spec, out, _tokenizers(a), a.jobs, progress, not a.no_plots)
        print((out / "vocab.md").read_text(), end="")
    else:
        run_sweep(spec, out, jobs=a.jobs, progress=progress)
        make_report(out, spec, a.bootstrap, not a.no_plots, progress=progress)
        print((out / "report.md").read_text(), end="")
    return 0
