"""The paper, rehearsed: the README's SLURM commands for the paper, run as written on a GPU-shaped local SLURM node
(8 GPUs as device files, 64 CPUs, 1 TB declared: the paper's requests are scheduled as on a cluster), with the one
group the README documents for it, `+rehearsal=tiny` (conf/rehearsal/tiny.yaml: tiny random models of the paper's
architectures, 16 problems, short answers, 2 training steps on 2 processes), and the model the run rehearses.

Every command of the README's "Sweeps on SLURM" block runs in order (prepare, sample, pairs, weights, train, eval,
the granularity sweep); the outputs are then checked stage by stage: what each stage wrote, for which config."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import start_local_cluster
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
    return [*words, "+rehearsal=tiny", *narrowed]


@pytest.fixture(scope="module")
def gpu_cluster():
    yield from start_local_cluster(gpus=8, cpus=64, memory_mb=1_000_000)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory for the module: the sbatch commands continue from what the sweeps made."""
    return tmp_path_factory.mktemp("rehearsal")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    from adpo_data_prep.tiny_paper_models import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_paper_models")
    for arch in ("llama3_8b",):
        build_tiny_model(arch, out / arch)
    return out


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(),
                    reason=f"the rehearsal reads GSM8K from {SHARED_DATA} (absent)")
def test_the_readmes_slurm_commands_run_the_papers_chain_for_llama3(gpu_cluster, tiny_models, workdir):
    tmp_path = workdir
    model = "llama3_8b"
    commands = readme_block("## Sweeps on SLURM")
    assert [shlex.split(c)[0] for c in commands][:2] == ["adpo-sweep", "adpo-prepare"], commands
    # The README's cluster settings, exported once, as it says.
    env = gpu_cluster.env(stage_env(SBATCH_PARTITION="debug", ADPO_TINY_MODELS=str(tiny_models),
                                    ADPO_SHARED_DATA=str(SHARED_DATA), WANDB_MODE="offline"))
    durations = {}
    for command in commands:
        started = time.monotonic()
        proc = subprocess.run(as_run(command, model), cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        durations[command] = time.monotonic() - started
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print("\n".join(f"{seconds:6.1f} s  {command}" for command, seconds in durations.items()))

    root = tmp_path / "outputs" / "paper" / "gsm8k" / model
    for stage in ("data", "samples", "pairs", "pairs_weighted"):
        manifest = json.loads((root / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
        assert manifest["config"]["model"]["name_or_path"] == str(tiny_models / model)
    sample = json.loads((root / "samples" / "manifest.json").read_text())["config"]
    assert sample["sampling"]["temperature"] == 0.5 and sample["generation"]["backend"] == "vllm"
    assert sample["sampling"]["n"] == 64 and sample["sampling"]["top_p"] == 0.95
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
        assert (root / "train" / run / "model" / "config.json").is_file()
    evals = {p.name for p in (root / "eval").iterdir()}
    assert evals >= {"dpo-sequence-s0", "adpo-token-s0", "cdpo-sequence-s0", "cadpo-token-s0"}, evals
    for run in ("dpo-sequence-s0", "cadpo-token-s0"):
        metrics = json.loads((root / "eval" / run / "metrics.json").read_text())
        assert metrics["total"] == 16 and 0.0 <= metrics["accuracy"] <= 1.0


def wait_until_no_job_is_left(cluster, timeout: float) -> dict[str, str]:
    """Poll until the queue holds only finished jobs; then {job id: state} of every job the cluster remembers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"], env=cluster.env(),
                             capture_output=True, text=True, timeout=30, check=True).stdout
        states = dict(line.split("|") for line in out.split())
        if states and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
                          for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"jobs still queued or running after {timeout:.0f} s")


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(),
                    reason=f"the rehearsal reads GSM8K from {SHARED_DATA} (absent)")
def test_the_readmes_sbatch_templates_and_submit_chain_run_as_written(gpu_cluster, tiny_models, workdir):
    """After the sweeps: the README's plain-SLURM block (submit_chain.sh first, since the sbatch train command
    reads the pairs it makes). ADPO_NPROC_PER_NODE=2: train.sbatch's documented way to start 2 processes on a node
    of 8 GPUs."""
    model = "llama3_8b"
    commands = readme_block("sbatch templates, for users who prefer plain SLURM")
    commands.sort(key=lambda c: not c.startswith("slurm/submit_chain.sh"))
    # A user runs these from the checkout, and the jobs run there (slurm/common.sh cds to it): here the working
    # directory stands in for the checkout, with its slurm/ and .venv/ linked, so that nothing lands in the repo.
    for name in ("slurm", ".venv"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(REPO / name)
    env = gpu_cluster.env(stage_env(SBATCH_PARTITION="debug", ADPO_TINY_MODELS=str(tiny_models),
                                    ADPO_SHARED_DATA=str(SHARED_DATA), WANDB_MODE="offline",
                                    ADPO_NPROC_PER_NODE="2"))
    for command in commands:
        words = as_run(command, model)
        proc = subprocess.run(words, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    states = wait_until_no_job_is_left(gpu_cluster, 900)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in workdir.glob("slurm-*.out"))
    assert len(list(workdir.glob("slurm-*.out"))) >= 4, "where the README says the logs go"
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}"
    root = workdir / "outputs" / "paper" / "gsm8k" / model
    for run in ("cadpo-token-s1", "adpo-static8-s1"):
        manifest = json.loads((root / "train" / run / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["config"]["seed"] == 1, run
    assert json.loads((root / "eval" / "cadpo-token-s1" / "metrics.json").read_text())["total"] == 16

