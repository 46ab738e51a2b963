"""Runs a test module's checks in one spawn of N ranks and hands each check's result back.

Process start-up dominates on the CPU, so each test module spawns its ranks once (one process
group) and runs every check in turn; each rank writes its results to a JSON file, and the
module's tests read them, one test per check. gloo + Triton's interpreter on the CPU; nccl with
one GPU per rank when there are enough GPUs.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tolerances import assert_close
from torch.distributed.checkpoint.api import CheckpointException

__all__ = ["Ctx", "assert_check", "full", "local", "run_ranks", "use_cuda"]

# A failing rank leaves its peers waiting in a collective; this bounds the wait.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
SPAWN_TIMEOUT_S = 300


def use_cuda(world_size: int) -> bool:
    return torch.cuda.device_count() >= world_size


class Ctx:
    """What every check needs: rank, world size, device, a scratch dir shared by the ranks."""

    def __init__(self, rank: int, world_size: int, device: torch.device, tmp: Path) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.tmp = tmp
        self.failures: list[str] = []

    def mesh(self, shape: tuple[int, ...], names: tuple[str, ...] | None = None):
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.device.type, shape, mesh_dim_names=names)

    def expect_close(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        """Records a mismatch instead of raising: a rank that stopped early would leave its
        peers hanging in the next collective."""
        try:
            assert_close(local(actual), local(expected), torch.float32, what)
        except AssertionError as e:
            self.failures.append(str(e))

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _worker(rank: int, world_size: int, module: str, init_file: str, out_dir: str) -> None:
    cuda = use_cuda(world_size)
    if not cuda:
        # The kernel runs on CPU tensors only in Triton's interpreter, chosen at import time.
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
    out = Path(out_dir)
    results: dict[str, dict] = {}
    try:
        checks: dict[str, Callable[[Ctx], None]] = importlib.import_module(module).CHECKS
        if cuda:
            torch.cuda.set_device(rank)
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        ctx = Ctx(rank, world_size, device, out)
        for name, check in checks.items():
            start = time.perf_counter()
            ctx.failures = []
            try:
                check(ctx)
                error = "\n".join(ctx.failures) or None
            except (Exception, CheckpointException):  # DCP's is a BaseException
                error = traceback.format_exc()
            results[name] = {"error": error, "seconds": time.perf_counter() - start}
            if error and "Traceback" in error:
                break  # collectives may be out of step now; later checks would only hang
            dist.barrier()
    except Exception:
        results["setup"] = {"error": traceback.format_exc(), "seconds": 0.0}
    finally:
        (out / f"rank{rank}.json").write_text(json.dumps(results))
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(module: str, world_size: int, tmp: Path) -> list[dict]:
    """Runs ``module.CHECKS`` once in one spawn of ``world_size`` ranks; per-rank results."""
    if not use_cuda(world_size):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # inherited by the ranks, belt and braces
    context = mp.spawn(
        _worker,
        args=(world_size, module, str(tmp / "store"), str(tmp)),
        nprocs=world_size,
        join=False,
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the {world_size} ranks did not finish in {SPAWN_TIMEOUT_S} s")
    results = []
    for rank in range(world_size):
        path = tmp / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    return results


def assert_check(rank_results: list[dict], check: str) -> None:
    """Fails with every rank's error for ``check``."""
    for rank, results in enumerate(rank_results):
        if "setup" in results:
            pytest.fail(f"rank {rank} failed to set up:\n{results['setup']['error']}")
        assert check in results, f"rank {rank} did not run {check} (an earlier check crashed)"
        error = results[check]["error"]
        assert error is None, f"rank {rank}, {check}:\n{error}"
