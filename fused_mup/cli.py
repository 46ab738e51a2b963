"""The ``fused-mup`` command: parses the subcommand and hands the rest to its module's ``main``.

Nothing heavy is imported here, so ``fused-mup --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fused_mup import __version__

__all__ = ["SUBCOMMANDS", "main"]

# subcommand -> (module whose main(argv) runs it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "check": (
        "fused_mup.check",
        "check fused_mup.AdamW against torch.optim.AdamW on this machine (for your CI)",
    ),
    "coord-check": ("fused_mup.coord_check", "activation scale per layer across widths (plot)"),
    "transfer": ("fused_mup.transfer", "does the best LR transfer across widths? (LR sweep)"),
    "bench": ("fused_mup.bench", "time one optimizer step against torch's AdamW"),
}

DESCRIPTION = "Tools for fused_mup: a fused AdamW with width-aware (muP / SP) learning rates."
EPILOG = "Run 'fused-mup COMMAND --help' for the options of a command."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fused-mup", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fused-mup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fused-mup``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _parser().parse_args(argv)  # --help / --version / a usage error: exits
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
