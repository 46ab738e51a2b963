"""The README and the docs pages with runnable examples: every ```python block runs as written.

The torchrun example (docs/distributed.md) needs several processes and is covered by
tests/distributed/test_fsdp2.py instead. README links must point at files and headings that
exist, since no site build checks them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Pages whose ```python blocks are complete programs (other pages hold fragments).
EXAMPLE_PAGES = ["README.md", "docs/index.md", "docs/presets.md", "docs/trainers.md"]
README = (ROOT / "README.md").read_text()


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


EXAMPLES = {
    f"{page.removeprefix('docs/').removesuffix('.md')}-block{i}": block
    for page in EXAMPLE_PAGES
    for i, block in enumerate(_blocks(page))
    if "init_process_group" not in block
}


def _slug(heading: str) -> str:
    # GitHub's anchor for a heading (the docs site uses the same slugs, see mkdocs.yml).
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_a_landing_page():
    lines = README.count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move detail into docs/"
    assert len(_blocks("README.md")) >= 2, "the quickstart and the μP example"


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", README):
        path, anchor = target
        file = ROOT / path
        assert file.exists(), f"README.md links to {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
            slugs = {_slug(h) for h in headings}
            assert anchor in slugs, f"README.md links to {path}#{anchor}: no such heading"


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_runs(name):
    exec(compile(EXAMPLES[name], f"{name} (a ```python block)", "exec"), {})
