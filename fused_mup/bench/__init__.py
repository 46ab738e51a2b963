"""``fused-mup bench``: AdamW step timings of ``fused_mup.AdamW`` against torch and others.

Every implementation steps the *same* parameter list (same tensors, same fixed random
grads) of a workload shaped like a real model with μP parameter groups. For each
workload × implementation the bench reports device time per step, synchronized wall time,
host time, kernel launches, achieved bandwidth from the minimum bytes moved (as a fraction
of the copy bandwidth measured in the same run) and the speed-up over torch fused.

Modules, one job each: :mod:`~fused_mup.bench.workloads` (shapes, byte model),
:mod:`~fused_mup.bench.impls` (fused_mup variants and the baselines),
:mod:`~fused_mup.bench.timing`, :mod:`~fused_mup.bench.run`,
:mod:`~fused_mup.bench.targets`, :mod:`~fused_mup.bench.results`,
:mod:`~fused_mup.bench.plots`, :mod:`~fused_mup.bench.environment` and
:mod:`~fused_mup.bench.cli`.
"""

from fused_mup.bench.cli import main
from fused_mup.bench.impls import BASELINE_IMPL, BuildContext, Impl, default_impls
from fused_mup.bench.run import BenchConfig, Row, run
from fused_mup.bench.timing import measure_copy_bandwidth
from fused_mup.bench.workloads import (
    Workload,
    WorkloadGroup,
    allocate_params,
    bytes_per_param,
    workloads,
)

__all__ = [
    "BASELINE_IMPL",
    "BenchConfig",
    "BuildContext",
    "Impl",
    "Row",
    "Workload",
    "WorkloadGroup",
    "allocate_params",
    "bytes_per_param",
    "default_impls",
    "main",
    "measure_copy_bandwidth",
    "run",
    "workloads",
]
