"""The test environments, one nox session each. ``.ci/run`` runs README.md's install and test
command itself (what the ``tests`` session runs), then ``lowest`` and ``newest``.

- ``tests``: README.md's install line and test command, the whole suite on the pinned torch.
- ``lowest``: the lower bounds of pyproject.toml (python, torch, triton, numpy), on the
  optimizer, kernels, presets, check, compile, distributed and torch_compat tests
  (``MATRIX_TESTS``).
- ``newest``: the newest torch that installs here (pip's configuration caps it), same tests.
- ``gpu_stack`` (not run by default): the GPU machine's torch and triton, the whole suite and a
  CPU rehearsal of ``bench/gpu_check.sh``. Rerun it whenever that machine's versions change.

Every torch but the pinned one is a CUDA build from PyPI (several GB with its libraries); it
runs on the CPU. ``nox -s lowest -- -x tests/optim/test_compile.py`` passes pytest arguments.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from dataclasses import dataclass

import nox

nox.options.sessions = ["tests", "lowest", "newest"]
nox.options.default_venv_backend = "venv"
nox.options.envdir = ".venv-nox"  # .venv*/ is already ignored by git
nox.options.error_on_missing_interpreters = True


@dataclass(frozen=True)
class Stack:
    """One row of the tested-versions table in README.md."""

    python: str
    torch: str
    triton: str | None  # None: whatever torch's own requirement pins (none for a CPU build)
    numpy: str | None = None  # None: the newest that resolves

    def requirements(self) -> list[str]:
        pins = [f"torch=={self.torch}"]
        pins += [f"triton=={self.triton}"] if self.triton else []
        pins += [f"numpy=={self.numpy}"] if self.numpy else []
        return pins


PINNED = Stack(python="3.11", torch="2.13.0", triton=None)  # README.md's install line
# pyproject.toml's lower bounds. torch 2.10 is the first release whose CUDA build takes
# triton 3.6 (2.9 pins triton 3.5), the kernel's lower bound.
LOWEST = Stack(python="3.10", torch="2.10.0", triton="3.6.0", numpy="1.26.4")
NEWEST = Stack(python="3.11", torch="2.14.1", triton="3.8.0")  # /etc/xdg/pip caps torch here
GPU_STACK = Stack(python="3.11", torch="2.11.0", triton="3.6.0")  # the GPU machine's

# mup pins an older torch than ours; it is only the reference the presets are tested against.
MUP = "mup==1.0.0"
# README.md's install line: torchtitan (tests/distributed/test_torchtitan.py) without its
# requirements (datasets, wandb, torchdata); the matrix sessions leave it out (the test skips).
TORCHTITAN = ["torchtitan==0.3.0", "spmd_types==0.2.3"]
EXTRAS = ".[test,docs]"
MATRIX_EXTRAS = ".[test]"  # the docs build is the pinned session's
# Where torch's internals show: the optimizer (compile, GradScaler, hooks, state dicts, DTensor),
# the kernels, the presets, the parity check, DCP / FSDP2, and each private API's fallback.
MATRIX_TESTS = [
    "tests/optim",
    "tests/kernels",
    "tests/presets",
    "tests/check",
    "tests/distributed",
    "tests/test_launcher.py",
    "tests/test_ignored_keys.py",
    "tests/test_torch_compat.py",
]


def interpreter(version: str) -> str:
    """A path to python``version``: pyenv's shims only answer for the active version, so its
    installs are looked up directly; else the name, for nox to find on PATH."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    return found[-1] if found else shutil.which(f"python{version}") or version


def install(session: nox.Session, stack: Stack, extras: str = MATRIX_EXTRAS) -> None:
    """torch, triton and numpy pinned in the same resolve as the package and its test extras,
    so nothing upgrades them; then a check that the pins are what runs."""
    session.install(*stack.requirements(), "-e", extras)
    session.install("--no-deps", MUP)
    check_versions(session, stack)


def check_versions(session: nox.Session, stack: Stack) -> None:
    """Prints the versions that run, and fails if a pin is not among them."""
    want = f"{stack.torch!r}, {stack.triton!r}, {stack.numpy!r}"
    session.run(
        "python",
        "-c",
        "import platform, numpy, torch, triton\n"
        "print('python', platform.python_version(), 'torch', torch.__version__,"
        " 'triton', triton.__version__, 'numpy', numpy.__version__)\n"
        f"t, tr, n = {want}\n"
        "assert torch.__version__.split('+')[0] == t, (torch.__version__, t)\n"
        "assert tr is None or triton.__version__ == tr, (triton.__version__, tr)\n"
        "assert n is None or numpy.__version__ == n, (numpy.__version__, n)",
    )


@nox.session(python=interpreter(PINNED.python))
def tests(session: nox.Session) -> None:
    """README.md's install and test command: the whole suite."""
    session.install(*PINNED.requirements(), "-e", EXTRAS)
    session.install("--no-deps", MUP, *TORCHTITAN)
    check_versions(session, PINNED)
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=interpreter(LOWEST.python))
def lowest(session: nox.Session) -> None:
    """The lower bounds in pyproject.toml."""
    install(session, LOWEST)
    session.run("python", "-m", "pytest", "-q", *(session.posargs or MATRIX_TESTS))


@nox.session(python=interpreter(NEWEST.python))
def newest(session: nox.Session) -> None:
    """The newest torch that installs here."""
    install(session, NEWEST)
    session.run("python", "-m", "pytest", "-q", *(session.posargs or MATRIX_TESTS))


@nox.session(python=interpreter(GPU_STACK.python))
def gpu_stack(session: nox.Session) -> None:
    """The GPU machine's torch and triton on the CPU: the suite, then gpu_check.sh's dry run."""
    install(session, GPU_STACK, EXTRAS)
    session.install("setuptools>=64", "wheel")  # gpu_check.sh installs --no-build-isolation
    session.run("python", "-m", "pytest", "-q", *session.posargs)
    out = tempfile.mkdtemp(prefix="gpu-check-dry-")
    session.run("bash", "bench/gpu_check.sh", out, env={"DRY_RUN": "1"}, external=True)
