"""A stage's record of what it did: resolved config and its hash, input fingerprints, outputs, status.

Written last, atomically, into the stage's output directory: a directory with a complete manifest whose config hash
and input fingerprints match is finished work and can be skipped; anything else is redone.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adpo.io import atomic_write_json, file_sha256

MANIFEST = "manifest.json"
# Keys that say where or how to run, not what to compute: they do not change a stage's result.
VOLATILE_KEYS = ("hydra", "wandb", "launcher", "progress", "pipeline")


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def relevant(cfg: DictConfig, stage: str, *keys: str) -> dict[str, Any]:
    """The part of `cfg` a stage's output depends on (dotted keys), to hash instead of the whole config: a stage
    upstream of training must stay finished work when only the method, the training seed or a path changes."""
    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value

    return {"stage": stage, **{key: plain(OmegaConf.select(cfg, key)) for key in keys}}


def fingerprint(path: str | Path) -> str:
    """A stage directory is identified by its manifest; a plain file by its content; anything else by its name."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return "manifest:" + file_sha256(path / MANIFEST)[:16]
    if path.is_file():
        return "sha256:" + file_sha256(path)[:16]
    return "name:" + str(path)


def write_manifest(
    output_dir: str | Path,
    stage: str,
    cfg: DictConfig | Mapping[str, Any],
    inputs: Sequence[str | Path] = (),
    outputs: Mapping[str, Any] | None = None,
    status: str = "complete",
    key: Mapping[str, Any] | None = None,
) -> Path:
    """`key` (see relevant()) is what is hashed when given; the whole resolved config is recorded either way."""
    output_dir = Path(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    record = {
        "stage": stage,
        "status": status,
        "config_hash": config_hash(cfg if key is None else key),
        "inputs": {str(p): fingerprint(p) for p in inputs},
        "outputs": dict(outputs or {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": resolved,
    }
    return atomic_write_json(output_dir / MANIFEST, record)


def read_manifest(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(output_dir: str | Path, cfg: DictConfig | Mapping[str, Any], inputs: Sequence[str | Path] = ()) -> bool:
    record = read_manifest(output_dir)
    return (
        record is not None
        and record.get("status") == "complete"
        and record.get("config_hash") == config_hash(cfg)
        and record.get("inputs") == {str(p): fingerprint(p) for p in inputs}
    )
