"""kernels/ ships as fused_mup.kernels, in the editable install and in a built wheel, and never
as a top-level ``kernels`` module (a different PyPI package owns that name)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A top-level `kernels` may exist: the PyPI package of that name (transformers depends on it).
# It must not be ours, from the checkout or from our wheel.
NOT_OURS = (
    "spec = importlib.util.find_spec('kernels');"
    "assert spec is None or spec.origin not in {ours!r}, spec.origin;"
)


def test_installed_package_has_kernels_subpackage_only(tmp_path):
    # Run outside the checkout so that the source tree is not on sys.path.
    code = (
        "import importlib.util, fused_mup.kernels as k;"
        "assert k.adamw_kernel is not None;"
        + NOT_OURS.format(ours=[str(ROOT / "kernels" / "__init__.py")])
        # The editable finder comes after site-packages on sys.meta_path, so a PyPI `kernels`
        # would hide a top-level mapping of ours from find_spec: read its mapping directly.
        + "import sys;"
        "maps = [getattr(sys.modules.get(f.__module__), 'MAPPING', {}) for f in sys.meta_path];"
        "assert not any('kernels' in m for m in maps), maps;" + "print(k.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fused_mup.kernels"


def test_wheel_contains_fused_mup_kernels_and_no_top_level_kernels(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("fused_mup-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fused_mup/kernels/adamw.py" in names
    assert "fused_mup/kernels/__init__.py" in names
    top_level = {n.split("/")[0] for n in names}
    assert "kernels" not in top_level, sorted(top_level)
    assert {"fused_mup"} <= top_level
    # Every subpackage of the source tree ships (pyproject lists them one by one).
    for init in (ROOT / "fused_mup").rglob("__init__.py"):
        name = init.relative_to(ROOT).as_posix()
        assert name in names, f"{name} is missing from the wheel: add it to pyproject's packages"
    # triton is required on Linux only (tests/test_no_triton.py: everything else runs without).
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist: triton")
    ]  # fmt: skip
    assert requires == ['Requires-Dist: triton>=3.6; platform_system == "Linux"'], requires

    # Installed from the wheel (ahead of the editable install on sys.path), it imports.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target)]
        + [str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import importlib.util, fused_mup.kernels as k;"
        + NOT_OURS.format(ours=[str(d / "kernels" / "__init__.py") for d in (ROOT, target)])
        + "print(k.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target)), out.stdout
