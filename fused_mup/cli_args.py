"""Argument types shared by the ``fused-mup`` subcommands: one list syntax, clear errors.

A list option takes comma-separated values (``--widths 32,64,128``), space-separated values
(``--widths 32 64 128``) or both; negative numbers work either way (``--lr-range -12,-4``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["add_list", "number", "positive_int", "protect_negative_values"]

_NEGATIVE = re.compile(r"^-(\d|\.\d)")
_NUMBERS = re.compile(r"^-?(\d|\.\d)[\d.,eE*^+-]*$")  # "-12", "-12,-4", "2**-10", "1e-3"


def number(s: str) -> float:
    """A float written as ``1e-3``, ``2**-10`` or ``2^-10`` (never ``eval``'d)."""
    s = s.strip()
    for op in ("**", "^"):
        if op in s:
            base, exp = s.split(op, 1)
            try:
                return float(base) ** float(exp)
            except ValueError:
                break
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None


def positive_int(s: str) -> int:
    """An integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


class _ListAction(argparse.Action):
    def __init__(self, *args: Any, item: Callable[[str], Any] = str, **kw: Any) -> None:
        self.item = item
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        vals = [values] if isinstance(values, str) else values
        parts = [p for v in vals for p in re.split(r"[,\s]+", v)]
        out = []
        for p in (p.strip() for p in parts):
            if not p:
                continue
            try:
                out.append(self.item(p))
            except (argparse.ArgumentTypeError, ValueError) as e:
                parser.error(f"argument {option_string}: {e}")
        if not out:
            parser.error(f"argument {option_string}: expected at least one value")
        setattr(namespace, self.dest, tuple(out))


def add_list(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    item: Callable[[str], Any] = str,
    **kw: Any,
) -> argparse.Action:
    """Add a list option: comma- and/or space-separated values, each parsed by ``item``."""
    return parser.add_argument(*flags, nargs="+", action=_ListAction, item=item, **kw)


def protect_negative_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """Glue ``--opt -12,-4`` (or ``--opt -12 -4``) into ``--opt=-12,-4`` for the list
    ``options``: argparse reads ``-12,-4`` as an unknown option and answers "expected one
    argument"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        j = i + 1
        if a in options and j < len(argv) and _NEGATIVE.match(argv[j]):
            while j < len(argv) and _NUMBERS.match(argv[j]):
                j += 1
            out.append(f"{a}={','.join(argv[i + 1 : j])}")
        else:
            out.append(a)
        i = j
    return out
