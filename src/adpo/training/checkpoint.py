"""Resumable DeepSpeed checkpoints and the final transformers-format model.

DeepSpeed writes a checkpoint's files first and its `latest` pointer last, so a run killed while saving resumes from
the previous checkpoint. The data order depends only on the seed and the step (see loop.py), so the step counter,
the engine's model/optimizer/scheduler states are all a resume needs.

`made_for.json` beside the checkpoints records the config they were made under (written before the first one):
checkpoints of another config are never resumed, pruned or overwritten (check_checkpoints raises OutputConflict).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from adpo.config_diff import check_made_for
from adpo.io import atomic_write_json
from adpo.manifest import config_hash

log = logging.getLogger(__name__)

TAG = re.compile(r"^step(\d+)$")
MADE_FOR = "made_for.json"


def tag_for(step: int) -> str:
    return f"step{step}"


def latest_step(ckpt_dir: Path) -> int | None:
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    match = TAG.match(latest.read_text().strip())
    return int(match.group(1)) if match else None


def holds_checkpoints(ckpt_dir: Path) -> bool:
    """Any checkpoint, even one whose save was cut short (its `latest` pointer not yet written)."""
    return ckpt_dir.is_dir() and any(TAG.match(p.name) or p.name == "latest" for p in ckpt_dir.iterdir())


def record_made_for(ckpt_dir: Path, made_for: Mapping[str, Any]) -> None:
    """Rank 0, before the first save: the config the checkpoints are made under, whole and as the hash they carry."""
    atomic_write_json(ckpt_dir / MADE_FOR, {"fingerprint": config_hash(made_for), "made_for": dict(made_for)})


def _client_state_hash(ckpt_dir: Path) -> str | None:
    """The config hash inside the newest checkpoint (for checkpoints written before made_for.json existed)."""
    step = latest_step(ckpt_dir)
    states = sorted((ckpt_dir / tag_for(step)).glob("*mp_rank_00_model_states.pt")) if step is not None else []
    if not states:
        return None
    # Memory-mapped: the hash is read without loading the weights.
    return torch.load(states[0], map_location="cpu", weights_only=False, mmap=True).get("config_hash")


def check_checkpoints(ckpt_dir: Path, made_for: Mapping[str, Any], *, option: str | None = None) -> None:
    """Raise OutputConflict when ckpt_dir holds checkpoints made under another config than `made_for`."""
    if not holds_checkpoints(ckpt_dir):
        return
    try:
        record = json.loads((ckpt_dir / MADE_FOR).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        record = {"fingerprint": _client_state_hash(ckpt_dir)}
    check_made_for(ckpt_dir, "training checkpoints", stored=record.get("made_for"), current=made_for,
                   stored_hash=record.get("fingerprint"), option=option)


def save(engine, ckpt_dir: Path, step: int, client_state: dict, *, keep: int, frozen_excluded: bool) -> None:
    """Save on every rank (each writes its partitions), then drop all but the newest `keep` checkpoints."""
    engine.save_checkpoint(str(ckpt_dir), tag=tag_for(step), client_state={**client_state, "step": step},
                           exclude_frozen_parameters=frozen_excluded)
    dist.barrier()
    if dist.get_rank() == 0 and keep > 0:
        steps = sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := TAG.match(p.name)) and p.is_dir())
        for old in steps[:-keep]:
            if old != step:
                shutil.rmtree(ckpt_dir / tag_for(old), ignore_errors=True)
    dist.barrier()


def resume(engine, ckpt_dir: Path, *, frozen_excluded: bool) -> dict | None:
    """Load the newest checkpoint into the engine; its client state (with "step"), or None if there is none."""
    if latest_step(ckpt_dir) is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), load_module_strict=not frozen_excluded)
    if path is None:
        raise RuntimeError(f"could not load the checkpoint in {ckpt_dir}")
    return client_state


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full (consolidated under ZeRO-3) module state dict on CPU at rank 0; None on the other ranks."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()  # every rank must call it
    if dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
