"""The process analysis at a glance (PNG): mean implicit reward around the anchors, and the share statistic."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from adpo.io import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_aligned(aligned: pd.DataFrame, path: Path) -> bool:
    """Left: the rejected answer's mean r_t by offset from its first error. Right: chosen (solid) and rejected
    (dashed) by offset from the first divergence. One colour per group of runs."""
    if aligned.empty:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(aligned["group"]))}
    panels = [(axes[0], "first_error", "offset from the rejected answer's first error (tokens)"),
              (axes[1], "first_divergence", "offset from the first divergence of chosen and rejected (tokens)")]
    for ax, anchor, xlabel in panels:
        block = aligned[aligned["anchor"] == anchor]
        for (group, response), line in block.groupby(["group", "response"], sort=False):
            line = line.sort_values("offset")
            ax.plot(line["offset"], line["mean_reward"], color=colours[group],
                    linestyle="-" if response == "chosen" else "--",
                    label=f"{group} ({response})" if anchor == "first_divergence" else str(group))
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean implicit reward beta * d_t")
        ax.legend(fontsize=6)
    axes[0].set_title("rejected answers, at their first error")
    axes[1].set_title("chosen (solid), rejected (dashed), at the first divergence")
    _save(fig, path)
    return True


def plot_share(groups: pd.DataFrame, runs: pd.DataFrame, path: Path, confidence: float) -> bool:
    """Per group: the excess share of negative reward at/after the first error (mean over seeds with its Student-t
    interval, each seed a dot; a group of one run shows that run's bootstrap interval over pairs). Zero is an even
    spread over the answer."""
    name = "excess_share_after_error"
    shown = groups[groups[name].notna()] if name in groups else groups.iloc[0:0]
    if shown.empty:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(shown) + 2), 3.6))
    for x, (_, g) in enumerate(shown.iterrows()):
        low, high = g[f"{name}_low"], g[f"{name}_high"]
        members = runs[runs["group"] == g["group"]]
        if len(members) == 1:
            low, high = members[f"{name}_low"].iloc[0], members[f"{name}_high"].iloc[0]
        has_interval = low is not None and not (isinstance(low, float) and math.isnan(low))
        err = [[g[name] - low], [high - g[name]]] if has_interval else None
        ax.errorbar([x], [g[name]], yerr=err, fmt="o", color="C0", capsize=4)
        seeds = members[name].dropna()
        ax.scatter([x] * len(seeds), seeds, color="C1", s=10, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(shown)), list(shown["group"]), rotation=30, ha="right")
    ax.set_ylabel("negative-reward share at/after error\nminus token share there")
    ax.set_title(f"mean over seeds, {round(100 * confidence)}% interval (one run: over pairs); dots: runs",
                 fontsize=9)
    _save(fig, path)
    return True
