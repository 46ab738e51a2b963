"""Results I/O: the stdout table, ``results.md``, ``results.json`` and the output folder.

The table is one block per workload (what it is, then one line per implementation), so it
stays under 100 columns; the JSON holds every figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fused_mup.bench.environment import device_slug
from fused_mup.bench.plots import plot_bandwidth
from fused_mup.bench.workloads import workloads

__all__ = [
    "SMOKE_NOTE",
    "default_out_dir",
    "format_markdown",
    "format_text_table",
    "write_json",
    "write_json_and_markdown",
    "write_outputs",
]

SMOKE_NOTE = (
    "NOTE: smoke mode runs tiny workloads on the CPU. CPU numbers say nothing about GPU\n"
    "speed; this mode only checks that the bench still runs."
)
# (header, row key, format); "x fused" is the device-time speed-up over torch fused.
_TEXT_COLUMNS = (
    ("impl", "impl", "s"),
    ("state", "state_dtype", "s"),
    ("B/param", "bytes_per_param", ".1f"),
    ("device ms", "device_ms", ".3f"),
    ("e2e ms", "e2e_ms", ".3f"),
    ("host ms", "host_ms", ".3f"),
    ("launches", "launches", "g"),
    ("GB/s", "gbps", ".1f"),
    ("% copy", "frac_copy", "%"),
    ("x fused", "speedup_device", ".2f"),
)
_MD_EXTRA = (("x fused e2e", "speedup_e2e", ".2f"),)
_MARK = {True: "met", False: "NOT met", None: "n/a"}


def _fmt(v: Any, spec: str) -> str:
    if v is None or v == "":
        return "-"
    if spec == "%":
        return f"{100 * v:.1f}"
    return format(v, spec)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _by_workload(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results["rows"]:
        out.setdefault(r["workload"], []).append(r)
    return out


def _workload_line(name: str, rows: list[dict[str, Any]], smoke: bool) -> tuple[str, str]:
    """``name: size, tensors, groups, mode`` and the workload's description."""
    r = rows[0]
    w = workloads(smoke).get(name)
    head = (
        f"{name}: {_human(r['numel'])} params, {r['n_tensors']} tensors, "
        f"{r['n_groups']} groups, {r['mode']}"
    )
    return head, (w.description if w is not None else "")


def _cells(r: dict[str, Any], columns: tuple) -> list[str]:
    cells = []
    for _, key, spec in columns:
        if key == "launches" and r[key] is None:
            cells.append("n/a")  # no kernel launches on the CPU: never invented
        elif key == "device_ms" and spec == "range":
            cells.append(f"{r['device_p20_ms']:.3f}-{r['device_p80_ms']:.3f}")
        else:
            cells.append(_fmt(r[key], spec))
    if r.get("note"):
        cells[0] += f" ({r['note']})"
    return cells


def _aligned(cells: list[str], widths: list[int]) -> str:
    """Name left-aligned, numbers right-aligned, indented under the workload line."""
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return ("  " + "  ".join([cells[0].ljust(widths[0]), *rest])).rstrip()


def _not_run(rows: list[dict[str, Any]]) -> list[str]:
    """One line per reason: ``not run (not importable): apex, te``."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            by_reason.setdefault(r["status"], []).append(r["impl"])
    return [f"not run ({why}): {', '.join(names)}" for why, names in by_reason.items()]


def _header(results: dict[str, Any]) -> list[str]:
    meta, copy = results["meta"], results["copy"]
    backend = meta["fused_mup_backend"]
    return [
        f"device: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
        f"triton {meta['triton']}, {meta.get('time_utc', meta['date'])}",
        f"commit {meta['git_commit']}, load average {meta.get('load_average')}",
        f"copy bandwidth: {copy['gbps']:.1f} GB/s ({copy['bytes'] / 2**20:.0f} MiB "
        "dst.copy_(src), read + write counted)",
        f"fused_mup backend: {backend}"
        + (" (Triton interpreter)" if backend == "triton" else " (Triton on CUDA, torch on CPU)"),
    ]


def _target_lines(results: dict[str, Any]) -> list[str]:
    """Targets whose figures were measured; one line for those that were not."""
    out, missing = [], set()
    for t in results.get("targets", []):
        if t["value"] is None:
            missing.add(t["id"])
            continue
        value = _fmt(t["value"], ".3g")
        out.append(f"  [{_MARK[t['met']]:>7}] {t['id']} {t['workload']}: {value} {t['unit']}")
    if missing:
        out.append(f"  not measured in this run: {', '.join(sorted(missing))}")
    return out


def format_text_table(results: dict[str, Any]) -> str:
    """The stdout report: environment, one block per workload, then the targets."""
    meta = results["meta"]
    lines = ([SMOKE_NOTE] if meta["smoke"] else []) + _header(results)
    if meta["skipped_impls"]:
        lines.append(f"skipped by request: {', '.join(meta['skipped_impls'])}")
    headers = [c[0] for c in _TEXT_COLUMNS]
    for name, rows in _by_workload(results).items():
        head, what = _workload_line(name, rows, meta["smoke"])
        lines += ["", f"{head} ({what})" if len(head) + len(what) < 96 else head]
        if name in results["skipped_workloads"]:
            lines.append(f"  skipped: {results['skipped_workloads'][name]}")
            continue
        body = [_cells(r, _TEXT_COLUMNS) for r in rows if r["status"] == "ok"]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]

        lines += [_aligned(headers, widths)] + [_aligned(b, widths) for b in body]
        lines += ["  " + s for s in _not_run(rows)]
    judged = meta["device"].startswith("cuda") and not meta["smoke"]
    lines += [
        "",
        "targets (ratios from this run; shown, not asserted"
        + ("" if judged else "; not judged on the CPU")
        + "):",
    ]
    lines += _target_lines(results)
    if meta["smoke"]:
        lines.append(SMOKE_NOTE)
    return "\n".join(lines)


def format_markdown(results: dict[str, Any]) -> str:
    """``results.md``: environment, byte model, one table per workload, the targets."""
    meta, copy = results["meta"], results["copy"]
    lines = [f"# fused_mup AdamW bench: {meta['device_name']}, {meta['date']}", ""]
    if meta["smoke"]:
        lines += [f"> {SMOKE_NOTE.replace(chr(10), ' ')}", ""]
    lines += [
        f"- device: `{meta['device_name']}`, driver `{meta['driver']}`, "
        f"CUDA `{meta['cuda_runtime']}`",
        f"- torch `{meta['torch']}`, triton `{meta['triton']}`, commit `{meta['git_commit']}`, "
        f"{meta.get('time_utc', meta['date'])}, load average {meta.get('load_average')}",
        f"- copy bandwidth: **{copy['gbps']:.1f} GB/s** "
        f"({copy['bytes'] / 2**20:.0f} MiB `dst.copy_(src)`, 2 × bytes)",
        f"- fused_mup backend: `{meta['fused_mup_backend']}`",
        "- bytes/param = 2·P + G + 2·k·S (k = 2 states, 3 with AMSGrad): "
        "fp32 28, bf16/fp32 22, bf16 14",
        "- device ms: `triton.testing.do_bench` median (p20–p80); e2e: synchronized wall "
        "time per step; host: `step()` without sync; x fused: speed-up over torch fused",
    ]
    columns = _TEXT_COLUMNS[:4] + (("p20-p80", "device_ms", "range"),) + _TEXT_COLUMNS[4:]
    columns += _MD_EXTRA
    for name, rows in _by_workload(results).items():
        head, what = _workload_line(name, rows, meta["smoke"])
        lines += ["", f"## {head}", "", what, ""]
        if name in results["skipped_workloads"]:
            lines.append(f"Skipped: {results['skipped_workloads'][name]}")
            continue
        lines.append("| " + " | ".join(c[0] for c in columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        lines += ["| " + " | ".join(_cells(r, columns)) + " |" for r in rows if r["status"] == "ok"]
        if skipped := _not_run(rows):
            lines += [""] + [f"- {s}" for s in skipped]
    lines += ["", "## Targets (ratios from this run; shown, not asserted)", ""]
    lines.append("| id | workload | value | threshold | met | target |")
    lines.append("|---|---|---|---|---|---|")
    for t in results.get("targets", []):
        lines.append(
            f"| `{t['id']}` | {t['workload']} | {_fmt(t['value'], '.3g')} {t['unit']} "
            f"| {t['threshold']:g} | {_MARK[t['met']]} | {t['target']} |"
        )
    return "\n".join(lines) + "\n"


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_json_and_markdown(
    results: dict[str, Any], out: Path | None, render: Callable[[dict[str, Any]], str]
) -> None:
    """``out/results.json`` and ``out/results.md`` (``render(results)``); nothing if out is None."""
    if out is not None:
        write_json(results, Path(out) / "results.json")
        (Path(out) / "results.md").write_text(render(results))


def write_outputs(results: dict[str, Any], out: Path, plot: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``bandwidth.png`` into ``out``."""
    paths = [write_json(results, out / "results.json")]
    md = out / "results.md"
    md.write_text(format_markdown(results))
    paths.append(md)
    if plot and (png := plot_bandwidth(results, out / "bandwidth.png")) is not None:
        paths.append(png)
    return paths


def default_out_dir(meta: dict[str, Any]) -> Path:
    """``bench/results/<gpu-slug>-<YYYY-MM-DD>/`` (``cpu-smoke-...`` for smoke runs)."""
    slug = device_slug(meta) + ("-smoke" if meta.get("smoke") else "")
    return Path("bench") / "results" / f"{slug}-{meta['date']}"
