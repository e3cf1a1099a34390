"""The one registry of stages: the pipeline, `adpo-sweep`, the sbatch templates and the console scripts all read it.

A stage is a module with `run(cfg)` and a Hydra entry point `main()`, reading its primary config
`conf/<config>.yaml`. Its identity (what its manifest hashes) is its whole resolved config minus the keys in
`NEVER_HASHED` and the stage's own `not_hashed`: keys known not to change what it writes, either because they say
where or how to run, or because they belong to stages upstream whose outputs this stage fingerprints as inputs.
Anything else, including a key nobody has added yet, is part of the identity, so a new option reruns the stage.

This module is plain Python with no third-party imports: setup.py reads it to generate the console scripts.

    python -m adpo.registry module eval            # adpo_eval.evaluate (what the sbatch templates run)
    python -m adpo.registry chain method=cadpo     # the SLURM chain's stages for these overrides
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

# How tables name things: read by the aggregate stage from each run's manifest, never by what computes.
DISPLAY_ONLY = ("method.label", "method.family", "method.order", "method.main_granularity", "method.paper_name",
                "model.paper_name")
# Where or how to run, or how to show it: never what to compute. `paper_setup` is a table of values that reach the
# computing keys by interpolation (sampling.temperature); a stage hashes the value it reads, not the whole table.
NEVER_HASHED = ("hydra", "paths", "wandb", "pipeline", "progress", "progress_every", "input_dir", "output_dir",
                "run_name", "run_tag", "experiment_name", "launcher", "paper_setup", *DISPLAY_ONLY)

# Groups that configure one stage each: a stage that does not read them does not hash them.
_DATA_SIDE = ("sampling", "generation", "pairing", "criticality", "sft")
_TRAINING = ("method", "train", "deepspeed")
# Model keys that only training reads (generation has its own dtype and length settings) or only tables show.
_TRAINING_MODEL_KEYS = ("model.max_length", "model.max_prompt_length", "model.dtype")


@dataclass(frozen=True)
class Stage:
    name: str  # the command line's name: adpo-<name>, pipeline.stages, adpo-sweep <name>
    module: str  # run(cfg) and main()
    config: str  # conf/<config>.yaml
    not_hashed: tuple[str, ...] = ()  # top-level keys (or dotted paths) this stage's output does not depend on
    summary: str = ""
    # Bumped when the code changes what the stage writes from the same config and inputs (aggregate's table layout):
    # part of its identity, so that finished outputs of the older code are redone, by the stage and the pipeline.
    version: str = ""

    @property
    def script(self) -> str:
        return f"adpo-{self.name}"


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "adpo_data_prep.prepare", "prepare",
          not_hashed=("model", "seed", "eval", *_DATA_SIDE, *_TRAINING),
          summary="dataset (hub id or local JSONL) -> train/test Problem records"),
    Stage("sft", "adpo_data_prep.sft", "sft",
          not_hashed=("eval", "sampling", "generation", "pairing", "criticality", *_TRAINING, "sft.logps_chunk_size"),
          summary="toy task only: a tiny Llama trained from scratch into an imperfect base model"),
    Stage("sample", "adpo_data_prep.sample", "sample",
          not_hashed=("data", "seed", "eval", "pairing", "criticality", "sft", *_TRAINING, *_TRAINING_MODEL_KEYS),
          summary="n graded completions per train question (vLLM or HF), in resumable shards"),
    Stage("pairs", "adpo_data_prep.pairs", "pairs",
          not_hashed=("seed", "eval", "sampling", "generation", "criticality", "sft", *_TRAINING),
          summary="graded samples -> chosen/rejected pairs (the cDPO rule) + statistics"),
    Stage("weights", "adpo_data_prep.weights", "weights",
          not_hashed=("data", "seed", "eval", "sampling", "generation", "pairing", "sft", "samples_dir", *_TRAINING,
                      "criticality.logps_chunk_size", "criticality.gradient_checkpointing", "criticality.save_every"),
          summary="cDPO criticality: pairs + per-token weights from positive/negative LoRA models"),
    Stage("train", "adpo.train", "train",
          not_hashed=("data", "eval", *_DATA_SIDE, "method.pairs_dir", "train.reference_cache_dir",
                      "train.logps_chunk_size", "train.push_to_hub", "train.hub_model_id", "train.hub_private"),
          summary="pairs -> a policy trained with DPO/ADPO/cDPO/cADPO on DeepSpeed"),
    Stage("eval", "adpo_eval.evaluate", "eval",
          not_hashed=("seed", "sampling", "pairing", "criticality", "sft", "model_dir", "data_dir", *_TRAINING,
                      *_TRAINING_MODEL_KEYS),
          summary="a model -> per-problem predictions and accuracy on the test split"),
    Stage("aggregate", "adpo_eval.aggregate", "aggregate",
          not_hashed=("model", "data", "seed", "eval", *_DATA_SIDE, *_TRAINING),
          summary="finished eval runs -> tables (md/csv/tex), the plot, paper comparison", version="paper-layout-2"),
    Stage("analyze", "adpo_eval.analyze", "analyze",
          not_hashed=("model", "data", "seed", "eval", *_DATA_SIDE, *_TRAINING, "analyze.device", "analyze.batch_size"),
          summary="trained runs -> per-token implicit rewards at the first divergence and first error, tables, plots",
          version="statistics-2"),
    Stage("trajectory", "adpo_eval.trajectory", "trajectory",
          not_hashed=("model", "seed", "sampling", "pairing", "criticality", "sft", *_TRAINING, "trajectory.device",
                      "trajectory.batch_size", "trajectory.points_dir", "data_dir", "eval.limit", "eval.shard_size", "eval.grade_workers",
                      "eval.wandb_table"),
          summary="trained runs -> accuracy, sampled KL and margins at snapshots along training, matched comparisons"),
)

# Entry points that are not stages: the chain and the SLURM sweep front end.
TOOLS: dict[str, str] = {"pipeline": "adpo.pipeline", "sweep": "adpo.sweep"}


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; known: {', '.join(s.name for s in STAGES)}")


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def console_scripts() -> dict[str, str]:
    """adpo-<name> -> module:main, for every stage and tool."""
    scripts = {s.script: f"{s.module}:main" for s in STAGES}
    scripts.update({f"adpo-{name}": f"{module}:main" for name, module in TOOLS.items()})
    return scripts


def _chain(overrides: list[str]) -> list[str]:
    """The stages one configuration's SLURM chain runs: the weights stage only for methods that use weights."""
    from adpo.config import compose

    cfg = compose("train", overrides)
    stages = ["prepare", "sample", "pairs"]
    if bool(cfg.method.use_weights):
        stages.append("weights")
    return stages + ["train", "eval"]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "module":
        try:
            print(stage(argv[1]).module if argv[1] not in TOOLS else TOOLS[argv[1]])
        except KeyError as e:
            print(e.args[0], file=sys.stderr)
            raise SystemExit(2) from None
    elif argv and argv[0] == "chain":
        print(" ".join(_chain(argv[1:])))
    elif argv and argv[0] == "stages":
        print(" ".join(stage_names()))
    else:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)


if __name__ == "__main__":
    main()
