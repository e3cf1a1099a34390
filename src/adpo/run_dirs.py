"""The output directories of a set of jobs (a sweep's, a pipeline's runs): distinct, or refused before anything runs.

A run's directory must be fixed by everything that varies among the jobs launched with it. When two jobs would write
one directory (`train.lr=1e-5,4e-5`: run_name does not show the learning rate), each gets a `run_tag` override made
of the keys and values that differ between them (`run_tag=-lr1e-05`), which run_name contains. Tags are added only
where directories collide, so a sweep whose directories are already distinct keeps the directories a single run with
the same overrides would use. Jobs that still share a directory (a stage whose path does not use run_name, say the
sample stage swept over sampling.temperature) raise OutputDirCollision, naming the directory and the jobs.

Configs may come from `adpo.config.compose` (no hydra node) or from a Hydra launcher's `load_sweep_config` (with the
hydra node, whose `${hydra:...}` interpolations resolve only while HydraConfig holds that very config).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

Compose = Callable[[list[str]], DictConfig]
TAG_KEY = "run_tag"
# Never in a tag: Hydra's own settings (where and how to launch, not what a job computes) and the tag itself.
UNTAGGABLE = ("hydra", TAG_KEY)


class OutputDirCollision(ValueError):
    """Jobs that would write the same output directory."""


@dataclass
class PlannedJob:
    overrides: list[str]
    config: DictConfig
    output_dir: str | None  # absolute and normalised; None for a config without output_dir

    def select(self, key: str) -> Any:
        """The resolved value at `key` (None when absent)."""
        with hydra_config_of(self.config):
            return OmegaConf.select(self.config, key)


def distinct_output_dirs(stage: str, jobs: list[list[str]], compose: Compose) -> list[list[str]]:
    """The jobs' overrides, with a run_tag where two jobs would otherwise share an output directory.

    Raises OutputDirCollision when some still would."""
    return [job.overrides for job in plan_output_dirs(stage, jobs, compose)]


def plan_output_dirs(stage: str, jobs: Sequence[Sequence[str]], compose: Compose, *,
                     explain: Callable[[str], None] | None = None, first_index: int = 0,
                     validate: Callable[[list[PlannedJob]], None] | None = None) -> list[PlannedJob]:
    """As distinct_output_dirs, keeping each job's composed config and directory; `explain` gets one line per group
    of jobs that was tagged, saying why. Jobs are numbered from first_index in messages (as a launcher numbers them).
    `validate` sees every job's config first (a launcher's settings check, adpo.validation.validate_jobs)."""
    planned = [compose_job(list(job), compose) for job in jobs]
    if validate is not None:
        validate(planned)
    for directory, members in shared_dirs(planned).items():
        tags = run_tags([planned[i] for i in members])
        tagged = [compose_job([*planned[i].overrides, f"{TAG_KEY}={tag}"], compose) for i, tag in zip(members, tags)]
        if not tags or len({job.output_dir for job in tagged}) < len(tagged):
            continue  # a tag cannot tell them apart (their path lacks run_name, say): refused below, as written
        if explain is not None:
            explain(_tag_note(directory, [planned[i] for i in members], tags, members, first_index))
        for i, job in zip(members, tagged):
            planned[i] = job
    refuse_shared_output_dirs(stage, planned, first_index=first_index)
    return planned


def compose_job(overrides: list[str], compose: Compose) -> PlannedJob:
    config = compose(overrides)
    return PlannedJob(overrides, config, output_dir_of(config))


def output_dir_of(config: DictConfig) -> str | None:
    with hydra_config_of(config):
        value = OmegaConf.select(config, "output_dir")
    return None if value is None else os.path.abspath(os.path.normpath(str(value)))


def shared_dirs(planned: Sequence[PlannedJob]) -> dict[str, list[int]]:
    """Each directory that more than one job would write -> those jobs' positions."""
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(planned):
        if job.output_dir is not None:
            groups.setdefault(job.output_dir, []).append(i)
    return {d: members for d, members in groups.items() if len(members) > 1}


def refuse_shared_output_dirs(stage: str, planned: Sequence[PlannedJob], *, first_index: int = 0) -> None:
    """Raise OutputDirCollision naming every directory more than one of these jobs (of one stage) would write."""
    shared = shared_dirs(planned)
    if not shared:
        return
    lines = [f"{stage}: {sum(map(len, shared.values()))} jobs would share {len(shared)} output "
             "director" + ("y" if len(shared) == 1 else "ies") + " (each would overwrite the others' outputs):"]
    for directory, members in shared.items():
        lines.append(f"  {directory}")
        lines += [f"    job {first_index + i}: {' '.join(planned[i].overrides) or '(no overrides)'}" for i in members]
        keys = differing_keys([planned[i] for i in members])
        lines.append("    " + _fix_hint(planned[members[0]].config, keys))
    raise OutputDirCollision("\n".join(lines))


# ---------------------------------------------------------------------------------------------- tags

def run_tags(group: Sequence[PlannedJob]) -> list[str]:
    """One tag per job of a group that shares a directory, from the keys whose values differ among them; [] when
    there are none, or when a job names its run_tag itself (the user's choice of directory is not rewritten)."""
    if any(_key(o) == TAG_KEY for job in group for o in job.overrides):
        return []
    keys = differing_keys(group)
    if not keys:
        return []
    short = _short_names(keys)
    tags = []
    for job in group:
        values = _tag_values(job, keys)
        tags.append("".join(f"-{short[k]}{values[k]}" for k in keys if values[k] is not None))
    return tags


def differing_keys(group: Sequence[PlannedJob]) -> list[str]:
    """The overridden keys (sorted) whose values are not the same for every job of the group."""
    keys = sorted({_key(o) for job in group for o in job.overrides if not _key(o).startswith(UNTAGGABLE)})
    values = [_tag_values(job, keys) for job in group]
    return [k for k in keys if len({v[k] for v in values}) > 1]


def _tag_values(job: PlannedJob, keys: Sequence[str]) -> dict[str, str | None]:
    """What each key is for this job, as a directory-name fragment: the composed value when it is a scalar (so 1e-5
    and 0.00001 are the same learning rate, shown as run_name's ${train.lr} would show it), else what the override
    says (a config group: method=dpo); None when the job neither overrides the key nor has a scalar there."""
    overridden = {_key(o): o.split("=", 1)[1] for o in job.overrides if "=" in o}
    values: dict[str, str | None] = {}
    for key in keys:
        try:
            value = job.select(key)
        except Exception:  # an interpolation only a job can resolve: what the override says will do
            value = None
        if value is None or OmegaConf.is_config(value):
            value = overridden.get(key)
        values[key] = None if value is None else _safe(value)
    return values


def _safe(value: Any) -> str:
    """A filesystem-safe fragment: as the ${slug:} resolver, ':' goes and '/' becomes '_'; Hydra's escapes go."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    text = text.replace("\\", "").replace(":", "").replace("/", "_")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """A key's last part (train.lr -> lr), or the whole key where two keys end alike (train.seed, seed)."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    return {k: (s if list(last.values()).count(s) == 1 else k) for k, s in last.items()}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _tag_note(directory: str, group: Sequence[PlannedJob], tags: Sequence[str], members: Sequence[int],
              first_index: int) -> str:
    jobs = ", ".join(str(first_index + i) for i in members)
    keys = differing_keys(group)
    return (f"run_tag: jobs {jobs} would share {directory}; {', '.join(keys)} "
            f"{'differs' if len(keys) == 1 else 'differ'}, so {TAG_KEY}={', '.join(tags)}")


def _fix_hint(config: DictConfig, keys: Sequence[str]) -> str:
    """How to make the directory depend on what differs: run_name when the path uses it (and was set by hand, or the
    tag would have done), else the path behind output_dir."""
    if not keys:
        return "these jobs are the same job: drop the duplicates"
    short = _short_names(keys)
    suffix = "-".join(f"{short[k]}${{{k}}}" for k in keys)
    target = "output_dir"
    raw = _raw(config, target) or ""
    match = re.fullmatch(r"\$\{(paths\.\w+)\}", raw)
    if match:
        target, raw = match.group(1), _raw(config, match.group(1)) or ""
    if "${run_name}" in raw:
        target, raw, suffix = "run_name", _raw(config, "run_name"), "-" + suffix
    else:
        suffix = "/" + suffix
    return f"make the directory depend on {', '.join(keys)}: e.g. '{target}={raw}{suffix}'"


def _raw(config: DictConfig, key: str) -> str | None:
    """The unresolved value at a dotted key (e.g. '${paths.root}/samples')."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    return str(node._value())


@contextmanager
def hydra_config_of(config: DictConfig) -> Iterator[None]:
    """While inside, `${hydra:...}` resolves against this config's hydra node (a launcher's sweep configs have one
    each); the HydraConfig that was set before is restored after, as the launcher will pass it on to its jobs."""
    if "hydra" not in config:
        yield
        return
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(config)
    try:
        yield
    finally:
        instance.cfg = previous
