"""The trajectories at a glance (PNG): accuracy against KL, the margin against step, accuracy against step."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adpo_eval.process_plot import _pyplot, _save


def plot_trajectories(curves: pd.DataFrame, logged: pd.DataFrame, path: Path, threshold: float) -> bool:
    """One colour per group: thin lines are seeds, thick lines the mean over seeds (at each step; along KL, the
    seeds' points joined in step order)."""
    if curves.empty:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(curves["group"]))}
    for (group, _seed), run in curves.groupby(["group", "seed"], sort=False):
        run = run.sort_values("step")
        axes[0].plot(run["kl"], run["accuracy"], color=colours[group], alpha=0.25, linewidth=0.8)
        axes[2].plot(run["step"], run["accuracy"], color=colours[group], alpha=0.25, linewidth=0.8)
    for group, block in curves.groupby("group", sort=False):
        mean = block.groupby("step")[["kl", "accuracy"]].mean().reset_index()
        axes[0].plot(mean["kl"], mean["accuracy"], color=colours[group], marker="o", markersize=3, label=str(group))
        axes[2].plot(mean["step"], mean["accuracy"], color=colours[group], marker="o", markersize=3)
    if not logged.empty and logged["margin"].notna().any():
        for group, block in logged.groupby("group", sort=False):
            mean = block.groupby("step")["margin"].mean().reset_index()
            axes[1].plot(mean["step"], mean["margin"], color=colours.get(group, "k"), label=str(group))
        axes[1].axhline(threshold, color="grey", linestyle=":", linewidth=0.9)
    # The accuracy moves in the first nats; a linear axis would give them a sliver of the width.
    axes[0].set_xscale("symlog", linthresh=1.0)
    axes[0].set_xlabel("KL(pi || pi_ref), nats per response (sampled; linear below 1, log above)")
    axes[0].set_ylabel("greedy accuracy")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"beta-scaled sequence margin (training; dotted: {threshold:g})")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("greedy accuracy")
    axes[0].legend(fontsize=7)
    _save(fig, path)
    return True
