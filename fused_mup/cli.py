"""The ``fused-mup`` command. Thin: each subcommand is a library module's ``main(argv)``."""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("fused_mup.bench", "AdamW step timings against torch and others"),
    "coord-check": ("fused_mup.coord_check", "activation scale per layer across widths"),
    "transfer": ("fused_mup.transfer", "width x LR sweep and the transfer metrics E, kappa, R_inf"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fused-mup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage / error and exits
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
