"""Accuracy against granularity, one line per method family (DPO is ADPO with one segment), as a PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from adpo.io import atomic_write_bytes
from adpo_eval.methods import Methods
from adpo_eval.tables import granularity_rank


def plot_granularity(summary: pd.DataFrame, methods: Methods, group_by: Sequence[str], path: Path) -> bool:
    """Accuracy against granularity (finest to coarsest), one panel per model x dataset; False if nothing to plot."""
    frame = summary[summary["method"] != "base"].copy()
    if frame.empty:
        return False
    frame["family"] = frame["method"].map(lambda m: methods[m].family)
    panels = [(m, d) for (m, d), block in frame.groupby(["model", "dataset"], sort=False)
              if block.groupby("family")["granularity"].nunique().max() >= 2]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels):
        block = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
        order = sorted(block["granularity"].unique(), key=granularity_rank)
        x_of = {g: i for i, g in enumerate(order)}
        for key, line in block.groupby(["family", *group_by], sort=False):
            key = key if isinstance(key, tuple) else (key,)
            line = line.sort_values("granularity", key=lambda s: s.map(granularity_rank))
            xs = [x_of[g] for g in line["granularity"]]
            half = ((line["ci_high"] - line["ci_low"]) / 2).fillna(0).to_numpy()
            label = methods[key[0]].label + "".join(f", {k}={v}" for k, v in zip(group_by, key[1:]))
            ax.errorbar(xs, line["accuracy"], yerr=half, marker="o", capsize=3, label=label)
        base = summary[(summary["method"] == "base") & (summary["model"] == model) & (summary["dataset"] == dataset)]
        if len(base):
            ax.axhline(base["accuracy"].iloc[0], color="grey", linestyle="--", linewidth=1, label="base model")
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_xlabel("granularity (finest to coarsest; sequence = DPO)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model} / {dataset}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True
