"""Progress bars for long bench runs: tqdm on stderr when installed (the ``bench`` extra),
else a silent stand-in, so the bench never fails for want of a progress bar."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar (``update``, ``set_postfix_str``) on stderr, or a no-op one when disabled
    or when tqdm is not installed."""
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        enabled = False
    if not enabled:
        yield _NoBar()
        return
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False) as bar:
        yield bar
