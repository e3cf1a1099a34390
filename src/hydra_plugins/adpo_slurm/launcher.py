"""Hydra's submitit launchers, plus what a DeepSpeed stage needs on each task, plus a dry run.

`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml) is hydra_submitit_launcher's `submitit_slurm` with its
`_target_` pointing here. The only change on the nodes: when a job runs several tasks (nodes x tasks_per_node > 1,
one per GPU), each task gets the torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) exactly as `torchrun` would set it, so `deepspeed.init_distributed()` in the train stage just works.

`DryRunSlurmLauncher` (`hydra/launcher=slurm_dry_run`, or `python -m adpo.sweep --dry-run`) submits nothing: it
prints every job's overrides and directory and the sbatch script submitit would submit for the array.

`SerialLauncher` (`hydra/launcher=serial`, the default of a plain `adpo-<stage> -m`) is Hydra's basic launcher: the
jobs one after another in this process.

Every one of them first makes the jobs' output directories distinct (adpo.run_dirs): jobs that would share one get a
run_tag, or the sweep is refused, naming them, before any job is submitted or run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as stock
from omegaconf import OmegaConf

from adpo.registry import STAGES
from adpo.io import atomic_write_text
from adpo.run_dirs import OutputDirCollision, PlannedJob, hydra_config_of, plan_output_dirs
from adpo.validation import validate_jobs


def export_torch_distributed_env() -> None:
    """In a multi-task SLURM (or submitit-local) job, set the variables torchrun would set; never overwrite them."""
    import submitit

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    if submitit.JobEnvironment().num_tasks <= 1:
        return
    # Every task must use the device of its LOCAL_RANK among all the node's GPUs, as under torchrun.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def compose_once_per_job(loader: Any) -> None:
    """Hydra's sweeper composes every job to validate the batch, then the launchers here compose them again to plan
    the output directories (~0.5 s a job: a 32-job sweep's dry run took 18 s). The two share one config loader: the
    planning takes the validation's config (which only read it) instead of composing it again. Later calls compose
    afresh (the planning marks a config's hydra node read-only, and the serial launcher writes the job's id there)."""
    if getattr(loader, "_adpo_compose_once", False):
        return
    compose = loader.load_sweep_config
    validated: dict[tuple, Any] = {}

    def load_sweep_config(master_config: Any, sweep_overrides: list[str]) -> Any:
        key = (id(master_config), tuple(sweep_overrides))
        if key in validated:
            return validated.pop(key)
        validated[key] = compose(master_config, list(sweep_overrides))
        return validated[key]

    loader.load_sweep_config = load_sweep_config
    loader._adpo_compose_once = True


class _TorchDistributedTasks:
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        export_torch_distributed_env()
        return super().__call__(*args, **kwargs)  # type: ignore[misc]


class _DistinctOutputDirs:
    """Rewrites the jobs' overrides so that no two share an output directory (or refuses them) before launching."""

    config: Any
    hydra_context: Any
    task_function: Any

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)  # type: ignore[misc]
        compose_once_per_job(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self.plan_jobs(job_overrides, initial_job_idx)
        return super().launch([job.overrides for job in jobs], initial_job_idx)  # type: ignore[misc]

    def plan_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[PlannedJob]:
        """Each job's overrides (with a run_tag where needed), its config as the job will compose it, its directory."""
        loader = self.hydra_context.config_loader
        try:
            return plan_output_dirs(self.stage_name(), [list(o) for o in job_overrides],
                                    lambda overrides: loader.load_sweep_config(self.config, overrides),
                                    explain=lambda line: print(line, flush=True), first_index=initial_job_idx,
                                    # every job's settings, before anything is submitted (a ConfigError: Hydra
                                    # prints its message alone)
                                    validate=lambda jobs: validate_jobs(self.stage_name(), jobs, initial_job_idx))
        except OutputDirCollision as e:
            # A user's mistake, not a bug: the message says it all, without Hydra's traceback around it.
            raise SystemExit(f"Refused, nothing launched: {e}") from None

    def stage_name(self) -> str:
        """The registry's name of the stage being swept (eval, not its module's `evaluate`)."""
        by_module = {s.module: s.name for s in STAGES}
        return by_module.get(getattr(self.task_function, "__module__", ""), str(self.config.hydra.job.name))


class SlurmLauncher(_DistinctOutputDirs, _TorchDistributedTasks, stock.SlurmLauncher):
    pass


class LocalLauncher(_DistinctOutputDirs, _TorchDistributedTasks, stock.LocalLauncher):
    pass


class SerialLauncher(_DistinctOutputDirs, BasicLauncher):
    pass


def executor_parameters(params: dict[str, Any], executor: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the launcher config the way hydra_submitit_launcher does: (AutoExecutor init args, update_parameters)."""
    init_keys = {"max_num_timeout"}
    init = {"folder": params["submitit_folder"]}
    init.update({f"{executor}_{k}": v for k, v in params.items() if k in init_keys})
    base = set(OmegaConf.structured(stock.BaseQueueConf).keys())
    update = {
        (k if k in base else f"{executor}_{k}"): v
        for k, v in params.items()
        if k not in init_keys | {"submitit_folder"}
    }
    return init, update


def render_sbatch(params: dict[str, Any], num_jobs: int) -> str:
    """The sbatch script submitit would submit for `num_jobs` jobs (an array when more than one).

    Works on any machine: submitit's SlurmExecutor refuses to start where `srun` is missing, a check that matters for
    submitting, not for showing a laptop user what would be submitted.
    """
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    class RenderOnlySlurmExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

    init, update = executor_parameters(params, "slurm")
    executor = RenderOnlySlurmExecutor(init["folder"], max_num_timeout=init.get("slurm_max_num_timeout", 3))
    # As submitit.AutoExecutor.update_parameters: generic names (timeout_min, mem_gb, ...) are converted, the
    # "slurm_"-prefixed ones are sbatch's own.
    generic = {k: v for k, v in update.items() if not k.startswith("slurm_")}
    specific = {k.removeprefix("slurm_"): v for k, v in update.items() if k.startswith("slurm_")}
    executor._internal_update_parameters(**executor._convert_parameters(generic), **specific)
    extra = {"map_count": num_jobs} if num_jobs > 1 else {}
    return _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder,
                               **executor.parameters, **extra)


class DryRunSlurmLauncher(_DistinctOutputDirs, stock.SlurmLauncher):
    """Prints what `hydra/launcher=slurm` would submit, and submits nothing."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        out = sys.stdout
        n = len(job_overrides)
        jobs = self.plan_jobs(job_overrides, initial_job_idx)  # the same refusal as a real launch
        print(f"DRY RUN: {n} job(s) would be submitted to SLURM (nothing submitted)", file=out)
        print(f"sweep dir: {self.config.hydra.sweep.dir}", file=out)
        configs = Path(str(self.config.hydra.sweep.dir)) / "dry_run"
        for idx, job in enumerate(jobs, start=initial_job_idx):
            print(f"job {idx}: {' '.join(filter_overrides(job.overrides))}", file=out)
            print(f"  output_dir: {job.output_dir}", file=out)
            write_resolved_config(job, configs / f"job_{idx}.yaml")
        print(f"each job's config, resolved: {configs}/job_<n>.yaml", file=out)
        resources = {k: self.params.get(k) for k in RESOURCE_KEYS if self.params.get(k) not in (None, {}, [])}
        print("resources: " + " ".join(f"{k}={v}" for k, v in resources.items()), file=out)
        if self.stage_name() == "train":
            print(global_batch(jobs[0], self.params), file=out)
        print(f"--- sbatch script ({'array of ' + str(n) + ' tasks' if n > 1 else 'one job'}) ---", file=out)
        print(render_sbatch(self.params, n), file=out)
        print("--- end ---", file=out, flush=True)
        return []


def write_resolved_config(job: PlannedJob, path: Path) -> None:
    """The config the job's stage will get (without the hydra node), every interpolation resolved."""
    with hydra_config_of(job.config):
        data = {}
        for key in job.config:
            if key != "hydra":
                value = job.config[key]
                data[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(data)))


def global_batch(job: PlannedJob, params: dict[str, Any]) -> str:
    """Pairs per optimizer step: one micro-batch per process and accumulation step, one process per SLURM task."""
    micro, accumulation = job.select("train.micro_batch_size"), job.select("train.gradient_accumulation_steps")
    processes = int(params.get("nodes") or 1) * int(params.get("tasks_per_node") or 1)
    return (f"global batch: {micro} x {accumulation} x {processes} processes = {micro * accumulation * processes} "
            "(train.micro_batch_size x train.gradient_accumulation_steps x nodes x tasks_per_node)")


RESOURCE_KEYS = (
    "partition",
    "account",
    "qos",
    "timeout_min",
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "constraint",
    "gres",
    "array_parallelism",
    "max_num_timeout",
    "signal_delay_s",
    "additional_parameters",
)
