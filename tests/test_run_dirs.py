"""Outputs that cannot collide: jobs launched together (a sweep, a pipeline's runs) never share an output directory.
Where they would, a run_tag made of what differs tells them apart, or nothing starts and the jobs are named.

The commands run as a user types them, from a temporary working directory: the relative paths.root (outputs/...)
and the sweep's multirun.yaml below it then land there, not in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from adpo.config import compose
from adpo.pipeline import plan
from adpo.run_dirs import OutputDirCollision, distinct_output_dirs
from adpo.sweep import hydra_argv
from train_helpers import stage_env

PYTHON = sys.executable


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, *args], cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=300)


def dry_run(cwd: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess:
    return run(["-m", "adpo.sweep", stage, *overrides, "--dry-run"], cwd)


def dry_run_jobs(stdout: str) -> list[tuple[str, str]]:
    """(overrides, output_dir) of each job the dry run lists."""
    return re.findall(r"^job \d+: (.*)\n  output_dir: (.*)$", stdout, flags=re.M)


def compose_stage(stage: str):
    return lambda overrides: compose(stage, overrides)


def test_a_learning_rate_sweep_gets_one_directory_per_job_tagged_with_its_lr(tmp_path):
    proc = dry_run(tmp_path, "train", "train.lr=1e-5,4e-5", "seed=1,2,3", "model=tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout)
    assert len(jobs) == 6 and len({d for _, d in jobs}) == 6, proc.stdout
    for overrides, directory in jobs:
        lr, seed = re.search(r"train\.lr=(\S+)", overrides).group(1), re.search(r"seed=(\d)", overrides).group(1)
        assert f"run_tag=-lr{lr}" in overrides.split()  # the tag says the lr, and nothing else
        assert directory == str(tmp_path / f"outputs/default/gsm8k/tiny/train/adpo-token-lr{lr}-s{seed}")
    # One line per group of jobs that would have shared a directory (one per seed), saying why.
    assert len(re.findall(r"^run_tag: jobs \d+, \d+ would share .*; train.lr differs", proc.stdout, re.M)) == 3
    # The train stage defaults to one process per GPU, 8 per node: the paper's global batch.
    assert "global batch: 2 x 4 x 8 processes = 64" in proc.stdout


def test_a_sweep_whose_directories_differ_gets_no_tag(tmp_path):
    proc = dry_run(tmp_path, "train", "+sweep=granularity", "model=tiny", "data=gsm8k")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout)
    assert len(jobs) == 9 and len({d for _, d in jobs}) == 9, proc.stdout
    assert "run_tag" not in proc.stdout
    # Each job keeps the directory a single run with the same overrides uses.
    static4_seed1 = [d for o, d in jobs if "method.granularity=static\\:4" in o and "seed=1" in o.split()]
    assert static4_seed1 == [str(tmp_path / "outputs/paper/gsm8k/tiny/train/adpo-static4-s1")]


def test_sampling_temperatures_sharing_the_samples_directory_are_refused(tmp_path):
    proc = dry_run(tmp_path, "sample", "sampling.temperature=0.7,1.0", "model=tiny")
    assert proc.returncode != 0
    assert "DRY RUN" not in proc.stdout  # refused before listing anything
    message = proc.stderr
    assert str(tmp_path / "outputs/default/gsm8k/tiny/samples") in message
    assert "sampling.temperature=0.7 model=tiny" in message and "sampling.temperature=1.0 model=tiny" in message
    assert "paths.samples=${paths.root}/samples/temperature${sampling.temperature}" in message  # how to fix it


def test_tags_name_every_differing_key_sorted_and_only_where_needed():
    jobs = [["method=dpo", "train.lr=1e-5", "method.beta=0.1"], ["method=dpo", "train.lr=2e-5", "method.beta=0.5"],
            ["method=adpo", "train.lr=1e-5"]]
    tagged = distinct_output_dirs("train", jobs, compose_stage("train"))
    assert tagged[0] == [*jobs[0], "run_tag=-beta0.1-lr1e-05"] and tagged[1] == [*jobs[1], "run_tag=-beta0.5-lr2e-05"]
    assert tagged[2] == jobs[2]  # alone in its directory: the single-run directory


def test_a_run_name_set_by_hand_is_not_rewritten_but_refused():
    jobs = [["run_name=mine", "train.lr=1e-5"], ["run_name=mine", "train.lr=2e-5"]]
    with pytest.raises(OutputDirCollision, match=r"run_name=mine-lr\$\{train.lr\}"):
        distinct_output_dirs("train", jobs, compose_stage("train"))


def test_a_pipeline_sweep_over_the_lr_tags_each_runs_train_and_eval_alike(tmp_path):
    overrides = ["experiment=quickstart", f"paths.root={tmp_path}", "pipeline.runs=[{method:dpo}]",
                 "pipeline.base_eval=false"]
    cfg = compose("pipeline", overrides)
    with open_dict(cfg):
        cfg.pipeline.sweep = {"train.lr": [1e-5, 4e-5]}
    steps = plan(cfg, overrides)
    trains = [s for s in steps if s.stage == "train"]
    evals = [s for s in steps if s.stage == "eval"]
    assert [s.overrides for s in trains] == [s.overrides for s in evals]
    assert [s.overrides[-1] for s in trains] == ["run_tag=-lr1e-05", "run_tag=-lr4e-05"]
    assert [s.config.output_dir for s in evals] == [f"{tmp_path}/eval/dpo-sequence-lr1e-05-s0",
                                                     f"{tmp_path}/eval/dpo-sequence-lr4e-05-s0"]


def test_a_plain_multirun_refuses_a_colliding_sweep_before_any_job_runs(tmp_path):
    prepare = ["-m", "adpo_data_prep.prepare", "-m", "data=toy", "data.splits.train=10,20", "data.splits.test=5"]
    refused = run([*prepare, f"paths.root={tmp_path}/a"], tmp_path)
    assert refused.returncode != 0
    assert "data.splits.train=10" in refused.stderr and "data.splits.train=20" in refused.stderr
    assert not (tmp_path / "a" / "data").exists()
    # The same sweep with the directory depending on what it sweeps runs both jobs, one after the other.
    ran = run([*prepare, f"paths.root={tmp_path}/b", "paths.data=${paths.root}/data/n${data.splits.train}"], tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert sorted(p.parent.name for p in (tmp_path / "b" / "data").glob("*/train.jsonl")) == ["n10", "n20"]


def test_adpo_sweep_trains_one_process_per_gpu_by_default_and_other_stages_one_per_node():
    assert hydra_argv("train", ["seed=0,1"], dry_run=False) == ["-m", "hydra/launcher=slurm_train", "seed=0,1"]
    assert hydra_argv("eval", ["seed=0,1"], dry_run=False) == ["-m", "hydra/launcher=slurm", "seed=0,1"]
    assert hydra_argv("train", ["hydra/launcher=local"], dry_run=False) == ["-m", "hydra/launcher=local"]
