"""mkdocs hook: serve the committed ``bench/results/`` under ``results/``.

The docs link to results as ``../bench/results/...``, which works when reading the Markdown on
GitHub; this hook adds those files to the site and rewrites the links, so the same links work
there and ``mkdocs build --strict`` checks that each one exists.
"""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
LINK = "](../bench/results/"

# Results left off the site, each with its reason (GitHub still shows them).
LEFT_OFF = {
    # The re-run committed its numbers, not its figures; the report still links the figures.
    "transfer-quick-cpu-rerun/report.md",
}


def _result_files() -> list[Path]:
    # Committed results only: a half-written run in someone's checkout is not published.
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", str(RESULTS)],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: no git
        return sorted(p for p in RESULTS.rglob("*") if p.is_file())
    return [ROOT / name for name in out.decode().split("\0") if name]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in _result_files():
        rel = path.relative_to(RESULTS).as_posix()
        if path.is_file() and rel not in LEFT_OFF:  # a file git lists may be deleted here
            # Reached by links, not from the nav.
            level = InclusionLevel.NOT_IN_NAV
            files.append(
                File.generated(config, f"results/{rel}", abs_src_path=str(path), inclusion=level)
            )
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    here = posixpath.dirname(page.file.src_uri)
    return markdown.replace(LINK, "](" + posixpath.relpath("results", here or ".") + "/")
