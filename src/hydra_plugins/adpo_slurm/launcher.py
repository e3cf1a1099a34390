"""Hydra's submitit launchers, plus what a DeepSpeed stage needs on each task, plus a dry run.

`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml) is hydra_submitit_launcher's `submitit_slurm` with its
`_target_` pointing here. The only change on the nodes: when a job runs several tasks (nodes x tasks_per_node > 1,
one per GPU), each task gets the torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) exactly as `torchrun` would set it, so `deepspeed.init_distributed()` in the train stage just works.

`DryRunSlurmLauncher` (`hydra/launcher=slurm_dry_run`, or `python -m adpo.sweep --dry-run`) submits nothing: it
prints every job's overrides and the sbatch script submitit would submit for the array.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as stock
from omegaconf import OmegaConf


def export_torch_distributed_env() -> None:
    """In a multi-task SLURM (or submitit-local) job, set the variables torchrun would set; never overwrite them."""
    import submitit

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    if submitit.JobEnvironment().num_tasks <= 1:
        return
    # Every task must use the device of its LOCAL_RANK among all the node's GPUs, as under torchrun.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class _TorchDistributedTasks:
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        export_torch_distributed_env()
        return super().__call__(*args, **kwargs)  # type: ignore[misc]


class SlurmLauncher(_TorchDistributedTasks, stock.SlurmLauncher):
    pass


class LocalLauncher(_TorchDistributedTasks, stock.LocalLauncher):
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


class DryRunSlurmLauncher(stock.SlurmLauncher):
    """Prints what `hydra/launcher=slurm` would submit, and submits nothing."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        out = sys.stdout
        n = len(job_overrides)
        print(f"DRY RUN: {n} job(s) would be submitted to SLURM (nothing submitted)", file=out)
        print(f"sweep dir: {self.config.hydra.sweep.dir}", file=out)
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            print(f"job {idx}: {' '.join(filter_overrides(overrides))}", file=out)
        resources = {k: self.params.get(k) for k in RESOURCE_KEYS if self.params.get(k) not in (None, {}, [])}
        print("resources: " + " ".join(f"{k}={v}" for k, v in resources.items()), file=out)
        print(f"--- sbatch script ({'array of ' + str(n) + ' tasks' if n > 1 else 'one job'}) ---", file=out)
        print(render_sbatch(self.params, n), file=out)
        print("--- end ---", file=out, flush=True)
        return []


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
