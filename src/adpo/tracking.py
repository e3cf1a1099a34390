"""wandb for every stage: offline files by default, online when the user asks for it; only rank 0 logs.

Runs of one sweep share a group (`wandb.group`, which the sweep configs set; else the experiment name; else the
Hydra sweep directory) and are named `{method}-{granularity}-{model}-{data}-s{seed}` unless `wandb.name` or the
caller names them. The resolved config is logged, with the Hydra job's overrides under `hydra_job`.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _slug(value: Any) -> str:
    return str(value).replace(":", "").replace("/", "_")


def _hydra_job() -> dict[str, Any] | None:
    """This process's Hydra job (overrides, number in its sweep, sweep directory), or None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        info: dict[str, Any] = {"name": hc.job.name, "overrides": list(hc.overrides.task)}
        if hc.mode == RunMode.MULTIRUN:
            info.update(num=hc.job.get("num"), sweep_dir=str(hc.sweep.dir), job_id=hc.job.get("id"))
        info["choices"] = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and v}
        return info
    except Exception:  # a config without a Hydra node is fine: the run just has less metadata
        return None


def run_label(cfg: DictConfig) -> str:
    """`{method}-{granularity}-{model}-{data}-s{seed}`, leaving out parts the config does not have."""
    job = _hydra_job() or {}
    choices = job.get("choices", {})
    method = OmegaConf.select(cfg, "method.name")
    granularity = OmegaConf.select(cfg, "method.granularity")
    model = OmegaConf.select(cfg, "model.name") or choices.get("model")
    data = choices.get("data") or OmegaConf.select(cfg, "data.name")
    seed = OmegaConf.select(cfg, "seed")
    parts = [method, _slug(granularity) if granularity is not None else None, model, data]
    label = "-".join(str(p) for p in parts if p not in (None, ""))
    return f"{label}-s{seed}" if seed is not None else label


def run_group(cfg: DictConfig) -> str | None:
    """The group of a sweep's runs: wandb.group, else experiment_name, else the Hydra sweep directory's name."""
    wb = cfg.get("wandb") or {}
    group = wb.get("group") or cfg.get("experiment_name")
    if group:
        return str(group)
    sweep_dir = (_hydra_job() or {}).get("sweep_dir")
    return os.path.basename(sweep_dir) if sweep_dir else None


def init_wandb(cfg: DictConfig, job_type: str, name: str | None = None, rank: int = 0, **extra: Any):
    """Start a wandb run for this stage, or return None when wandb is disabled or this is not rank 0.

    The API key is read by wandb from the environment or ~/.netrc; it is never put in a config or a file here.
    """
    wb = cfg.get("wandb")
    if rank != 0 or wb is None or not wb.get("enabled", False) or wb.get("mode") == "disabled":
        return None
    import wandb

    os.makedirs(wb.dir, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    job = _hydra_job()
    if job is not None:
        config["hydra_job"] = job
    kwargs: dict[str, Any] = {
        "project": wb.project,
        "entity": wb.get("entity"),
        "group": run_group(cfg),
        "job_type": job_type,
        "name": name or wb.get("name") or run_label(cfg),
        "dir": str(wb.dir),
        "mode": wb.mode,
        "tags": list(wb.get("tags") or []),
        "config": config,
        "reinit": "finish_previous",
        "settings": wandb.Settings(silent=True, x_disable_stats=True),
    }
    kwargs.update(extra)  # the caller's words win (id=..., resume=..., group=...)
    return wandb.init(**kwargs)
