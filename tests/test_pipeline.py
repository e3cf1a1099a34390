"""The pipeline runner: its plan from the experiment configs, and the tiny chain killed midway then resumed to the
same outputs as an uninterrupted run, with a final rerun that skips every stage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adpo.config import compose
from adpo.pipeline import expand_runs, plan, stage_overrides
from adpo.run_dirs import OutputDirCollision

REPO = Path(__file__).resolve().parents[1]


def names(steps) -> list[str]:
    return [s.name for s in steps]


def pipeline_cfg(*overrides: str):
    return compose("pipeline", list(overrides))


def test_quickstart_plan_runs_every_stage_in_chain_order(tmp_path):
    overrides = ["experiment=quickstart", f"paths.root={tmp_path}", "pipeline.stream_logs=true"]
    steps = plan(pipeline_cfg(*overrides), overrides)
    assert names(steps) == [
        "prepare", "sft", "eval [base]", "sample", "pairs",
        "train [dpo-sequence-s0]", "eval [dpo-sequence-s0]", "train [adpo-token-s0]", "eval [adpo-token-s0]",
        "train [adpo-static4-s0]", "eval [adpo-static4-s0]", "train [adpo-adaptive4-s0]",
        "eval [adpo-adaptive4-s0]", "aggregate", "analyze"]
    # Every stage gets the pipeline's overrides (but not its own settings), per-run stages their run's too.
    for step in steps:
        assert step.overrides[:2] == overrides[:2] and not any(o.startswith("pipeline.") for o in step.overrides)
    static = steps[10]
    assert static.overrides[2:] == ["method=adpo", "method.granularity=static:4"]
    assert static.config.output_dir == f"{tmp_path}/eval/adpo-static4-s0"
    base_eval = steps[2].config
    assert base_eval.model_dir == f"{tmp_path}/base_model/model" and base_eval.output_dir == f"{tmp_path}/eval/base"
    # The base model the sft stage writes is where sampling and training start.
    assert steps[1].config.output_dir == f"{tmp_path}/base_model"
    assert steps[5].config.model.name_or_path == f"{tmp_path}/base_model/model"


def test_saturation_study_plan_snapshots_every_run_and_measures_them_last(tmp_path):
    overrides = ["experiment=saturation_study", f"paths.root={tmp_path}"]
    steps = plan(pipeline_cfg(*overrides), overrides)
    trains = [s for s in steps if s.stage == "train"]
    # Four methods x five seeds, each seed with its own samples and pairs.
    assert len(trains) == 20 and len([s for s in steps if s.stage == "sample"]) == 5
    for step in trains:
        t = step.config.train
        assert (step.config.method.beta, t.lr, t.max_steps) == (0.1, 1.0e-3, 320)
        assert list(t.snapshot_at)[:2] == [4, 8] and max(t.snapshot_at) < 320
        assert step.config.input_dir == f"{tmp_path}/pairs/s{step.config.seed}"
    assert steps[1].config.sft.steps == 1500
    last = steps[-1]
    assert last.stage == "trajectory" and last.config.input_dir == f"{tmp_path}/train"
    assert last.config.trajectory.points_dir == f"{tmp_path}/trajectory/points"
    assert last.config.data_dir == f"{tmp_path}/data"


@pytest.mark.slow
def test_saturation_study_command_runs_shrunk(tmp_path):
    """The README's `adpo-pipeline experiment=saturation_study` as written, plus the documented +shrink=toy, run from
    a fresh working directory: every stage, snapshots, the trajectory and its comparisons."""
    script = Path(sys.executable).parent / "adpo-pipeline"
    proc = subprocess.run([str(script), "experiment=saturation_study", "+shrink=toy"], cwd=tmp_path,
                          env={**chain_env(), "WANDB_SILENT": "true"}, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "outputs" / "saturation_study" / "toy" / "tiny"
    runs = ["adpo-adaptive4-s0", "adpo-static4-s0", "adpo-token-s0", "dpo-sequence-s0"]
    assert sorted(p.name for p in (root / "train").iterdir()) == runs
    for run in runs:
        assert [p.name for p in (root / "train" / run / "snapshots").iterdir()] == ["step-000002"]
    curves = (root / "trajectory" / "curves.csv").read_text().splitlines()
    assert len(curves) == 1 + 4 * 3  # the reference, the snapshot and the final model of each run
    matched = (root / "trajectory" / "matched_step.csv").read_text()
    assert all(f"{group},dpo-sequence," in matched for group in ("adpo-token", "adpo-static4", "adpo-adaptive4"))
    assert (root / "results" / "main.csv").is_file() and (root / "analysis" / "groups.csv").is_file()
    assert re.search(r"trajectory +ran in [\d.]+ s: 4 runs, 12 points", proc.stdout)


def test_weights_stage_joins_when_a_run_needs_weights(tmp_path):
    overrides = ["experiment=quickstart", f"paths.root={tmp_path}"]
    cfg = pipeline_cfg(*overrides, "pipeline.runs=[{method:dpo},{method:cadpo}]", "pipeline.base_eval=false")
    steps = plan(cfg, overrides)
    assert names(steps)[:5] == ["prepare", "sft", "sample", "pairs", "weights"]
    assert steps[-4].config.input_dir == f"{tmp_path}/pairs_weighted"  # cadpo trains on the weighted pairs


def test_toy_study_samples_once_per_seed_and_sweeps_learning_rates(tmp_path):
    overrides = ["experiment=toy_study", f"paths.root={tmp_path}"]
    cfg = pipeline_cfg(*overrides)
    steps = plan(cfg, overrides)
    samples = [s for s in steps if s.stage == "sample"]
    seeds = list(cfg.pipeline.sweep["seed"])
    assert len(samples) == len(seeds) >= 3
    assert [s.config.output_dir for s in samples] == [f"{tmp_path}/samples/s{k}" for k in seeds]
    trains = [s for s in steps if s.stage == "train"]
    lrs = list(cfg.pipeline.sweep["train.lr"])
    assert len(trains) == len(cfg.pipeline.runs) * len(seeds) * len(lrs)
    assert len({s.config.output_dir for s in trains}) == len(trains)  # every run has its own directory
    first = trains[0].config
    assert first.input_dir == f"{tmp_path}/pairs/s{seeds[0]}"


def test_toy_study_beta_reuses_the_toy_studys_data_and_adds_runs_of_its_own(tmp_path):
    study_overrides = ["experiment=toy_study", f"paths.root={tmp_path}"]
    beta_overrides = ["experiment=toy_study_beta", f"paths.root={tmp_path}"]
    study = plan(pipeline_cfg(*study_overrides), study_overrides)
    follow_up = plan(pipeline_cfg(*beta_overrides), beta_overrides)

    def dirs(steps, stages):
        return {s.config.output_dir for s in steps if s.stage in stages}

    assert dirs(follow_up, ("prepare", "sft", "sample", "pairs")) == dirs(study, ("prepare", "sft", "sample", "pairs"))
    trains = [s for s in follow_up if s.stage == "train"]
    assert {s.config.method.beta for s in trains} == {1.0} and {s.config.train.lr for s in trains} == {1e-5}
    assert not dirs(follow_up, ("train",)) & dirs(study, ("train",))
    assert trains[0].config.output_dir == f"{tmp_path}/train/dpo-sequence-beta1.0-lr1e-05-s0"
    assert dirs(follow_up, ("aggregate",)) == dirs(study, ("aggregate",))  # one aggregate over both
    assert dirs(follow_up, ("analyze",)) == dirs(study, ("analyze",))


def test_runs_that_would_share_a_directory_are_tagged_or_refused(tmp_path):
    overrides = ["experiment=quickstart", f"paths.root={tmp_path}", "pipeline.base_eval=false"]
    cfg = pipeline_cfg(*overrides, "pipeline.runs=[{method:dpo},{method:dpo,train.lr:1e-5}]")
    trains = [s for s in plan(cfg, overrides) if s.stage == "train"]
    # The quickstart's lr (train=tiny) against 1e-5: each run's name shows its own.
    assert [s.label for s in trains] == [f"dpo-sequence-lr{trains[0].config.train.lr}-s0", "dpo-sequence-lr1e-05-s0"]
    same = pipeline_cfg(*overrides, "pipeline.runs=[{method:dpo},{method:dpo,seed:0}]")
    with pytest.raises(OutputDirCollision, match="the same job"):
        plan(same, overrides)


def test_two_data_chains_writing_one_directory_are_refused(tmp_path):
    # Samples per seed (data_keys), but paths.samples left without ${seed}: both chains would write one directory.
    overrides = ["experiment=quickstart", f"paths.root={tmp_path}"]
    cfg = pipeline_cfg(*overrides, "pipeline.data_keys=[seed]", "pipeline.runs=[{seed:0},{seed:1}]")
    with pytest.raises(OutputDirCollision, match=r"sample: 2 jobs would share") as refused:
        plan(cfg, overrides)
    assert "seed=0" in str(refused.value) and "seed=1" in str(refused.value)


def test_runs_and_sweeps_expand_in_order():
    assert expand_runs([["method=dpo"], {"method": "adpo"}], {"seed": [0, 1]}) == [
        ["method=dpo", "seed=0"], ["method=adpo", "seed=0"], ["method=dpo", "seed=1"], ["method=adpo", "seed=1"]]
    assert stage_overrides(["experiment=x", "pipeline.dry_run=true", "hydra/launcher=local", "seed=2"]) == [
        "experiment=x", "seed=2"]


def test_dry_run_prints_the_commands(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adpo.pipeline", "experiment=quickstart", f"paths.root={tmp_path}",
                           "pipeline.dry_run=true", "pipeline.nproc_per_node=2"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-m torch.distributed.run --standalone --nproc_per_node 2 -m adpo.train" in proc.stdout
    assert "-m adpo_eval.evaluate experiment=quickstart" in proc.stdout
    assert not (tmp_path / "data").exists()


def test_a_stage_section_setting_goes_to_its_stage_only(tmp_path):
    """Settings of a stage's own section (sft, pairing, criticality, aggregate, analyze) are given to the chain as to
    the stage, whether or not the experiment sets that key, and reach that stage alone."""
    proc = subprocess.run([sys.executable, "-m", "adpo.pipeline", "experiment=quickstart", f"paths.root={tmp_path}",
                           "pipeline.dry_run=true", "sft.hidden_size=256", "sft.steps=100", "pairing.seed=3",
                           "aggregate.confidence=0.9", "analyze.max_pairs=10"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^\[pipeline\] +\d+/\d+ (\S+(?: \[\S+\])?) +(.*)$",
                                                         proc.stdout, re.M)}
    own = {"sft": ["++sft.hidden_size=256", "++sft.steps=100"], "pairs": ["++pairing.seed=3"],
           "aggregate": ["++aggregate.confidence=0.9"], "analyze": ["++analyze.max_pairs=10"]}
    every = [o for settings in own.values() for o in settings]
    assert "prepare" in lines and "train [adpo-token-s0]" in lines, proc.stdout
    for step, command in lines.items():
        expected = own.get(step, [])
        assert [o for o in every if o in command.split()] == expected, (step, command)
    # Each stage composes with them: the values arrive.
    cfg = compose("sft", ["experiment=quickstart", f"paths.root={tmp_path}", "++sft.hidden_size=256"])
    assert cfg.sft.hidden_size == 256 and cfg.sft.steps == 800


# ---------------------------------------------------------------------------------------------- kill and resume

# What a chain produces, compared byte for byte; manifests, logs, timings and wandb ids legitimately differ.
FINAL_OUTPUTS = ["data/*.jsonl", "base_model/model/*", "samples/shard-*.jsonl", "pairs/pairs.jsonl",
                 "train/*/model/*", "eval/*/predictions.jsonl", "results/*.csv", "results/*.md",
                 "analysis/runs/*/pairs.jsonl", "analysis/*.csv", "train/*/snapshots/*/model.safetensors",
                 "trajectory/*.csv", "trajectory/runs/*/trajectory.csv", "trajectory/trajectory.md"]
# Reports that say where things are (a model card's base model and training data, the tables' eval directories):
# compared with the root's path replaced. Every other output must not depend on where the chain ran.
WHERE_RECORDS = ["train/*/model/README.md", "train/*/model/export.json", "train/*/model/eval_results.json",
                 "results/*.csv", "results/*.md", "trajectory/*.csv", "trajectory/runs/*/trajectory.csv",
                 "trajectory/trajectory.md"]


def chain_command(root: Path) -> list[str]:
    return [sys.executable, "-m", "adpo.pipeline", "experiment=tiny_chain", f"paths.root={root}", "progress=false",
            "pipeline.runs=[{method:adpo}]"]


def chain_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_chain(root: Path, timeout: float = 1200, *extra: str) -> str:
    proc = subprocess.run(chain_command(root) + list(extra), capture_output=True, text=True, timeout=timeout,
                          env=chain_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def run_chain_until(root: Path, condition, timeout: float = 1200) -> None:
    """Start the chain and SIGKILL it, stage subprocesses included, as soon as `condition()` holds."""
    proc = subprocess.Popen(chain_command(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=chain_env(), cwd=REPO, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not condition():
            assert proc.poll() is None, "the chain finished before it could be interrupted"
            assert time.time() < deadline, "timed out waiting for the interruption point"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)  # stage processes die with the pipeline (PR_SET_PDEATHSIG); let them go


def outputs(root: Path) -> dict[str, bytes]:
    records = {p for pattern in WHERE_RECORDS for p in root.glob(pattern)}
    files = {}
    for pattern in FINAL_OUTPUTS:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                data = path.read_bytes()
                files[str(path.relative_to(root))] = data.replace(str(root).encode(), b"<root>") \
                    if path in records else data
    return files


def _log_says(root: Path, pattern: str, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in (root / "logs").glob(pattern))


def check_wandb_runs(root: Path) -> None:
    """Every stage of the chain logged a run, read back from wandb's offline files: the data statistics and samples,
    the base model's eval named as such, the trained policy's train and eval runs linked."""
    from test_wandb import read_run_list

    runs = read_run_list(root / "wandb")
    by_type = {}
    for run in runs:
        by_type.setdefault(run["job_type"], []).append(run)
    assert set(by_type) >= {"prepare", "sft", "sample", "pairs", "train", "eval"}, sorted(by_type)
    assert {r["group"] for r in runs} == {"tiny_chain"}
    assert {r["name"] for r in runs} >= {"prepare-tiny-toy", "sft-tiny-toy", "sample-tiny-toy", "pairs-tiny-toy",
                         "base-tiny-toy", "adpo-token-tiny-toy-s0"}, sorted(r["name"] for r in runs)
    stats = json.loads((root / "pairs" / "stats.json").read_text())
    pairs = by_type["pairs"][0]["summary"]
    assert pairs["pairs/mean_wrong_answers_per_question"] == stats["mean_wrong_answers_per_question"]
    assert pairs["pairs/num_pairs"] == len((root / "pairs" / "pairs.jsonl").read_text().splitlines())
    sample = json.loads((root / "samples" / "summary.json").read_text())
    assert by_type["sample"][0]["summary"]["sample/sample_accuracy"] == sample["sample_accuracy"]
    assert by_type["prepare"][0]["summary"]["prepare/test/problems"] == 24
    # The first rows of samples and pairs, as tables.
    for kind, rows in (("sample", 50), ("pairs", pairs["pairs/num_pairs"])):
        logged = {k: v for h in by_type[kind][0]["history"] for k, v in h.items()}
        assert logged[f"{kind}/examples/_type"] == "table-file" and logged[f"{kind}/examples/nrows"] == min(rows, 50)
    evals = {r["name"]: r for r in by_type["eval"]}
    assert set(evals) == {"base-tiny-toy", "adpo-token-tiny-toy-s0"}
    [train] = by_type["train"]
    policy_eval = evals["adpo-token-tiny-toy-s0"]
    assert train["name"] == policy_eval["name"] and "adpo-token-s0" in train["tags"] and \
        "adpo-token-s0" in policy_eval["tags"]
    assert policy_eval["config"]["train_run_id"] == train["run_id"] == \
        (root / "train" / "adpo-token-s0" / "wandb_run_id").read_text().strip()
    accuracy = json.loads((root / "eval" / "adpo-token-s0" / "metrics.json").read_text())["accuracy"]
    assert policy_eval["summary"]["eval/accuracy"] == accuracy
    assert "train_run_id" not in evals["base-tiny-toy"]["config"] and "base" in evals["base-tiny-toy"]["tags"]
    # The runs that summarise others: their tables and plots.
    for job_type, table, plot in (("analyze", "groups", "aligned"), ("trajectory", "matched_kl", "trajectory")):
        [summary_run] = by_type[job_type]
        logged = {k: v for h in summary_run["history"] for k, v in h.items()}
        assert summary_run["name"] == f"{job_type}-tiny_chain", summary_run["name"]
        assert logged[f"tables/{table}/_type"] == "table-file" and logged[f"plots/{plot}/_type"] == "image-file"


@pytest.mark.slow
def test_killed_chain_resumes_to_the_same_outputs(tmp_path):
    # An uninterrupted run, in another root than the interrupted one: the outputs must not depend on where they are.
    root = tmp_path / "uninterrupted"
    first = run_chain(root, 1200, "wandb=offline")
    # Each long stage's progress, shown as it runs, with progress=false (what the stages print for a log file).
    for stage, line in [("sft", r"sft \| step 60/60 100% \| [\d.]+ step/s .* \| loss [\d.]+"),
                        (r"eval \[base\]", r"eval gsm8k \| item 24/24 100% .* \| accuracy [\d.]+"),
                        ("sample", r"sampling n=16 \| item 32/32 100% .* \| sample_accuracy [\d.]+"),
                        (r"train \[adpo-token-s0\]", r"train adpo token \| step (\d+)/\1 100% .* \| loss [\d.]+")]:
        assert re.search(rf"^\[pipeline\] +\d+/\d+ {stage} +{line}", first, re.M), (stage, first)
    # ... and each stage's result when it ends, the base model's verdict among them.
    assert re.search(r"pairs +ran in [\d.]+ s: \d+ pairs; base model usable for pairs: \d+% of 32 questions", first)
    assert re.search(r"eval \[adpo-token-s0\] +ran in [\d.]+ s: accuracy [\d.]+% on 24 problems", first)
    assert re.search(r"analyze +ran in [\d.]+ s: 1 runs; share of .* first error .*: adpo-token [-+]\d", first)
    assert re.search(r"trajectory +ran in [\d.]+ s: 1 runs, 3 points; at the end: adpo-token [\d.]+% at KL -?[\d.]+",
                     first)
    curves = (root / "trajectory" / "curves.csv").read_text().splitlines()
    assert [line.split(",")[5] for line in curves] == ["step", "0", "2", "4"]  # a sampled KL may come out below 0
    analysed = json.loads((root / "analysis" / "runs" / "adpo-token-s0" / "summary.json").read_text())
    assert analysed["first_error"] == "toy" and analysed["pairs"] > 0 and analysed["rejected_with_error"] > 0
    reference = outputs(root)
    assert any(k.startswith("train/") for k in reference) and "results/main.csv" in reference
    check_wandb_runs(root)
    root = tmp_path / "chain"

    # Killed in the middle of the sft stage (after a checkpoint), then in the middle of training, then finished.
    run_chain_until(root, lambda: _log_says(root, "*-sft.log", "sft step 20/"))
    assert not (root / "base_model" / "model").exists()
    run_chain_until(root, lambda: any((root / "train").glob("*/checkpoints/*/*.pt")))
    assert not (root / "results").exists()
    log = run_chain(root)
    assert "prepare" in log and "skipped" in log

    resumed = outputs(root)
    assert sorted(resumed) == sorted(reference)
    different = [name for name in reference if resumed[name] != reference[name]]
    assert not different, f"outputs differ after kill and resume: {different}"

    # A rerun of the finished chain starts no stage and touches no output.
    manifests = {p: p.stat().st_mtime_ns for p in root.rglob("manifest.json")}
    log = run_chain(root)
    assert "running ..." not in log and ": 0 stages ran," in log
    assert {p: p.stat().st_mtime_ns for p in root.rglob("manifest.json")} == manifests
