"""pytest-benchmark entry points: one ``opt.step()`` per implementation on small param lists.

Run with ``python -m pytest bench/bench_adamw.py`` (CPU: seconds; CUDA is used when
available). Unavailable implementations are skipped with the reason. These measure
per-step latency on tiny inputs; ``fused-mup bench`` is the full bench.
"""

from __future__ import annotations

import os

import pytest
import torch

from fused_mup.bench import BuildContext, allocate_params, default_impls, workloads

__all__: list[str] = []

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Tiny versions of the model-shaped and the many-small-tensor workloads.
WORKLOADS = ("tiny-gpt2-d32", "tiny-llama-d32", "tiny-many-small")
IMPLS = {i.name: i for i in default_impls()}


# Short rounds: on CPU the whole file should take seconds, not minutes.
@pytest.mark.benchmark(max_time=0.2, min_rounds=5, warmup=False)
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_step(benchmark, impl_name: str, workload_name: str) -> None:
    impl, w = IMPLS[impl_name], workloads(smoke=True)[workload_name]
    if not impl.applies(w):
        pytest.skip(f"{impl_name} does not apply to {workload_name}")
    if reason := impl.check(DEVICE):
        pytest.skip(f"{impl_name}: {reason}")
    if impl_name == "torch_compile" and DEVICE.type == "cpu":
        if os.environ.get("FUSED_MUP_BENCH_COMPILE") != "1":
            pytest.skip("torch.compile takes ~20 s per case on CPU; FUSED_MUP_BENCH_COMPILE=1")
    groups = allocate_params(w, DEVICE)
    plain = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    _, step = impl.build(BuildContext(w, plain, DEVICE))
    for _ in range(3):  # state creation, JIT / compile
        step()

    def step_sync() -> None:
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(workload=workload_name, numel=w.numel, device=str(DEVICE))
    benchmark(step_sync)
    params = [p for g in groups for p in g["params"]]
    assert all(torch.isfinite(p).all() for p in params)
