"""The one progress bar of the long-running commands (``fused-mup bench``, ``fused-mup
transfer``): tqdm on stderr when installed (the ``bench`` extra), else plain lines with an ETA,
so a run never fails for want of a progress bar and a log file still shows where it is."""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass


class _LineBar(_NoBar):
    """tqdm's ``update`` / ``set_postfix_str`` as one stderr line per update."""

    def __init__(self, total: float, desc: str) -> None:
        self.total, self.desc, self.done, self.postfix = total, desc, 0.0, ""
        self.t0 = time.time()

    def update(self, n: float = 1) -> None:
        self.done += n
        el = time.time() - self.t0
        eta = el * (self.total / self.done - 1) if self.done > 0 else float("nan")
        print(f"{self.desc}: [{el:.0f}s, ETA {eta:.0f}s] {self.postfix}", file=sys.stderr)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s


@contextlib.contextmanager
def progress_bar(
    total: float,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    *,
    leave: bool = False,
    bar_format: str | None = None,
) -> Iterator[Any]:
    """A bar with tqdm's ``update(n)`` and ``set_postfix_str(s, refresh=True)``.

    Args:
        total: the amount ``update`` calls add up to (a float works: e.g. estimated cost, so
            the ETA is right for runs of mixed sizes).
        desc: the bar's label.
        unit: tqdm's unit.
        enabled: False gives a bar that does nothing.
        leave: keep tqdm's bar on screen when done.
        bar_format: tqdm's ``bar_format``.
    """
    if not enabled:
        yield _NoBar()
        return
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        yield _LineBar(total, desc)
        return
    with tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, bar_format=bar_format
    ) as bar:
        yield bar
