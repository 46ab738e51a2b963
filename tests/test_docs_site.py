"""The docs site builds with ``mkdocs build --strict``: every page, link, anchor and API page
(mkdocstrings reads the public names' docstrings) must resolve."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None


# Only a missing mkdocs skips; with mkdocs present, a missing theme or plugin fails the build.
@pytest.mark.skipif(not HAS_MKDOCS, reason='mkdocs is not installed (pip install -e ".[docs]")')
def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # a banner from mkdocs-material
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for page in ("index.html", "api/optimizer/index.html", "results/index.html"):
        assert (tmp_path / page).exists(), page
    api = (tmp_path / "api/optimizer/index.html").read_text()
    assert 'id="fused_mup.AdamW"' in api and 'id="fused_mup.to_torch_state_dict"' in api
