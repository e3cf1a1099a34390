"""Stage 'train': pairs.jsonl -> a policy trained with DPO / ADPO / cDPO / cADPO on DeepSpeed -> output_dir/model.

    adpo-train method=adpo method.granularity=static:8                       # one process (CPU or one GPU)
    python -m torch.distributed.run --nproc_per_node 8 -m adpo.train deepspeed=zero3 method=cadpo ...
    deepspeed --num_gpus 8 --module adpo.train deepspeed=zero2 ...

Outputs: output_dir/model/ (the LoRA adapter, or full weights: adpo.export; a model card beside it), checkpoints/
(resumable), metrics.jsonl, manifest.json.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from adpo.config import stage_main
from adpo.manifest import identity, is_complete, mark_running, write_manifest
from adpo.training.pairs_data import PAIRS_FILE

log = logging.getLogger(__name__)


def _inputs(cfg: DictConfig) -> list[Path]:
    inputs = [Path(cfg.input_dir) / PAIRS_FILE]
    if Path(str(cfg.model.name_or_path)).is_dir():
        inputs.append(Path(str(cfg.model.name_or_path)))
    return inputs


def run(cfg: DictConfig) -> dict | None:
    output_dir = Path(cfg.output_dir)
    if is_complete(output_dir, identity(cfg, "train"), _inputs(cfg)):
        log.info("train: %s is complete, skipping", output_dir)
        return None
    from adpo.training.loop import train

    # Once set up (pairs read and checked, checkpoints found ours), before anything is written: a finished manifest
    # of an earlier run no longer vouches for a directory this run is changing.
    summary = train(cfg, on_start=lambda: mark_running(output_dir, "train", cfg, _inputs(cfg),
                                                       key=identity(cfg, "train")))
    if summary["rank"] == 0:
        write_manifest(output_dir, "train", cfg, _inputs(cfg), key=identity(cfg, "train"),
                       outputs={"model": "model", "metrics": "metrics.jsonl", **summary})
    return summary


def _prepare_argv() -> None:
    """Launcher conventions before Hydra parses the command line.

    The `deepspeed` launcher passes --local_rank=N (Hydra would reject it); ranks other than 0 keep Hydra's run
    directory and log file to themselves, so that many ranks never write the same files.
    """
    argv, args = [], iter(sys.argv[1:])
    for arg in args:
        if arg.startswith("--local_rank"):
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "0")
            os.environ.setdefault("LOCAL_RANK", value)
            continue
        argv.append(arg)
    if int(os.environ.get("RANK", "0")) != 0:
        argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.run.dir=."]
    sys.argv[1:] = argv


_main = stage_main("train")(run)


def main() -> None:
    _prepare_argv()
    try:
        _main()
    finally:
        # The interpreter's last garbage collection walks every object torch, DeepSpeed and transformers created
        # (seconds per process); the process is ending, so nothing is left to collect.
        gc.freeze()


if __name__ == "__main__":
    main()
