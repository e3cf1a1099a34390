"""Finished eval directories -> runs (what each was, read from its manifest's resolved config), and the config keys
that split one method's runs into row groups."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adpo.io import DataError, iter_jsonl, read_json_object, require_field
from adpo.manifest import read_manifest
from adpo_eval.methods import BASE_MODEL, DISPLAY_KEYS, MethodInfo, method_info

# The test sets we label runs with and their sizes (method.md, "Evaluation"). A run on fewer problems (data.limit,
# eval.limit) is labelled as the part of its set it is, so that it never sits beside a number measured on the whole.
TEST_SET_SIZES = {"GSM8K": 1319, "MATH-500": 500, "MATH-5000": 5000}
# group_by=auto: the config sections searched for settings that differ between runs of one method ...
AUTO_PREFIXES = ("train.", "method.", "sampling.", "pairing.")
# ... except settings that are seeds, places, the method's identity or how tables show it.
AUTO_EXCLUDE = re.compile(r"seed|dir|path|name$|granularity$|^method\.use_weights$|^method\.(?:%s)$"
                          % "|".join(DISPLAY_KEYS))


@dataclass
class EvalRun:
    path: Path
    info: MethodInfo
    granularity: str
    model: str
    dataset: str
    seed: int | None
    accuracy: float  # percent
    correct: dict[str, float]  # problem id -> 1.0 / 0.0 (empty when predictions.jsonl is missing)
    config: dict[str, Any]
    group: tuple[tuple[str, str], ...] = field(default=())

    @property
    def method(self) -> str:
        return self.info.name

    @property
    def variant(self) -> tuple[str, str]:
        return self.method, self.granularity


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(cfg, dict):
        return {prefix[:-1]: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def model_label(cfg: dict[str, Any]) -> str:
    return str(_get(cfg, "model.paper_name") or _get(cfg, "model.name") or _get(cfg, "model.name_or_path") or "?")


def test_set(cfg: dict[str, Any]) -> str:
    """The whole test set a run's data config evaluates on: GSM8K, MATH-500 (its test split is the 500-problem
    subset, as in data=math500 and math500_local) or MATH-5000 (the full MATH test set, data=math). The split decides,
    not the name or the count: the first 500 problems of the full set (data.limit=500) are no MATH-500."""
    dataset = _get(cfg, "data.dataset")
    if dataset == "gsm8k":
        return "GSM8K"
    if dataset == "math":
        test_split = json.dumps(_get(cfg, "data.splits.test"), default=str).lower()
        return "MATH-500" if "math-500" in test_split or "math500" in test_split else "MATH-5000"
    return str(_get(cfg, "data.name") or dataset or "?")


def dataset_label(cfg: dict[str, Any], problems: int | None) -> str:
    """The test set a run was measured on, exactly: "GSM8K", "MATH-500", "MATH-5000", or the part of one it ran on
    ("MATH-500 (first 16 of 500)"), another split ("GSM8K (train split, 100 problems)"), the toy task's name."""
    if _get(cfg, "data.paper_name"):
        return str(_get(cfg, "data.paper_name"))
    if _get(cfg, "data.source") == "toy":
        return str(_get(cfg, "data.name") or "toy")
    name = test_set(cfg)
    split = str(_get(cfg, "eval.split") or "test")
    if split != "test":
        return f"{name} ({split} split, {problems} problems)"
    size = TEST_SET_SIZES.get(name)
    if size is None or problems is None or problems == size:
        return name
    return f"{name} (first {problems} of {size})" if problems < size else f"{name} ({problems} problems)"


def find_eval_dirs(roots: Iterable[str | Path]) -> list[Path]:
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            found.update(m.parent for m in root.rglob("metrics.json") if (m.parent / "manifest.json").is_file())
    return sorted(found)


def load_run(path: Path) -> tuple[EvalRun | None, str | None]:
    """The run in an eval directory, or (None, why it is not a finished eval run)."""
    manifest = read_manifest(path)
    if manifest is None:
        return None, "manifest.json unreadable"
    if manifest.get("stage", "eval") != "eval":
        return None, f"not an eval directory (stage {manifest.get('stage')!r})"
    if manifest.get("status") != "complete":
        return None, f"not finished (status {manifest.get('status')!r})"
    cfg = manifest.get("config")
    if not isinstance(cfg, dict):
        raise DataError(f"{path / 'manifest.json'}: missing field 'config' (the run's resolved config)")
    if cfg.get("run_name") == "base":  # its config has a method node too (the default one): not its method
        info, granularity = BASE_MODEL, "-"
    else:
        recorded = cfg.get("method")
        info = method_info(str(_get(cfg, "method.name", "?")), recorded if isinstance(recorded, dict) else None)
        granularity = str(_get(cfg, "method.granularity", "?"))
    correct: dict[str, float] = {}
    predictions = path / "predictions.jsonl"
    if predictions.is_file():
        for lineno, row in iter_jsonl(predictions, require="predictions"):
            where = f"{predictions}:{lineno}"
            problem_id = require_field(row, "id", (str, int), where)
            correct[str(problem_id)] = float(bool(require_field(row, "correct", (bool, int), where)))
    metrics = read_json_object(path / "metrics.json")
    if correct:
        accuracy = 100.0 * sum(correct.values()) / len(correct)
    else:
        value = float(require_field(metrics, "accuracy", (int, float), str(path / "metrics.json")))
        accuracy = 100.0 * value if value <= 1.0 else value
    problems = len(correct) or metrics.get("n_problems") or metrics.get("total")
    seed = cfg.get("seed")
    return EvalRun(path, info, granularity, model_label(cfg), dataset_label(cfg, int(problems) if problems else None),
                   int(seed) if seed is not None else None, accuracy, correct, cfg), None


def load_runs(eval_dirs: Iterable[Path]) -> tuple[list[EvalRun], list[str]]:
    """The finished runs, and a line per directory left out saying why."""
    runs, skipped = [], []
    for d in eval_dirs:
        run, why = load_run(d)
        if run is None:
            skipped.append(f"{d}: {why}")
        else:
            runs.append(run)
    return runs, skipped


def varying_keys(runs: Sequence[EvalRun]) -> list[str]:
    """Settings (under AUTO_PREFIXES) that take more than one value among the seeds-aside runs of one method."""
    by_variant: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r.method != "base":
            by_variant[(r.model, r.dataset, r.variant)].append(_flatten(r.config))
    keys: set[str] = set()
    for flats in by_variant.values():
        candidates = {k for f in flats for k in f if k.startswith(AUTO_PREFIXES) and not AUTO_EXCLUDE.search(k)}
        for k in candidates:
            if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1:
                keys.add(k)
    return sorted(keys)


def assign_groups(runs: Sequence[EvalRun], group_by: Sequence[str]) -> None:
    for r in runs:
        if r.method == "base":
            r.group = tuple((k, "-") for k in group_by)
        else:
            flat = _flatten(r.config)
            r.group = tuple((k, _fmt_value(flat.get(k))) for k in group_by)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
