"""Long generation runs written shard by shard, so that a killed run resumes where it stopped.

    rows = run_sharded(problems, process, out_dir, item_id=lambda p: p.id, shard_size=64,
                       fingerprint=config_hash(cfg), progress=cfg.progress)

`items` (with stable, unique ids) are cut in order into shards of `shard_size`; shard i is handed to
`process(items_of_shard_i, i)`, which returns that shard's rows (any number of JSON-able dicts: one per item, or n per
item). Each shard is written atomically as `out_dir/shard-00000.jsonl`, `shard-00001.jsonl`, ... A rerun skips every
shard whose file exists and computes only the missing ones. `out_dir/shards.json` records the plan: the items (their
count and a hash of their ids), the shard size, and what the rows were made for: the caller's `fingerprint`, a dict
of everything else that decides them (the stage's identity and inputs), stored whole with its hash, or a plain string.
Shards made for other items or another fingerprint are never deleted: the run stops with
adpo.config_diff.OutputConflict, naming what differs. Only shards of the same work cut at another shard size are
redone.

Seeding: derive a shard's seed from `seed + shard_index`, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar


from adpo.config_diff import check_made_for
from adpo.io import atomic_write_json, atomic_write_jsonl, iter_jsonl
from adpo.manifest import config_hash
from adpo.progress import Progress

log = logging.getLogger(__name__)

T = TypeVar("T")
PLAN = "shards.json"
SHARD_GLOB = "shard-*.jsonl"


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.jsonl"


def _plan(ids: list[str], shard_size: int, fingerprint: Mapping[str, Any] | str) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    plan = {"fingerprint": fingerprint if isinstance(fingerprint, str) else config_hash(fingerprint),
            "shard_size": shard_size, "num_items": len(ids), "num_shards": -(-len(ids) // shard_size),
            "ids_sha256": digest}
    if not isinstance(fingerprint, str):
        plan["made_for"] = dict(fingerprint)
    return plan


def _items(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {"count": plan.get("num_items"), "ids_sha256": plan.get("ids_sha256")}


def _made_for(plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a plan's shards were made for, items included (None when only the fingerprint's hash was recorded)."""
    made_for = plan.get("made_for", {"fingerprint": plan["fingerprint"]} if "fingerprint" in plan else None)
    return None if made_for is None else {**made_for, "items": _items(plan)}


def _recorded_made_for(stored: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the shards on disk were made for, in the form of _made_for(plan); None when it is unknown."""
    if "made_for" in stored or "made_for" not in plan:
        return _made_for(stored)
    if stored.get("fingerprint") == plan["fingerprint"]:
        # A plan from before configs were recorded, of this very config: only the items can differ.
        return _made_for({**stored, "made_for": plan["made_for"]})
    return None


def _refuse_other_work(out_dir: Path, shards: int, stored: Mapping[str, Any] | None, plan: dict[str, Any],
                       option: str | None) -> None:
    """Raise OutputConflict when the shards on disk were made for other items or another fingerprint."""
    stored = stored or {}
    check_made_for(out_dir, f"{shards} shard(s)", stored=_recorded_made_for(stored, plan), current=_made_for(plan),
                   stored_hash=stored.get("fingerprint"), current_hash=plan["fingerprint"], option=option)


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
    fingerprint: Mapping[str, Any] | str = "",
    progress: bool = True,
    desc: str = "generating",
    option: str | None = None,
    on_start: Callable[[], Any] | None = None,
    progress_every: float | None = None,
    figures: Callable[[list[dict]], Mapping[str, Any]] | None = None,
) -> list[dict]:
    """Process `items` shard by shard into `out_dir` (resuming), and return all rows in item order.

    `option`, the config key that names out_dir's stage directory, is offered in a conflict's message. `on_start`
    runs once the shards on disk are known to be this work's, before any is written or deleted (a stage marks its
    directory as running there, so that a refused run leaves the directory as it found it). A progress line is logged
    every `progress_every` seconds (adpo.progress), with `figures(rows written so far by this run)` in it."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = [str(item_id(item)) for item in items]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"item ids must be unique; repeated: {duplicates}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(ids, shard_size, fingerprint)
    stored = _read_plan(out_dir)
    written = sorted(out_dir.glob(SHARD_GLOB))
    if written:
        _refuse_other_work(out_dir, len(written), stored, plan, option)
    if on_start is not None:
        on_start()
    if written:
        if stored.get("shard_size") != shard_size:
            # The same work cut at another size: nothing made under another config is lost by redoing it.
            log.warning("%s: %d shard(s) of this work were cut at %d items; redoing them at %d", out_dir,
                        len(written), stored.get("shard_size"), shard_size)
            for path in written:
                path.unlink()
    if stored != json.loads(json.dumps(plan, default=str)):
        atomic_write_json(out_dir / PLAN, plan)

    shards = [list(items[i:i + shard_size]) for i in range(0, len(items), shard_size)]
    pending = [i for i in range(len(shards)) if not shard_path(out_dir, i).exists()]
    done_items = len(items) - sum(len(shards[i]) for i in pending)
    if done_items:
        log.info("%s: resuming, %d of %d shards already written", out_dir, len(shards) - len(pending), len(shards))
    new_rows: list[dict] = []
    with Progress(len(items), desc, "item", initial=done_items, bar=progress, every_s=progress_every) as bar:
        for index in pending:
            rows = list(process(shards[index], index))
            atomic_write_jsonl(shard_path(out_dir, index), rows)
            new_rows.extend(rows)
            bar.update(len(shards[index]), **(dict(figures(new_rows)) if figures else {}))
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
