"""The paper's setup, one definition: every (model, dataset, stage), composed through every entry point a GPU user
has (the pipeline, the SLURM sweeps, slurm/submit_chain.sh and the sbatch templates, `--cfg job`), shows the values
of tests/paper_setup.csv, the method's values transcribed from ../shared/docs/method.md."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from adpo.config import compose
from adpo.pipeline import plan
from adpo.registry import stage as registered

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).with_name("paper_setup.csv")
MODELS = ("llama3_8b", "gemma3_12b", "qwen3_8b", "deepseek_math_7b")
DATASETS = ("gsm8k", "math500")
# method.md: per-device batch 2 x grad-accum 4; on one 8-GPU node that is a global batch of 64.
PROCESSES_PER_TRAINING_JOB = 8


def expected_settings(stage: str, model: str, dataset: str) -> dict[str, object]:
    with TABLE.open() as f:
        rows = list(csv.DictReader(f))
    return {row["key"]: yaml.safe_load(row["value"]) for row in rows
            if row["stage"] in ("*", stage) and row["model"] in ("*", model) and row["dataset"] in ("*", dataset)}


def mismatches(cfg, stage: str, model: str, dataset: str) -> list[str]:
    out = []
    for key, want in expected_settings(stage, model, dataset).items():
        got = OmegaConf.select(cfg, key, throw_on_missing=True)
        got = OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got
        if got != want:
            out.append(f"{stage} {model}/{dataset}: {key} = {got!r}, the paper's is {want!r}")
    return out


def job_model_and_dataset(overrides: list[str]) -> tuple[str, str]:
    found = dict(o.split("=", 1) for o in overrides if o.startswith(("model=", "data=")))
    return found["model"], found["data"]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{proc.stderr[-3000:]}"
    return proc


def test_the_table_covers_every_stage_model_and_dataset():
    for stage in ("prepare", "sample", "pairs", "weights", "train", "eval"):
        for model in MODELS:
            for dataset in DATASETS:
                assert "model.name_or_path" in expected_settings(stage, model, dataset)
    temperatures = {(m, d) for m in MODELS for d in DATASETS if "sampling.temperature" in
                    expected_settings("sample", m, d)}
    assert len(temperatures) == len(MODELS) * len(DATASETS)


# Each model once and each dataset twice (planning composes every step: ~15 s a plan); the sweeps below cover all
# eight combinations.
PIPELINES = list(zip(MODELS, DATASETS * 2))


@pytest.mark.parametrize(("model", "dataset"), PIPELINES, ids=[f"{m}-{d}" for m, d in PIPELINES])
def test_the_pipeline_runs_every_stage_with_the_papers_settings(model, dataset):
    overrides = ["experiment=paper", f"model={model}", f"data={dataset}"]
    cfg = compose("pipeline", overrides)
    assert cfg.pipeline.nproc_per_node == PROCESSES_PER_TRAINING_JOB
    steps = plan(cfg, overrides)
    assert {s.stage for s in steps} >= {"prepare", "sample", "pairs", "weights", "train", "eval", "aggregate"}
    assert len([s for s in steps if s.stage == "train"]) == 6 * 3, "4 methods + 2 granularities x 3 seeds"
    problems = []
    for step in steps:
        if step.label != "base":
            problems += mismatches(step.config, step.stage, model, dataset)
    assert not problems, "\n".join(problems)


def test_the_readmes_cdpo_readings_pipeline_runs_both_readings_with_the_papers_settings():
    """README "Training": cDPO, cDPO (official code) and cADPO side by side on one node, as written there."""
    [line] = [line for line in (REPO / "README.md").read_text().splitlines()
              if line.startswith("adpo-pipeline experiment=paper") and "cdpo_official" in line]
    overrides = shlex.split(line.split("#")[0])[1:]
    cfg = compose("pipeline", overrides)
    trains = [s for s in plan(cfg, overrides) if s.stage == "train"]
    assert sorted(s.config.method.name for s in trains) == ["cadpo"] * 3 + ["cdpo"] * 3 + ["cdpo_official"] * 3
    problems = []
    for step in trains:
        problems += mismatches(step.config, "train", "llama3_8b", "gsm8k")
        official = step.config.method.name == "cdpo_official"
        assert (step.config.method.reduction, step.config.train.schedule, step.config.train.length_policy) == (
            ("grid", "linear", "drop") if official else ("sum", "cosine", "truncate"))
        assert step.config.input_dir == step.config.paths.weighted_pairs
    assert not problems, "\n".join(problems)


def dry_run_jobs(stage: str, sweep: str, cwd: Path) -> tuple[list[list[str]], list[Path], str]:
    """Each job's overrides, the config it would run (the dry run writes it, resolved) and the resources line, as
    `adpo-sweep STAGE +sweep=SWEEP --dry-run` prints them. Narrowed to seed 0 from the command line, as the README
    shows: seeds change no setting of the table, and every job is composed before its dry run prints (~0.4 s each)."""
    proc = run([sys.executable, "-m", "adpo.sweep", stage, f"+sweep={sweep}", "seed=0", "--dry-run"], cwd)
    jobs = [shlex.split(line.replace("\\:", ":")) for line in re.findall(r"^job \d+: (.*)$", proc.stdout, re.M)]
    configs = cwd / re.search(r"^each job's config, resolved: (.*)/job_<n>\.yaml$", proc.stdout, re.M).group(1)
    resources = re.search(r"^resources: (.*)$", proc.stdout, re.M).group(1)
    return jobs, [configs / f"job_{i}.yaml" for i in range(len(jobs))], resources


SWEEPS = [("prepare", "paper_data", 8), ("sample", "paper_data", 8), ("pairs", "paper_data", 8),
          ("weights", "paper_data", 8), ("train", "paper_main", 32), ("eval", "paper_main", 32),
          ("train", "granularity", 18), ("eval", "granularity", 18), ("train", "cdpo_readings", 24),
          ("eval", "cdpo_readings", 24)]


@pytest.mark.parametrize(("stage", "sweep", "n_jobs"), SWEEPS, ids=[f"{s}-{w}" for s, w, _ in SWEEPS])
def test_the_slurm_sweeps_compose_the_papers_settings(stage, sweep, n_jobs, tmp_path):
    jobs, configs, resources = dry_run_jobs(stage, sweep, tmp_path)
    assert len(jobs) == n_jobs
    config_name = registered(stage).config
    # The written configs are those of the printed overrides (checked on one job: composing costs ~0.4 s a job).
    first = OmegaConf.to_container(compose(config_name, jobs[0]), resolve=True)
    first.pop("hydra", None)
    assert OmegaConf.to_container(OmegaConf.load(configs[0])) == first
    if stage == "train":
        nodes, tasks = (int(re.search(rf"\b{key}=(\d+)", resources).group(1)) for key in ("nodes", "tasks_per_node"))
        assert nodes * tasks == PROCESSES_PER_TRAINING_JOB, resources
    problems = []
    for overrides, config in zip(jobs, configs, strict=True):
        model, dataset = job_model_and_dataset(overrides)
        problems += mismatches(OmegaConf.load(config), stage, model, dataset)
    assert not problems, "\n".join(problems[:20])


def sbatch_gpus_per_node(script: Path) -> int:
    return int(re.search(r"^#SBATCH --gpus-per-node=(\d+)$", script.read_text(), re.M).group(1))


@pytest.mark.parametrize("model", MODELS)
def test_submit_chain_and_the_sbatch_templates_run_the_papers_settings(model, tmp_path):
    # train.sbatch starts one process per GPU of its node (ADPO_NPROC_PER_NODE, else SLURM_GPUS_ON_NODE).
    assert sbatch_gpus_per_node(REPO / "slurm" / "train.sbatch") == PROCESSES_PER_TRAINING_JOB
    problems = []
    for dataset in DATASETS:
        proc = run(["bash", str(REPO / "slurm" / "submit_chain.sh"), "--dry-run", "experiment=paper",
                    f"model={model}", f"data={dataset}", "method=cadpo", "seed=1"], tmp_path)
        stages = []
        for line in proc.stdout.splitlines():
            words = shlex.split(line)
            script = next(i for i, w in enumerate(words) if w.endswith(".sbatch"))
            if words[script].endswith("train.sbatch"):
                stage, overrides = "train", words[script + 1:]
            else:
                stage, overrides = words[script + 1], words[script + 2:]
            stages.append(stage)
            problems += mismatches(compose(registered(stage).config, overrides), stage, model, dataset)
        assert stages == ["prepare", "sample", "pairs", "weights", "train", "eval"]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stage", ["prepare", "sample", "pairs", "weights", "train", "eval"])
def test_cfg_job_shows_the_papers_settings(stage, tmp_path):
    """What `adpo-<stage> experiment=paper model=... data=... --cfg job` prints, for one (model, dataset) each."""
    model, dataset = MODELS[len(stage) % len(MODELS)], DATASETS[len(stage) % 2]
    proc = run([sys.executable, "-m", registered(stage).module, "experiment=paper", f"model={model}",
                f"data={dataset}", "--cfg", "job", "--resolve"], tmp_path)
    cfg = OmegaConf.create(yaml.safe_load(proc.stdout))
    assert not mismatches(cfg, stage, model, dataset)
