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

from omegaconf import DictConfig, ListConfig, OmegaConf

from adpo.io import atomic_write_json, file_sha256

MANIFEST = "manifest.json"
def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(cfg: DictConfig, stage: str, also_not_hashed: Sequence[str] = ()) -> dict[str, Any]:
    """What a stage's manifest hashes: its whole resolved config minus the keys the registry names as not changing
    its output (adpo.registry: NEVER_HASHED and the stage's not_hashed), minus `also_not_hashed`. A key nobody
    listed, a new option say, is hashed: changing it reruns the stage.

    Each kept top-level node is resolved on its own, so that a dropped key that cannot be resolved here (a path made
    of ${hydra:...}, say) is never touched."""
    from adpo.registry import NEVER_HASHED
    from adpo.registry import stage as registered

    dropped = (*NEVER_HASHED, *registered(stage).not_hashed, *also_not_hashed)
    top = {key for key in dropped if "." not in key}
    data: dict[str, Any] = {}
    for key in cfg:
        if key in top:
            continue
        value = cfg[key]
        data[str(key)] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) \
            else value
    for key in dropped:
        *parents, leaf = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if parents and isinstance(node, dict):
            node.pop(leaf, None)
    version = registered(stage).version
    return {"stage": stage, "config": data, **({"version": version} if version else {})}


# Files above this size are identified by their size, first and last chunks: hashing a 16 GB checkpoint whole would
# cost the pairs stage minutes for a record that only has to tell models apart.
WHOLE_HASH_LIMIT = 1 << 30
EDGE_BYTES = 16 << 20


def model_identity(name_or_path: str | Path) -> dict[str, str]:
    """What a data file records of the model it came from: never where it was (two roots must write the same bytes).
    A local directory: its name and a digest of its files' names and contents; anything else (a hub id): the name."""
    path = Path(str(name_or_path))
    if not path.is_dir():
        return {"name": str(name_or_path)}
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        size = file.stat().st_size
        if size <= WHOLE_HASH_LIMIT:
            digest.update(file_sha256(file).encode())
        else:
            with file.open("rb") as f:
                head = f.read(EDGE_BYTES)
                f.seek(size - EDGE_BYTES)
                digest.update(f"{size}:".encode() + hashlib.sha256(head + f.read()).hexdigest().encode())
    return {"name": path.name, "sha256": digest.hexdigest()[:16]}


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
    """`key` (see identity()) is what is hashed when given; the whole resolved config is recorded either way."""
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


def mark_running(output_dir: str | Path, stage: str, cfg: DictConfig | Mapping[str, Any],
                 inputs: Sequence[str | Path] = (), key: Mapping[str, Any] | None = None) -> Path:
    """Called by a stage once it knows the directory is its own (after its conflict check) and before it touches any
    output: a manifest left complete by an earlier run now says "running", so that a stage that fails half-way never
    leaves old and new files side by side under a manifest a rerun would trust and skip."""
    return write_manifest(output_dir, stage, cfg, inputs, status="running", key=key)


def read_manifest(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):  # half-written or corrupt: not a record of finished work
        return None


def is_complete(output_dir: str | Path, cfg: DictConfig | Mapping[str, Any], inputs: Sequence[str | Path] = ()) -> bool:
    record = read_manifest(output_dir)
    return (
        record is not None
        and record.get("status") == "complete"
        and record.get("config_hash") == config_hash(cfg)
        and record.get("inputs") == {str(p): fingerprint(p) for p in inputs}
    )
