"""``fused-mup transfer``: width x LR x preset x seed sweeps and the transfer metrics.

Python API::

    from fused_mup.transfer import SweepSpec, run_sweep, make_report

    spec = SweepSpec.quick()                   # or SweepSpec.full(), or SweepSpec(...)
    records = run_sweep(spec, "runs/transfer/quick", jobs=2)
    report = make_report("runs/transfer/quick")  # report.md, metrics.json, figures

The CLI is the same thing: ``fused-mup transfer --quick``. See ``docs/transfer.md``.

Modules, in import order: ``data`` (corpus, tokenizers) -> ``train`` (one run) -> ``spec``
(the grid) -> ``sweep`` (workers, results file) -> ``metrics`` (numpy only) -> ``plots`` ->
``report`` -> ``cli``.
"""

from fused_mup.transfer.cli import main
from fused_mup.transfer.data import Corpus, load_corpus
from fused_mup.transfer.metrics import SweepTable, bootstrap_metrics, compute_metrics
from fused_mup.transfer.report import make_report
from fused_mup.transfer.spec import PRESETS, SweepSpec
from fused_mup.transfer.sweep import load_results, load_timing, run_key_id, run_sweep
from fused_mup.transfer.train import RunConfig, train_run

__all__ = [
    "PRESETS",
    "Corpus",
    "RunConfig",
    "SweepSpec",
    "SweepTable",
    "bootstrap_metrics",
    "compute_metrics",
    "load_corpus",
    "load_results",
    "load_timing",
    "main",
    "make_report",
    "run_key_id",
    "run_sweep",
    "train_run",
]
