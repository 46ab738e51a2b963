"""The top-level ``fused-mup`` command: help without heavy imports, --version, usage errors."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import fused_mup
from fused_mup import cli


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fused_mup", *args], capture_output=True, text=True, check=False
    )


def test_help_imports_neither_torch_nor_triton():
    # What makes --help fast (12 s -> 0.2 s measured on the 2-core CI machine): no torch.
    code = (
        "import sys\n"
        "from fused_mup import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'triton', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in cli.SUBCOMMANDS:
        assert name in out.stdout
    assert "check" in out.stdout and "COMMAND --help" in out.stdout
    assert "main(argv)" not in out.stdout  # no developer text


def test_version_matches_the_installed_distribution():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"fused-mup {version('fused-mup')}"
    assert fused_mup.__version__ == version("fused-mup")


@pytest.mark.parametrize("args", [[], ["chek"], ["--bogus"]], ids=["none", "typo", "flag"])
def test_usage_errors_exit_2_without_traceback(args):
    out = run(*args)
    assert out.returncode == 2
    assert "usage: fused-mup" in out.stderr
    assert "Traceback" not in out.stderr


def test_subcommand_gets_the_rest_of_the_arguments(monkeypatch):
    seen = {}

    class Fake:
        @staticmethod
        def main(argv):
            seen["argv"] = argv
            return 3

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Fake)
    assert cli.main(["check", "--device", "cpu"]) == 3
    assert seen["argv"] == ["--device", "cpu"]


def test_lazy_public_names():
    assert set(fused_mup.__all__) <= set(dir(fused_mup))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fused_mup.nope  # noqa: B018
