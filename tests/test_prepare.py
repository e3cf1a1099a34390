"""The prepare stage: data config -> output_dir/{train,test}.jsonl + manifest, from the command line and from code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adpo.config import compose
from adpo.data.records import read_problems
from adpo.manifest import read_manifest
from adpo_data_prep.prepare import run
from tests.conftest import REPO_ROOT, shared_data_path


def prepare_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "adpo_data_prep.prepare", f"paths.root={tmp_path}", "progress=false", "wandb=disabled",
         *overrides],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.real_data
def test_prepare_from_the_command_line_and_skip_when_done(tmp_path):
    shared_data_path("gsm8k", "train.jsonl")
    result = prepare_cli(tmp_path, "data=gsm8k_local", "data.limit=20")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data"
    train, test = read_problems(out / "train.jsonl"), read_problems(out / "test.jsonl")
    assert len(train) == len(test) == 20
    assert train[0].id == "gsm8k-train-00000" and test[0].gold == "18"
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["stage"] == "prepare"
    assert manifest["outputs"]["train"] == {"file": "train.jsonl", "problems": 20}
    assert all(v.startswith("sha256:") for v in manifest["inputs"].values())  # local files fingerprinted
    mtime = (out / "test.jsonl").stat().st_mtime_ns

    again = prepare_cli(tmp_path, "data=gsm8k_local", "data.limit=20", "method=dpo")  # method does not matter here
    assert again.returncode == 0 and "skipping" in again.stdout + again.stderr
    assert (out / "test.jsonl").stat().st_mtime_ns == mtime

    # The data config does: problems prepared for another config are never replaced (the stages after them were
    # made from them); the error names both values and the way out.
    bigger = prepare_cli(tmp_path, "data=gsm8k_local", "data.limit=30")
    assert bigger.returncode != 0 and "data.limit: 20 -> 30" in bigger.stderr and "paths.data" in bigger.stderr
    assert (out / "test.jsonl").stat().st_mtime_ns == mtime and len(read_problems(out / "test.jsonl")) == 20
    elsewhere = prepare_cli(tmp_path / "bigger", "data=gsm8k_local", "data.limit=30")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert len(read_problems(tmp_path / "bigger" / "data" / "test.jsonl")) == 30


@pytest.mark.real_data
def test_prepare_math500_writes_only_test_and_drops_a_stale_train(tmp_path):
    shared_data_path("math500", "test.jsonl")
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.jsonl").write_text('{"stale": true}\n')
    run(compose("prepare", [f"paths.root={tmp_path}", "data=math500_local", "progress=false"]))
    assert not (out / "train.jsonl").exists()
    test = read_problems(out / "test.jsonl")
    assert len(test) == 500 and test[0].id == "test/precalculus/807.json"
    outputs = read_manifest(out)["outputs"]["test"]
    assert outputs["problems"] == 500 and sum(outputs["levels"].values()) == 500
    assert outputs["subjects"]["Precalculus"] > 0


def test_prepare_through_the_hub_code_path(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    rows = [json.loads(line) for line in shared_data_path("gsm8k", "test.jsonl").open()][:7]
    (hub / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (hub / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    result = prepare_cli(tmp_path, "data=gsm8k", f"data.path={hub}", "data.config=null")
    assert result.returncode == 0, result.stderr
    assert len(read_problems(tmp_path / "data" / "train.jsonl")) == 3
    assert [p.gold for p in read_problems(tmp_path / "data" / "test.jsonl")][:2] == ["18", "3"]


def test_prepare_the_toy_task(tmp_path):
    run(compose("prepare", [f"paths.root={tmp_path}", "data=toy", "data.limit=10", "progress=false"]))
    assert len(read_problems(tmp_path / "data" / "train.jsonl")) == 10
    assert len(read_problems(tmp_path / "data" / "test.jsonl")) == 10


def test_a_malformed_file_stops_with_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q", "answer": "#### 1"}\n{"question": "Q2"}\n')
    result = prepare_cli(tmp_path, "data=gsm8k_local", f"data.splits.train={bad}", f"data.splits.test={bad}")
    assert result.returncode != 0
    assert f"{bad}:2: missing field 'answer'" in result.stderr
    assert not (tmp_path / "data" / "manifest.json").exists()
