"""wandb for every stage: offline files by default, online when the user asks for it; only rank 0 logs."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf


def init_wandb(cfg: DictConfig, job_type: str, name: str | None = None, rank: int = 0, **extra: Any):
    """Start a wandb run for this stage, or return None when wandb is disabled or this is not rank 0.

    The API key is read by wandb from the environment or ~/.netrc; it is never put in a config or a file here.
    """
    wb = cfg.get("wandb")
    if rank != 0 or wb is None or not wb.get("enabled", False) or wb.get("mode") == "disabled":
        return None
    import wandb

    os.makedirs(wb.dir, exist_ok=True)
    return wandb.init(
        project=wb.project,
        entity=wb.get("entity"),
        group=wb.get("group"),
        job_type=job_type,
        name=name or cfg.get("run_name"),
        dir=str(wb.dir),
        mode=wb.mode,
        tags=list(wb.get("tags") or []),
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, x_disable_stats=True),
        **extra,
    )
