"""The README's Python examples run as written (the multi-GPU one needs torchrun and is covered
by tests/test_distributed.py instead)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
RUNNABLE = {i: b for i, b in enumerate(BLOCKS) if "init_process_group" not in b}


def test_readme_has_the_examples():
    assert len(RUNNABLE) >= 2, "the quickstart and the μP example"


@pytest.mark.parametrize("index", list(RUNNABLE), ids=[f"block{i}" for i in RUNNABLE])
def test_readme_example_runs(index):
    exec(compile(RUNNABLE[index], f"README.md python block {index}", "exec"), {})
