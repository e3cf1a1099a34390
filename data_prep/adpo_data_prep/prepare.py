"""Stage 'prepare': a dataset (hub id or local JSONL, conf/data/) -> output_dir/{train,test}.jsonl of Problem records.

    adpo-prepare data=gsm8k                       # from the hub
    adpo-prepare data=gsm8k_local data.limit=50   # from ../shared/data, first 50 problems of each split

Writes one file per split the data config has (local MATH-500: test only) and manifest.json with the counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adpo.config import stage_main
from adpo.config_diff import check_manifest
from adpo.data.loaders import data_splits, load_problems, resolve_local_path, split_spec
from adpo.data.records import write_problems
from adpo.io import DataError
from adpo.manifest import identity, is_complete, mark_running, write_manifest
from adpo.tracking import log_stage_summary

log = logging.getLogger(__name__)
SPLITS = ("train", "test")


def data_inputs(data_cfg) -> list[str]:
    """What the prepared files depend on: local files (fingerprinted by content) and hub ids (by name)."""
    inputs = []
    if data_cfg.get("source") == "toy":  # generated from the config alone
        return inputs
    for split in data_splits(data_cfg):
        spec = split_spec(data_cfg, split)
        if spec["source"] == "local":
            inputs.append(str(resolve_local_path(spec["path"])))
        else:
            config = ",".join(spec["config"]) if isinstance(spec["config"], list) else spec["config"]
            inputs.append(f"hub:{spec['path']}:{config}:{spec['split'] or split}")
    return inputs


def made_for(config: Any, inputs: Mapping[str, str]) -> dict[str, Any]:
    """What prepared problems are made for (compared with a manifest's record): the identity and the sources."""
    return {**identity(config, "prepare"), "inputs": dict(inputs)}


def run(cfg: DictConfig) -> Path:
    output_dir = Path(cfg.output_dir)
    inputs = data_inputs(cfg.data)
    key = identity(cfg, "prepare")
    if is_complete(output_dir, key, inputs):
        log.info("prepare: %s is complete, skipping", output_dir)
        return output_dir
    # Problems prepared from other data or settings are never replaced: the stages after them were made from them.
    check_manifest(output_dir, made_for, cfg, inputs, option="paths.data", unfinished_is_waste=True)
    splits = data_splits(cfg.data)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"data.splits may name only {SPLITS}, got {unknown}")
    # Every split read and checked before any file is touched: a bad test split leaves the old train.jsonl in place.
    loaded = {split: load_problems(cfg.data, split) for split in splits}
    for split, problems in loaded.items():
        if not problems:
            raise DataError(f"data split {split!r} of {cfg.data.name!r} has no problems")
    mark_running(output_dir, "prepare", cfg, inputs, key=key)
    outputs = {}
    for split, problems in loaded.items():
        path = write_problems(output_dir / f"{split}.jsonl", problems)
        outputs[split] = {"file": path.name, "problems": len(problems)}
        if problems[0].dataset == "math":
            outputs[split]["levels"] = dict(sorted(Counter(str(p.level) for p in problems).items()))
            outputs[split]["subjects"] = dict(sorted(Counter(str(p.subject) for p in problems).items()))
        log.info("prepare: %d %s problems -> %s", len(problems), split, path)
    for split in SPLITS:  # a split left from an earlier run with other data must not pass for this one's
        if split not in splits and (output_dir / f"{split}.jsonl").exists():
            (output_dir / f"{split}.jsonl").unlink()
    write_manifest(output_dir, "prepare", cfg, inputs, outputs, key=key)
    log_stage_summary(cfg, "prepare", {split: {k: v for k, v in o.items() if k != "file"}
                                       for split, o in outputs.items()})
    return output_dir


main = stage_main("prepare")(run)

if __name__ == "__main__":
    main()
