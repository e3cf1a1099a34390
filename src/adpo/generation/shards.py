"""Long generation runs written shard by shard, so that a killed run resumes where it stopped.

    rows = run_sharded(problems, process, out_dir, item_id=lambda p: p.id, shard_size=64,
                       fingerprint=config_hash(cfg), progress=cfg.progress)

`items` (with stable, unique ids) are cut in order into shards of `shard_size`; shard i is handed to
`process(items_of_shard_i, i)`, which returns that shard's rows (any number of JSON-able dicts: one per item, or n per
item). Each shard is written atomically as `out_dir/shard-00000.jsonl`, `shard-00001.jsonl`, ... A rerun skips every
shard whose file exists and computes only the missing ones. `out_dir/shards.json` records the plan (item ids, shard
size, and a caller-given `fingerprint` of everything else that decides the rows, e.g. the config hash): when it no
longer matches, the old shards were made for other work and are deleted before starting over.

Seeding: derive a shard's seed from `seed + shard_index`, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from adpo.io import atomic_write_json, atomic_write_jsonl, iter_jsonl

log = logging.getLogger(__name__)

T = TypeVar("T")
PLAN = "shards.json"
SHARD_GLOB = "shard-*.jsonl"


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.jsonl"


def _plan(ids: list[str], shard_size: int, fingerprint: str) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return {"fingerprint": fingerprint, "shard_size": shard_size, "num_items": len(ids),
            "num_shards": -(-len(ids) // shard_size), "ids_sha256": digest}


def _read_plan(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / PLAN).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_sharded(
    items: Sequence[T],
    process: Callable[[list[T], int], Sequence[Mapping[str, Any]]],
    out_dir: str | Path,
    *,
    item_id: Callable[[T], str],
    shard_size: int,
    fingerprint: str = "",
    progress: bool = True,
    desc: str = "generating",
) -> list[dict]:
    """Process `items` shard by shard into `out_dir` (resuming), and return all rows in item order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = [str(item_id(item)) for item in items]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"item ids must be unique; repeated: {duplicates}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(ids, shard_size, fingerprint)
    if _read_plan(out_dir) != plan:
        stale = sorted(out_dir.glob(SHARD_GLOB))
        if stale:
            log.warning("%s: %d shard(s) were written for other items or settings; starting over", out_dir,
                        len(stale))
        for path in stale:
            path.unlink()
        atomic_write_json(out_dir / PLAN, plan)

    shards = [list(items[i:i + shard_size]) for i in range(0, len(items), shard_size)]
    pending = [i for i in range(len(shards)) if not shard_path(out_dir, i).exists()]
    done_items = len(items) - sum(len(shards[i]) for i in pending)
    if done_items:
        log.info("%s: resuming, %d of %d shards already written", out_dir, len(shards) - len(pending), len(shards))
    with tqdm(total=len(items), initial=done_items, desc=desc, unit="item", disable=not progress,
              dynamic_ncols=True) as bar:
        for index in pending:
            rows = list(process(shards[index], index))
            atomic_write_jsonl(shard_path(out_dir, index), rows)
            bar.update(len(shards[index]))
    return list(iter_shard_rows(out_dir, plan["num_shards"]))


def iter_shard_rows(out_dir: str | Path, num_shards: int | None = None) -> Iterator[dict]:
    """The rows of all shards in order; with num_shards, a missing shard is an error (the run is unfinished)."""
    out_dir = Path(out_dir)
    if num_shards is None:
        paths = sorted(out_dir.glob(SHARD_GLOB))
    else:
        paths = [shard_path(out_dir, i) for i in range(num_shards)]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{out_dir}: unfinished run, missing {', '.join(missing[:5])}")
    for path in paths:
        for _, row in iter_jsonl(path):
            yield row
