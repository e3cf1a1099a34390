"""Run a stage as a Hydra sweep on SLURM, or print what would be submitted.

    python -m adpo.sweep train +sweep=paper_main --dry-run          # list jobs and the sbatch script, submit nothing
    python -m adpo.sweep train +sweep=paper_main hydra/launcher=slurm_train hydra.launcher.partition=gpu
    python -m adpo.sweep eval +sweep=granularity model=llama3_8b seed=0
    adpo-sweep --help                                                # stages, sweeps, launchers, examples

Exactly `adpo-<stage> -m <overrides>` (the same Hydra multirun, the same launcher configs), with
hydra/launcher=slurm when no launcher is given (slurm_train for the train stage: one DeepSpeed process per GPU, 8 per
node, so that the paper's global batch of 2 x 4 x 8 = 64 pairs holds). --dry-run swaps the launcher's class for
hydra_plugins.adpo_slurm.launcher.DryRunSlurmLauncher: the jobs are expanded, their configs composed (a bad override
fails here, not on the cluster) and their output directories made distinct with a run_tag where needed, or the sweep
refused (adpo.run_dirs, as for a real launch); nothing is submitted, only the sweep directory's multirun.yaml and
each job's config, resolved, in dry_run/job_<n>.yaml written.
"""

from __future__ import annotations

import importlib
import sys

from adpo.help import group_shorthand, sweep_help
from adpo.registry import STAGES as REGISTERED

# Stage name on the command line -> module with the Hydra entry point `main` (the registry's stages and the pipeline).
STAGES = {**{s.name: s.module for s in REGISTERED}, "pipeline": "adpo.pipeline"}
DRY_RUN_TARGET = "hydra.launcher._target_=hydra_plugins.adpo_slurm.launcher.DryRunSlurmLauncher"
# The launcher when the command line names none: training runs one task per GPU, every other stage one per node.
DEFAULT_LAUNCHERS = {"train": "slurm_train"}
USAGE = (f"usage: adpo-sweep STAGE [--dry-run] [HYDRA_OVERRIDES...]   (or python -m adpo.sweep; "
         f"STAGE: {', '.join(STAGES)})")


def hydra_argv(stage: str, args: list[str], dry_run: bool) -> list[str]:
    """The multirun command line of the stage's Hydra app (without the program name)."""
    overrides = group_shorthand([a for a in args if a not in ("-m", "--multirun")])
    if not any(a.startswith(("hydra/launcher=", "override hydra/launcher=")) for a in overrides):
        overrides.insert(0, f"hydra/launcher={DEFAULT_LAUNCHERS.get(stage, 'slurm')}")
    if dry_run:
        overrides.append(DRY_RUN_TARGET)
    return ["-m", *overrides]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    if argv[:1] in (["-h"], ["--help"]):
        print(sweep_help(USAGE, list(STAGES), DEFAULT_LAUNCHERS))
        raise SystemExit(0)
    if not argv or argv[0] not in STAGES:
        wrong = f"adpo-sweep: unknown stage {argv[0]!r}\n" if argv else ""
        print(f"{wrong}{USAGE}\n(adpo-sweep --help: the stages, sweeps, launchers and examples)", file=sys.stderr)
        raise SystemExit(2)
    stage, rest = argv[0], argv[1:]
    module = importlib.import_module(STAGES[stage])
    sys.argv = [f"adpo-{stage}", *hydra_argv(stage, rest, dry_run)]
    module.main()


if __name__ == "__main__":
    main()
