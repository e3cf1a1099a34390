"""Work made under another config is never deleted or overwritten: the stage stops with OutputConflict.

Everything a stage keeps for a later run (sample and eval shards, train and sft checkpoints, cDPO adapters, a
manifest, finished or running) is stored with what it was made for: the identity dict the stage hashes (see
adpo.manifest.identity), plus the inputs or items where they decide the work. A rerun that finds work made for
something else stops, and the message names the directory, the keys that differ as `key: old -> new` lines, and
what to do. Keys outside what the work is made for (paths, wandb, progress, a stage's bookkeeping) never conflict.

    check_manifest(output_dir, made_for, cfg, inputs, option="paths.samples")   # a manifest's recorded config
    check_made_for(ckpt_dir, "an sft checkpoint", stored=state.get("made_for"), current=key,
                   stored_hash=state.get("config_hash"))                          # any other record
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from adpo.manifest import config_hash, fingerprint, read_manifest

MAX_LINES = 8
MAX_VALUE = 80
_MISSING = object()
_LONG_HASH = re.compile(r"[0-9a-f]{32,}")


class OutputConflict(RuntimeError):
    """A stage's output directory holds work made under a different config; the stage stopped without touching it."""


def _key(prefix: str, key: str) -> str:
    if "/" in key or "." in key:  # a path (an input's name) reads better whole
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys. An identity's top-level "config" is left out of the names, so that keys read as
    they are typed on the command line (model.name_or_path, not config.model.name_or_path)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = "" if not prefix and key == "config" and isinstance(value, Mapping) else _key(prefix, str(key))
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def shorten(value: Any, width: int = MAX_VALUE) -> str:
    """A value on one short line; the middle goes first, since a path's end and a hash's start say the most."""
    if value is _MISSING:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if _LONG_HASH.fullmatch(text):
        return text[:12] + "…"
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return text[:half] + "…" + text[-(width - 1 - half):]


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = MAX_LINES) -> list[str]:
    """`key: old -> new` for every key whose value differs, sorted; at most `limit` lines, then a count."""
    # Compared as JSON, as they are hashed and stored: a tuple and a list, or 1 and 1.0 read back, are the same.
    a, b = (flatten(json.loads(json.dumps(d, sort_keys=True, default=str))) for d in (old, new))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))
    lines = [f"{k}: {shorten(a.get(k, _MISSING))} -> {shorten(b.get(k, _MISSING))}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"... and {len(keys) - limit} more")
    return lines


def conflict_message(directory: str | Path, what: str, lines: list[str], option: str | None = None) -> str:
    choose = "output_dir=<another directory>" + (f", or {option}=<another directory>" if option else "")
    return (f"{directory} holds {what} made under a different config; this run stops rather than delete or "
            "overwrite it.\nstored -> this run:\n" + "".join(f"  {line}\n" for line in lines)
            + f"To go on, choose another output directory ({choose}), or delete {directory} yourself if that work "
            "is no longer needed.")


def check_made_for(directory: str | Path, what: str, *, stored: Mapping[str, Any] | None, current: Mapping[str, Any],
                   stored_hash: str | None = None, current_hash: str | None = None, option: str | None = None) -> None:
    """Raise OutputConflict unless the work in `directory` was made for `current`.

    `stored` is what the work was recorded as made for; None when only a hash (`stored_hash`, to compare with
    `current_hash`, by default current's hash) was kept, by a version that did not record configs: the same hash is
    then the same work, and any other is a conflict whose stored config is unknown."""
    if stored is not None:
        if config_hash(stored) == config_hash(current):
            return
        lines = differences(stored, current) or [f"fingerprint: {config_hash(stored)} -> {config_hash(current)}"]
    else:
        current_hash = current_hash or config_hash(current)
        if stored_hash is not None and stored_hash == current_hash:
            return
        lines = ["the stored config is unknown: this directory was written before configs were recorded with the "
                 "work", f"fingerprint: {stored_hash or '(none)'} -> {current_hash}"]
    raise OutputConflict(conflict_message(directory, what, lines, option))


def stored_config(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resolved config a manifest recorded (a copy); manifests that recorded the identity itself (the sft
    stage's) give its config."""
    config = record.get("config")
    if not isinstance(config, Mapping):
        return None
    if set(config) == {"stage", "config"} and isinstance(config["config"], Mapping):
        config = config["config"]
    return copy.deepcopy(dict(config))


def check_manifest(output_dir: str | Path, made_for: Callable[[Any, Mapping[str, str]], Mapping[str, Any]], cfg: Any,
                   inputs: Sequence[str | Path] = (), *, option: str | None = None,
                   unfinished_is_waste: bool = False) -> None:
    """Raise OutputConflict when output_dir's manifest (finished or running) was written for other work.

    `unfinished_is_waste`: for stages that rewrite all their outputs from scratch (nothing resumable), an unfinished
    run's leftovers are replaced whatever config made them, so that rerunning a command that worked before, after a
    run with other settings failed there, redoes that work instead of being refused.

    `made_for(config, inputs)` says what a run with that config (a DictConfig, or a manifest's resolved config) and
    those input fingerprints ({path: fingerprint}) makes: it is applied to the manifest's record and to this run's
    `cfg` and `inputs` (paths), and the two are compared."""
    record = read_manifest(output_dir)
    if record is None or (unfinished_is_waste and record.get("status") != "complete"):
        return
    config = stored_config(record)
    stored = None if config is None else made_for(config, record.get("inputs") or {})
    current = made_for(cfg, {str(p): fingerprint(p) for p in inputs})
    what = " ".join(filter(None, ("a", record.get("status", "unfinished"), record.get("stage"), "output")))
    check_made_for(output_dir, what, stored=stored, current=current, option=option)
