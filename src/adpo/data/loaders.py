"""GSM8K and MATH from the hub (by name, through `datasets`) or from local JSONL files, as Problem records.

A data config (conf/data/*.yaml) says:
    dataset: gsm8k | math      what the problems are: decides gold parsing, prompts and grading
    name:    gsm8k, math500 ...  the data choice's own name (ids of sources without one)
    source:  hub | local | toy (a generated task: `generator` names the function, e.g. the quickstart's
             adpo_data_prep.toy.task.load_toy_problems; splits give problem counts)
    path:    hub id (openai/gsm8k) or a local `datasets` directory (hub); a JSONL file (local)
    config:  hub config name, a list of them (concatenated in order: EleutherAI/hendrycks_math), or null
    splits:  {train: ..., test: ...}: each the split name at the hub / the JSONL file (local), or a mapping that
             overrides source, path, config, split, limit for that split (e.g. MATH train + MATH-500 test)
    limit:   keep the first N problems of each split (quick runs), or null

Gold answers: GSM8K = the text after the last "####" of `answer`, commas removed. MATH = the `answer` field where the
source has one (MATH-500), else the last \\boxed{} of `solution` (full MATH). Ids are stable: the source's own id
where it has one (MATH-500 `unique_id`), else "<name>-<split>-<index:05d>" in source order.
Local JSONL rows may also be Problem records already (id, dataset, question, gold, ...), e.g. a prepared split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from adpo.data.records import DATASETS, Problem
from adpo.grading.extract import last_boxed_content
from adpo.io import DataError, iter_jsonl, require_field

SOURCES = ("hub", "local", "toy")
REPO_ROOT = Path(__file__).resolve().parents[3]


def gsm8k_gold(answer: str, where: str) -> str:
    """The final answer of a GSM8K worked solution: what follows the last "####", commas removed."""
    if "####" not in answer:
        raise DataError(f"{where}: field 'answer' has no '#### <final answer>' line")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise DataError(f"{where}: field 'answer' has an empty final answer after '####'")
    return gold


def parse_level(value: Any, where: str) -> int | None:
    """MATH difficulty: 3 or "Level 3" -> 3; "Level ?" (a few train problems) or missing -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().removeprefix("Level").strip()
        if text.isdigit():
            return int(text)
        if text in ("?", ""):
            return None
    raise DataError(f"{where}: field 'level' must be an int or 'Level N', got {value!r}")


def problem_from_row(dataset: str, row: Mapping[str, Any], default_id: str, where: str) -> Problem:
    """One source row (hub layout or a Problem record) as a Problem; a bad field raises DataError naming `where`."""
    if "gold" in row and "question" in row:
        problem = Problem.from_dict(dict(row), where)
        if problem.dataset != dataset:
            raise DataError(f"{where}: field 'dataset' is {problem.dataset!r} but the data config says {dataset!r}")
        return problem
    if dataset == "gsm8k":
        question = require_field(row, "question", str, where, non_empty=True)
        answer = require_field(row, "answer", str, where, non_empty=True)
        return Problem(id=str(row.get("id") or default_id), dataset="gsm8k", question=question,
                       gold=gsm8k_gold(answer, where), solution=answer)
    if dataset == "math":
        question = require_field(row, "problem", str, where, non_empty=True)
        solution = require_field(row, "solution", str, where, non_empty=True)
        if row.get("answer") is not None:
            gold = require_field(row, "answer", str, where, non_empty=True).strip()
        else:
            gold = last_boxed_content(solution)
            if not gold:
                raise DataError(f"{where}: field 'solution' has no \\boxed{{}} answer (and there is no 'answer')")
        subject = row.get("subject", row.get("type"))
        if subject is not None and not isinstance(subject, str):
            raise DataError(f"{where}: field 'subject' must be str, got {type(subject).__name__}")
        return Problem(id=str(row.get("unique_id") or row.get("id") or default_id), dataset="math",
                       question=question, gold=gold, solution=solution, subject=subject,
                       level=parse_level(row.get("level"), where))
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def _check_unique(problems: Sequence[Problem], origin: str) -> list[Problem]:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(f"{origin}: duplicate problem id {p.id!r}")
        seen.add(p.id)
    return list(problems)


def resolve_local_path(path: str | Path) -> Path:
    """A local data path as given, or (when relative and not found from the working directory) from the repo root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    from_repo = REPO_ROOT / path
    return from_repo if from_repo.exists() else path


def read_jsonl_problems(path: str | Path, dataset: str, split: str, name: str | None = None,
                        limit: int | None = None) -> list[Problem]:
    """Problems from a JSONL file in the hub's field layout (or of Problem records), first `limit` only."""
    path = resolve_local_path(path)
    prefix = name or dataset
    problems = []
    for index, (lineno, row) in enumerate(iter_jsonl(path, require="problems")):
        if limit is not None and index >= limit:
            break
        problems.append(problem_from_row(dataset, row, f"{prefix}-{split}-{index:05d}", f"{path}:{lineno}"))
    return _check_unique(problems, str(path))


def _hub_rows(path: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
    import datasets

    local = Path(path).expanduser()
    # A dataset saved with save_to_disk cannot go through load_dataset; everything else (hub ids, local data
    # directories or scripts) can.
    if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
        saved = datasets.load_from_disk(str(local))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DataError(f"{local}: no split {split!r} (has {sorted(saved)})")
            return saved[split]
        return saved
    return datasets.load_dataset(path, config, split=split)


def read_hub_problems(path: str, dataset: str, split: str, source_split: str | None = None,
                      config: str | Sequence[str] | None = None, name: str | None = None,
                      limit: int | None = None) -> list[Problem]:
    """Problems of one split of a hub dataset (`datasets.load_dataset(path, config, split=...)`).

    `config` may be a list: the configs' rows are concatenated in order (EleutherAI/hendrycks_math has one config
    per subject). `path` may also be a local `datasets` directory (data files, a script, or save_to_disk output).
    """
    configs: list[str | None] = list(config) if isinstance(config, (list, tuple)) else [config]
    source_split = source_split or split
    prefix = name or dataset
    problems: list[Problem] = []
    for cfg_name in configs:
        origin = f"{path}{'/' + cfg_name if cfg_name else ''}[{source_split}]"
        rows = 0
        for row_index, row in enumerate(_hub_rows(path, cfg_name, source_split)):
            rows += 1
            if limit is not None and len(problems) >= limit:
                break
            if not isinstance(row, Mapping):
                raise DataError(f"{origin} row {row_index}: expected a record of fields, got {type(row).__name__}")
            problems.append(problem_from_row(dataset, row, f"{prefix}-{split}-{len(problems):05d}",
                                             f"{origin} row {row_index}"))
        if not rows:
            raise DataError(f"{origin}: no rows, expected problems")
    return _check_unique(problems, f"{path}[{source_split}]")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


SPLIT_KEYS = ("source", "path", "config", "split", "limit")


def split_spec(data_cfg: Any, split: str) -> dict[str, Any]:
    """Where one split comes from: the config's top-level source/path/config/limit, overridden by the split's entry.

    A split entry is either a string (the split's name at the hub, or the JSONL file for source: local) or a mapping
    with any of source, path, config, split, limit (to take e.g. train from one hub dataset and test from another).
    """
    splits = _get(data_cfg, "splits", {})
    entry = splits.get(split) if hasattr(splits, "get") else None
    if entry is None:
        raise ValueError(f"data config {_get(data_cfg, 'name')!r} has no {split!r} split (has {data_splits(data_cfg)})")
    spec = {key: _get(data_cfg, key) for key in SPLIT_KEYS}
    spec["source"] = spec["source"] or "hub"
    if isinstance(entry, str):
        spec["split" if spec["source"] == "hub" else "path"] = entry
    else:
        unknown = set(entry.keys()) - set(SPLIT_KEYS)
        if unknown:
            raise ValueError(f"data.splits.{split}: unknown keys {sorted(unknown)} (allowed: {SPLIT_KEYS})")
        spec.update({key: entry[key] for key in entry.keys()})
    if spec["source"] not in SOURCES:
        raise ValueError(f"data.splits.{split}.source must be one of {SOURCES}, got {spec['source']!r}")
    if spec["config"] is not None and not isinstance(spec["config"], str):
        spec["config"] = list(spec["config"])
    if not spec["path"]:
        raise ValueError(f"data.splits.{split}: no path (hub dataset id or JSONL file)")
    return spec


def data_splits(data_cfg: Any) -> list[str]:
    """The splits a data config provides (e.g. ["train", "test"], or ["test"] for local MATH-500)."""
    splits = _get(data_cfg, "splits", {})
    return [s for s in splits.keys() if splits[s] is not None]


def load_problems(data_cfg: Any, split: str) -> list[Problem]:
    """The problems of `split` ("train"/"test") of a data config (cfg.data: DictConfig or dict), see module doc.

    Reads the hub (source: hub) or a local JSONL file (source: local) and keeps the first `limit`. Raises DataError
    for a malformed row (naming the file and line, or the hub row, and the field) and ValueError for a split the
    config does not have.
    """
    dataset = _get(data_cfg, "dataset")
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
    if _get(data_cfg, "source") == "toy":
        # A generated task, named by the config: the core never imports the data side (adpo_data_prep) itself.
        from hydra.utils import get_method

        if split not in data_splits(data_cfg):
            raise ValueError(f"data config {_get(data_cfg, 'name')!r} has no {split!r} split")
        generator = _get(data_cfg, "generator")
        if not generator:
            raise ValueError(f"data config {_get(data_cfg, 'name')!r}: source toy needs data.generator "
                             "(a function path such as adpo_data_prep.toy.task.load_toy_problems)")
        return get_method(str(generator))(data_cfg, split)
    spec = split_spec(data_cfg, split)
    name = _get(data_cfg, "name") or dataset
    if spec["source"] == "local":
        return read_jsonl_problems(spec["path"], dataset, split, name=name, limit=spec["limit"])
    return read_hub_problems(spec["path"], dataset, split, spec["split"] or split, spec["config"], name, spec["limit"])
