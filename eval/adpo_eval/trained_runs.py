"""A finished train run, read back from its directory: what it trained on, with which method, from which reference.

Everything comes from the run's manifest (the whole resolved config the train stage ran with), so any run directory
works, on any machine that can reach its pairs file and reference model: paths in the config are read as written
(relative to the working directory, as the stages wrote them), and either can be given instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo.io import DataError
from adpo.manifest import MANIFEST, read_manifest
from adpo.training.pairs_data import PAIRS_FILE

POLICY_DIR = "model"


@dataclass(frozen=True)
class TrainedRun:
    path: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def name(self) -> str:
        return str(self.get("run_name") or self.path.name)

    @property
    def seed(self) -> int | None:
        seed = self.get("train.seed", self.get("seed"))
        return None if seed is None else int(seed)

    @property
    def group(self) -> str:
        """The run's name without its seed suffix: runs of one setting over several seeds share it."""
        seed = self.seed
        return re.sub(rf"-s{seed}$", "", self.name) if seed is not None else self.name

    @property
    def beta(self) -> float:
        return float(self.get("method.beta"))

    @property
    def granularity(self) -> str:
        return str(self.get("method.granularity", "sequence"))

    @property
    def policy_dir(self) -> Path:
        return self.path / POLICY_DIR

    @property
    def reference_model(self) -> str:
        return str(self.get("train.reference_model") or self.get("model.name_or_path"))

    @property
    def pairs_file(self) -> Path:
        return Path(str(self.get("input_dir"))) / PAIRS_FILE

    @property
    def tokenization(self) -> dict[str, Any]:
        return {"prompt_format": str(self.get("model.prompt_format", "plain")),
                "max_prompt_length": self.get("model.max_prompt_length"),
                "max_length": self.get("model.max_length")}

    @property
    def data_source(self) -> str | None:
        source = self.get("data.source")
        return None if source is None else str(source)


def is_trained_run(path: Path) -> bool:
    record = read_manifest(path)
    return bool(record and record.get("stage") == "train" and record.get("status") == "complete"
                and (path / POLICY_DIR).is_dir())


def load_trained_run(path: str | Path) -> TrainedRun:
    """The run in `path`; DataError naming the directory when it is not a finished train run."""
    path = Path(path)
    record = read_manifest(path)
    if record is None:
        raise DataError(f"{path}: no {MANIFEST}: not the output directory of a train run")
    if record.get("stage") != "train":
        raise DataError(f"{path / MANIFEST}: written by the {record.get('stage')!r} stage, not by train")
    if record.get("status") != "complete":
        raise DataError(f"{path / MANIFEST}: status {record.get('status')!r}: the train run has not finished")
    if not (path / POLICY_DIR).is_dir():
        raise DataError(f"{path}: no {POLICY_DIR}/ directory (the trained policy)")
    if not isinstance(record.get("config"), dict):
        raise DataError(f"{path / MANIFEST}: field 'config' (the run's resolved config) is missing")
    return TrainedRun(path, record)


def find_trained_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Finished train runs at or below each root (a run directory itself, or a directory of runs), sorted."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if is_trained_run(root):
            found.add(root)
            continue
        if root.is_dir():
            found.update(p.parent for p in root.rglob(MANIFEST) if is_trained_run(p.parent))
    return sorted(found)


class NoTrainedRunsError(DataError):
    """No finished train run at or below a stage's input_dir."""


def trained_runs_below(root: str | Path, stage: str) -> list[Path]:
    """find_trained_runs([root]) for a stage that needs at least one: NoTrainedRunsError naming the directory."""
    root = Path(root)
    run_dirs = find_trained_runs([root])
    if not run_dirs:
        raise NoTrainedRunsError(
            f"{stage}: no finished train run (manifest.json of a complete train stage and model/) at or below {root} "
            f"({'exists' if root.is_dir() else 'does not exist'}). Point input_dir at a run directory or a directory "
            "of runs (e.g. outputs/<experiment>/<data>/<model>/train).")
    return run_dirs
