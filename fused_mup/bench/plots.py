"""``bandwidth.png``: achieved GB/s per workload, one marker line per implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["bandwidth_figure", "overlapping_labels", "plot_bandwidth"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless; no display on CI or GPU boxes
    import matplotlib.pyplot as plt

    return plt


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def bandwidth_figure(results: dict[str, Any]):
    """The figure: workloads on evenly spaced x positions in order of size (two workloads of
    nearly the same size, such as gpt2-1.3b and llama-1b, no longer share one spot), the
    legend outside the axes."""
    plt = _pyplot()
    sizes: dict[str, int] = {}
    series: dict[str, dict[str, float]] = {}
    for r in results["rows"]:
        sizes[r["workload"]] = r["numel"]
        if r["status"] == "ok" and r["gbps"]:
            series.setdefault(r["impl"], {})[r["workload"]] = r["gbps"]
    order = sorted(sizes, key=lambda w: (sizes[w], w))
    x = {w: i for i, w in enumerate(order)}
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(order) + 3.5), 5))
    colors = plt.get_cmap("tab20")
    for i, (name, pts) in enumerate(series.items()):
        ws = [w for w in order if w in pts]
        # fused_mup variants solid, baselines dashed; tab20 so no two lines share a color.
        style = "-" if name.startswith("fused_mup") else "--"
        ax.plot(
            [x[w] for w in ws],
            [pts[w] for w in ws],
            marker="o",
            ls=style,
            color=colors(i % 20),
            label=name,
        )
    ax.axhline(results["copy"]["gbps"], color="k", ls="--", lw=1, label="copy bandwidth")
    ax.set_xticks(range(len(order)), [f"{w}\n{_human(sizes[w])}" for w in order], fontsize=8)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xlabel("workload (parameters)")
    ax.set_ylabel("achieved GB/s (minimum bytes)")
    title = f"AdamW step bandwidth: {results['meta']['device_name']}"
    if results["meta"]["smoke"]:
        title += "\n(smoke: tiny CPU workloads, meaningless)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def overlapping_labels(fig) -> list[tuple[str, str]]:
    """Pairs of text labels (tick labels, title, axis labels, legend) whose boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        texts += [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        if (legend := ax.get_legend()) is not None:
            texts.append(legend)
    boxes = [
        (getattr(t, "get_text", lambda: "legend")(), t.get_window_extent(renderer)) for t in texts
    ]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if a and b and box_a.overlaps(box_b)
    ]


def plot_bandwidth(results: dict[str, Any], path: Path) -> Path | None:
    """Save :func:`bandwidth_figure` as a PNG; None when matplotlib is missing."""
    try:
        plt = _pyplot()
    except ImportError:
        return None
    fig = bandwidth_figure(results)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
