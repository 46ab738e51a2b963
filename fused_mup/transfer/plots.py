"""Figures of ``fused-mup transfer`` (matplotlib, imported when a figure is drawn)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fused_mup.transfer.metrics import SweepTable

__all__ = ["plot_curves", "plot_eta_star", "plot_transfer", "pyplot"]

LN2 = math.log(2.0)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; set before pyplot loads
    import matplotlib.pyplot as plt

    return plt


def plot_transfer(sweep: SweepTable, metrics: dict[str, Any], path: Path) -> None:
    """Loss vs log2(lr): one panel per preset, one curve per width, eta* marked."""
    plt = pyplot()
    mean = sweep.mean_loss()
    P, W = len(sweep.presets), len(sweep.widths)
    fig, axes = plt.subplots(1, P, figsize=(3.3 * P, 3.4), sharey=True, squeeze=False)
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, W))
    x = np.log2(sweep.lrs)
    fin = mean[np.isfinite(mean)]
    lo = float(fin.min()) if fin.size else 0.0
    hi = min(float(np.percentile(fin, 90)) if fin.size else 1.0, lo + 1.2)
    top = hi + 0.04 * (hi - lo)
    for p, name in enumerate(sweep.presets):
        ax = axes[0, p]
        m = metrics[name]
        for w in range(W):
            y = mean[p, w]
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], "-o", ms=3, color=colors[w], label=f"d={int(sweep.widths[w])}")
            div = np.isinf(y)
            if div.any():  # diverged runs sit on the top edge as crosses
                ax.plot(x[div], np.full(div.sum(), top), "x", color=colors[w], ms=5, clip_on=False)
            ls = m.log_eta_star[w]
            if m.status[w] in ("ok", "edge") and math.isfinite(ls):
                ax.plot(ls / LN2, m.loss_star[w], "*", color=colors[w], ms=10, mec="k", mew=0.5)
        ax.set_title(name)
        ax.set_xlabel("log2(lr)")
        ax.set_ylim(lo - 0.04 * (hi - lo), top)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation loss (nats/byte)")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("LR transfer across width (★ = η*, × = diverged)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_eta_star(sweep: SweepTable, metrics: dict[str, Any], path: Path) -> None:
    """log2 eta* vs log2 width per preset, with the power-law fits."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    W = sweep.widths
    lw = np.log2(W)
    for i, name in enumerate(sweep.presets):
        m = metrics[name]
        col = f"C{i}"
        y = np.array(m.log_eta_star) / LN2
        ok = np.array([s == "ok" for s in m.status])
        edge = np.array([s == "edge" for s in m.status])
        label = (
            name
            if m.b is None
            else f"{name}: b={m.b:+.2f}" + ("" if m.E is None else f", E={m.E:.2f}")
        )
        ax.plot(lw[ok], y[ok], "o", color=col, label=label)
        if edge.any():
            ax.plot(lw[edge], y[edge], "o", mfc="none", color=col)
        if m.b is not None:
            xx = np.linspace(lw[0], lw[-1], 20)
            ax.plot(xx, (m.a + m.b * xx * LN2) / LN2, "--", color=col, lw=1)
    ax.set_xticks(lw, [str(int(w)) for w in W])
    ax.set_xlabel("width d")
    ax.set_ylabel("log2 η*")
    ax.set_title("optimal LR vs width (fit: log η* = a + b log d)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_curves(
    records: list[dict[str, Any]], sweep: SweepTable, best_index: np.ndarray, path: Path
) -> None:
    """Training-loss curves at the largest width, each preset at its best grid LR (seed mean
    as a thick line, each seed thin)."""
    plt = pyplot()
    dmax = int(sweep.widths[-1])
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for p, name in enumerate(sweep.presets):
        i = int(best_index[p, -1])
        if i < 0:
            continue
        lr = float(sweep.lrs[i])
        runs = [
            r
            for r in records
            if r["key"]["preset"] == name
            and int(r["key"]["width"]) == dmax
            and math.isclose(float(r["key"]["lr"]), lr, rel_tol=1e-6)
            and r.get("curve")
        ]
        if not runs:
            continue
        col = f"C{p}"
        for r in runs:
            c = np.asarray(r["curve"], float)
            ax.plot(c[:, 0], c[:, 1], color=col, lw=0.6, alpha=0.4)
        n = min(len(r["curve"]) for r in runs)
        c = np.mean([np.asarray(r["curve"][:n], float) for r in runs], axis=0)
        ax.plot(c[:, 0], c[:, 1], color=col, lw=1.6, label=f"{name} (lr 2^{math.log2(lr):.0f})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (block means)")
    ax.set_title(f"training loss at d={dmax}, each preset at its best LR", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
