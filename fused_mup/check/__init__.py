"""``fused-mup check``: ``fused_mup.AdamW`` against ``torch.optim.AdamW`` on this machine.

For a user's CI: the same comparisons the project's suite makes, run on the user's device and
install. Every case trains both optimizers for several steps from the same params and grads
and compares params and optimizer states with the tolerance table of
:mod:`fused_mup.tolerances`:

- ``trajectory``: three param groups with ``lr_mult`` / ``wd_mult`` (torch gets the equivalent
  groups ``lr · lr_mult``, ``weight_decay · wd_mult``), odd shapes, per dtype (fp32, bf16,
  fp16), plain / ``amsgrad`` / ``maximize``. Low-precision params are compared with torch's
  fp32 math rounded to the format after every step (our algorithm: fp32 math, one rounding).
- ``grad_scaler``: ``torch.amp.GradScaler`` with an inf injected into one step.
- ``clip``: ``opt.clip_grad_norm_`` against ``torch.nn.utils.clip_grad_norm_``, alone and with
  a GradScaler (and its inf step).
- ``checkpoint``: ``state_dict()`` saved through ``torch.save`` to a buffer halfway and loaded
  into a fresh optimizer: fused to fused, fused to torch, torch to fused.
- ``launches``: kernel launches per step counted with ``torch.profiler`` (CUDA only).
- ``model``: optionally, the user's own model (``--model module:factory``) for N steps with
  synthetic grads.

Destinations are poisoned (NaN) before anything is copied into them, so a copy that does not
happen fails the check instead of passing by accident. The command prints a table, can write
JSON, and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

import torch
from torch import nn

from fused_mup.check import cases
from fused_mup.check.cases import DTYPES, load_factory
from fused_mup.check.report import CheckReport, CheckRow
from fused_mup.optim.validation import BACKENDS, DEPRECATED_BACKENDS, normalize_backend
from fused_mup.tolerances import TOLERANCES

__all__ = ["DTYPES", "CheckReport", "CheckRow", "check", "load_factory", "main"]


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _versions(device: str) -> dict[str, str | None]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {
        "fused-mup": version("fused-mup"),
        "torch": torch.__version__,
        "triton": version("triton"),
        "python": platform.python_version(),
        "gpu": gpu,
    }


def check(
    device: str = "cuda",
    *,
    backend: str = "auto",
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16"),
    model: Callable[[], nn.Module] | None = None,
    model_steps: int = 20,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Runs the parity matrix on ``device`` and returns the report (``report.passed``).

    Args:
        device: ``"cuda"`` (the kernel), ``"cpu"`` (torch's fused CPU kernel and the reference
            path, or the kernel in Triton's interpreter with ``backend="triton"`` and
            ``TRITON_INTERPRET=1``).
        backend: passed to :class:`fused_mup.AdamW` (``"torch"``, deprecated, is recorded
            as ``"reference"``).
        dtypes: param dtypes for the trajectory rows, from :data:`DTYPES`.
        model: a factory returning the user's ``nn.Module``; adds ``model`` rows.
        model_steps: steps for the model rows.
        seed: seed of params and grads.
        progress: called with each case's name before it runs.
    """
    device = str(torch.device(device))
    backend = normalize_backend(backend)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device here (try --device cpu)")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtypes {unknown}; choose from {sorted(DTYPES)}")
    tolerances = {name: dict(TOLERANCES[dt]) for name, dt in DTYPES.items()}
    report = CheckReport(device, backend, _versions(device), tolerances=tolerances)
    todo: list[tuple[str, Callable[[], CheckRow | list[CheckRow]]]] = []
    for dt in dtypes:
        for flag in cases.FLAGS:
            todo.append(
                (
                    f"trajectory/{flag} {dt}",
                    lambda dt=dt, f=flag: cases.trajectory_case(device, backend, dt, f, seed),
                )
            )
    todo += [
        ("grad_scaler", lambda: cases.grad_scaler_case(device, backend, seed, clip=None)),
        ("clip", lambda: cases.clip_case(device, backend, seed)),
        ("clip+grad_scaler", lambda: cases.grad_scaler_case(device, backend, seed, clip=1.0)),
    ]
    for direction in ("fused->fused", "fused->torch", "torch->fused"):
        todo.append(
            (
                f"checkpoint {direction}",
                lambda d=direction: cases.checkpoint_case(device, backend, seed, d),
            )
        )
    todo.append(("launches", lambda: cases.launch_case(device, backend, seed)))
    if model is not None:
        todo.append(("model", lambda: cases.model_case(model, device, backend, model_steps, seed)))
    for name, run in todo:
        if progress is not None:
            progress(name)
        try:
            out = run()
        except Exception as exc:  # a crash is a failed row, and the other rows still run
            out = CheckRow(name.split(" ")[0], name.split(" ")[-1] if " " in name else "-")
            out.note = f"raised {type(exc).__name__}: {exc}"
        report.rows.extend(out if isinstance(out, list) else [out])
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fused-mup check",
        description="Check fused_mup.AdamW against torch.optim.AdamW on this machine: "
        "trajectories per dtype with multiplier groups, AMSGrad / maximize, GradScaler with an "
        "inf step, clipping, checkpoints both ways, launches per step. Exits 1 on a mismatch.",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument(
        "--device", default=default_device, help=f"cuda or cpu (default here: {default_device})"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        type=_backend_arg,
        choices=BACKENDS,
        help="fused_mup.AdamW backend (default: auto)",
    )
    parser.add_argument(
        "--dtypes",
        default="fp32,bf16,fp16",
        help="comma-separated param dtypes (default: fp32,bf16,fp16)",
    )
    parser.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="also check your model: a function returning an nn.Module",
    )
    parser.add_argument(
        "--model-steps", type=int, default=20, metavar="N", help="steps for --model (default: 20)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _backend_arg(value: str) -> str:
    """A deprecated name ("torch") still works, with a FutureWarning; argparse's choices
    reject the rest."""
    return normalize_backend(value) if value in DEPRECATED_BACKENDS else value


def main(argv: list[str] | None = None) -> int:
    """``fused-mup check``: prints the table; 0 if every row passes, 1 if not, 2 on bad usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    dtypes = [d for d in args.dtypes.replace(" ", ",").split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        parser.error(f"--dtypes: unknown {bad}; choose from {','.join(DTYPES)}")
    if args.model_steps < 1:
        parser.error("--model-steps must be at least 1")
    try:
        device = str(torch.device(args.device))
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (try --device cpu)")
    model = None
    if args.model:
        try:
            model = load_factory(args.model)
        except (ValueError, ImportError) as exc:
            parser.error(f"--model: {exc}")
    print(f"fused-mup check on {device} (backend={args.backend})", file=sys.stderr)
    report = check(
        device,
        backend=args.backend,
        dtypes=dtypes,
        model=model,
        model_steps=args.model_steps,
        seed=args.seed,
        progress=lambda name: print(f"  {name} ...", file=sys.stderr),
    )
    print(report.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
