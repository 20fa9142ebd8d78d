"""Plots of hidden-state magnitude per layer and feature dim (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._files import atomic_output
from .outliers import OutlierStatistics

__all__ = ["plot_outliers"]


def plot_outliers(stats: OutlierStatistics, summary: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Two panels: max ``|x|`` per (site, dim) as a heat map (log colour scale), and max ``|x|`` per
    layer for the outlier dims (or the 6 dims with the largest magnitude if there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    A = stats.absmax.clamp_min(1e-3)  # (sites, h)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    im = ax0.imshow(A.numpy(), aspect="auto", interpolation="nearest", norm=LogNorm(vmin=0.1, vmax=float(A.max())))
    fig.colorbar(im, ax=ax0, label="max |x| over positions")
    ax0.set_xlabel("feature dim")
    ax0.set_ylabel("measured input (ordered by layer)")
    ax0.set_title(f"max |x| per input and dim; α = {stats.criteria.magnitude}")
    ticks = [i for i, s in enumerate(stats.sites) if i == 0 or s.layer != stats.sites[i - 1].layer]
    step = max(1, len(ticks) // 10)
    ax0.set_yticks(ticks[::step], [f"L{stats.sites[i].layer}" for i in ticks[::step]])

    dims = [o["dim"] for o in summary["outliers"]]
    label = "outlier dims"
    if not dims:
        dims = A.amax(0).topk(min(6, A.shape[1])).indices.tolist()
        label = "largest dims (no outlier dim met the criteria)"
    layers = stats.layers
    per_layer = torch.stack(  # (layers, h): max over the layer's sites
        [stats.absmax[[i for i, s in enumerate(stats.sites) if s.layer == layer]].amax(0) for layer in layers]
    )
    for d in dims[:12]:
        ax1.plot(layers, per_layer[:, d].numpy(), marker=".", label=f"dim {d}")
    ax1.axhline(stats.criteria.magnitude, color="k", ls="--", lw=1, label=f"α = {stats.criteria.magnitude}")
    ax1.set_yscale("log")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("max |x|")
    ax1.set_title(label)
    ax1.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_output(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    finally:
        plt.close(fig)
