"""Accuracy against granularity, one line per method family (DPO is ADPO with one segment), as a PNG, with the
paper's numbers on the same axes (hollow diamonds on a dotted line, labelled "(paper)")."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from adpo.io import atomic_write_bytes
from adpo_eval.methods import Methods
from adpo_eval.tables import granularity_rank


def plot_granularity(summary: pd.DataFrame, methods: Methods, group_by: Sequence[str], path: Path) -> bool:
    """Accuracy against granularity (finest to coarsest), one panel per model x test set on which we ran some
    method at two granularities or more; False if there is none."""
    frame = summary[summary["method"] != "base"].copy()
    if frame.empty:
        return False
    frame["family"] = frame["method"].map(lambda m: methods[m].family)
    ours = frame[frame["accuracy"].notna()]
    panels = [(m, d) for (m, d), block in ours.groupby(["model", "dataset"], sort=False)
              if block.groupby("family")["granularity"].nunique().max() >= 2]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels):
        block = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
        order = sorted(block["granularity"].unique(), key=granularity_rank)  # ours and the paper's
        x_of = {g: i for i, g in enumerate(order)}
        colors = _plot_ours(ax, block[block["accuracy"].notna()], methods, group_by, x_of)
        _plot_paper(ax, block[block["paper"].notna()], methods, x_of, colors)
        base = summary[(summary["method"] == "base") & (summary["model"] == model) & (summary["dataset"] == dataset)]
        if len(base) and base["accuracy"].notna().any():
            ax.axhline(base["accuracy"].dropna().iloc[0], color="grey", linestyle="--", linewidth=1,
                       label="base model")
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


def _by_granularity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("granularity", key=lambda s: s.map(granularity_rank))


def _plot_ours(ax, block: pd.DataFrame, methods: Methods, group_by: Sequence[str], x_of: dict[str, int]
               ) -> dict[str, str]:
    """Our lines with their seed intervals; returns each family's colour, for the paper's points beside it."""
    colors: dict[str, str] = {}
    for key, line in block.groupby(["family", *group_by], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        line = _by_granularity(line)
        half = ((line["ci_high"] - line["ci_low"]) / 2).fillna(0).to_numpy()
        label = methods[key[0]].label + "".join(f", {k}={v}" for k, v in zip(group_by, key[1:]))
        drawn = ax.errorbar([x_of[g] for g in line["granularity"]], line["accuracy"], yerr=half, marker="o",
                            capsize=3, label=label)
        colors.setdefault(key[0], drawn.lines[0].get_color())
    return colors


def _plot_paper(ax, block: pd.DataFrame, methods: Methods, x_of: dict[str, int], colors: dict[str, str]) -> None:
    """The paper's numbers for each family we drew, in its colour (one point per granularity: the rows repeat once
    per group of ours); the paper's other families are the table's to show."""
    points = block[block["family"].isin(list(colors))].drop_duplicates(["family", "granularity"])
    for family, line in points.groupby("family", sort=False):
        line = _by_granularity(line)
        ax.plot([x_of[g] for g in line["granularity"]], line["paper"], linestyle=":", marker="D", markersize=6,
                markerfacecolor="none", color=colors.get(family, "black"), label=f"{methods[family].label} (paper)")
