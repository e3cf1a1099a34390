"""wandb for every stage: offline files by default, online when the user asks for it; only rank 0 logs.

Runs of one sweep share a group (`wandb.group`, which the sweep configs set; else the experiment name; else the
Hydra sweep directory). A training run and its evaluation are both named `{method}-{granularity}-{model}-{data}-s{seed}`
(job types train and eval, tagged with the run's name; the eval run records the train run's id as `train_run_id`);
the base model's evaluation is `base-{model}-{data}`; the data stages and aggregate are `{stage}-{model}-{data}`;
`wandb.name` or the caller may name a run otherwise. The resolved config is logged, with the Hydra job's overrides
under `hydra_job`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


BASE_RUN = "base"  # run_name of the base model's evaluation (adpo.pipeline)
# Stages with one run per trained policy; the others have one per (model, data).
PER_POLICY = ("train", "eval")


def _model_and_data(cfg: DictConfig) -> list[Any]:
    choices = (_hydra_job() or {}).get("choices", {})
    return [OmegaConf.select(cfg, "model.name") or choices.get("model"),
            choices.get("data") or OmegaConf.select(cfg, "data.name")]


def _join(parts: list[Any]) -> str:
    return "-".join(str(p) for p in parts if p not in (None, ""))


def run_label(cfg: DictConfig, job_type: str = "train") -> str:
    """`{method}-{granularity}-{model}-{data}-s{seed}` for a policy's train and eval runs (leaving out parts the
    config does not have), `base-{model}-{data}` for the base model's eval, `{job_type}-{model}-{data}` else."""
    if job_type not in PER_POLICY:
        return _join([job_type, *_model_and_data(cfg)])
    if OmegaConf.select(cfg, "run_name", default=None) == BASE_RUN:
        return _join([BASE_RUN, *_model_and_data(cfg)])
    method = OmegaConf.select(cfg, "method.name")
    granularity = OmegaConf.select(cfg, "method.granularity")
    seed = OmegaConf.select(cfg, "seed")
    label = _join([method, _slug(granularity) if granularity is not None else None, *_model_and_data(cfg)])
    return f"{label}-s{seed}" if seed is not None else label


def run_tags(cfg: DictConfig, job_type: str) -> list[str]:
    """The configured tags, plus the run's name (`run_name`) for a policy's train and eval runs: wandb's filter for
    one run's curves and accuracy together."""
    tags = [str(t) for t in ((cfg.get("wandb") or {}).get("tags") or [])]
    if job_type in PER_POLICY:
        run_name = OmegaConf.select(cfg, "run_name", default=None)
        if run_name:
            tags.append(str(run_name))
    return list(dict.fromkeys(tags))


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
        "name": name or wb.get("name") or run_label(cfg, job_type),
        "dir": str(wb.dir),
        "mode": wb.mode,
        "tags": run_tags(cfg, job_type),
        "config": config,
        "reinit": "finish_previous",
        "settings": wandb.Settings(silent=True, x_disable_stats=True),
    }
    kwargs.update(extra)  # the caller's words win (id=..., resume=..., group=...)
    return wandb.init(**kwargs)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested statistics as wandb summary keys (`a/b/c`), keeping numbers and strings."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[name] = value
    return out


EXAMPLES_LOGGED = 50  # rows of a data stage's output shown in wandb: enough to read, not the whole file


def log_stage_summary(cfg: DictConfig, job_type: str, summary: Mapping[str, Any],
                      rows: Sequence[Mapping[str, Any]] = (), columns: Sequence[str] = ()) -> None:
    """A data stage's run: its statistics as the run's summary (and history step 0, for charts across runs), and
    the first EXAMPLES_LOGGED rows' `columns` as a table (`{job_type}/examples`)."""
    run = init_wandb(cfg, job_type=job_type)
    if run is None:
        return
    flat = flatten(summary, f"{job_type}/")
    run.summary.update(flat)
    numbers = {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        run.log(numbers, step=0)
    if rows and columns:
        import wandb

        data = [[row.get(c) for c in columns] for row in rows[:EXAMPLES_LOGGED]]
        run.log({f"{job_type}/examples": wandb.Table(columns=list(columns), data=data)}, step=0)
    run.finish()


def log_tables_and_images(cfg: DictConfig, job_type: str, tables: Mapping[str, Any],
                          images: Mapping[str, Any] = ()) -> None:
    """One run named `<job_type>-<experiment>` for a stage that summarises many runs (aggregate, analyze,
    trajectory): each pandas table as `tables/<name>` (cells as strings, as shown), each image file as
    `plots/<name>`."""
    run = init_wandb(cfg, job_type=job_type, name=f"{job_type}-{cfg.get('experiment_name')}")
    if run is None:
        return
    import wandb

    logged: dict[str, Any] = {f"tables/{name}": wandb.Table(dataframe=frame.astype(str))
                              for name, frame in tables.items()}
    logged.update({f"plots/{name}": wandb.Image(str(path)) for name, path in dict(images).items()})
    run.log(logged)
    run.finish()
