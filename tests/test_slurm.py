"""SLURM for real: a single-node cluster on localhost, Hydra sweeps through the submitit launcher, the sbatch
templates' requeue on preemption, and the dry run. The cluster is installed (apt-get) and started by the fixture."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slurm_cluster import job_states, start_local_cluster, wait_for
from train_helpers import read_wandb_records, stage_env, write_pairs

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
pytestmark = pytest.mark.slow

# No GPUs on the local cluster; small jobs sharing two cores.
LOCAL_LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
                  "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15"]


@pytest.fixture(scope="session")
def slurm():
    yield from start_local_cluster()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    write_pairs(out / "pairs.jsonl", n=16)
    return out


def train_args(root: Path, model: Path, pairs: Path, *extra: str) -> list[str]:
    return [f"paths.root={root}", f"model.name_or_path={model}", f"input_dir={pairs}", "train=tiny",
            "deepspeed=zero2", "progress=false", *extra]


def sweep(args: list[str], env: dict, timeout: float = 600, dry_run: bool = False) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "adpo.sweep", *args, *(["--dry-run"] if dry_run else [])]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def wandb_runs(root: Path) -> list[dict]:
    """group, name, job type, config and logged history of every offline run under root."""
    runs = []
    for path in sorted(root.rglob("run-*.wandb")):
        run: dict = {"history": []}
        for record in read_wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.update(group=r.run_group, name=r.display_name, job_type=r.job_type,
                           config={i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
        runs.append(run)
    return runs


# --- dry run: no cluster needed --------------------------------------------------------------------------------
def test_dry_run_lists_each_job_and_the_sbatch_script(tmp_path):
    args = ["train", "+sweep=granularity", "model=tiny", "data=gsm8k", f"paths.root={tmp_path}",
            "hydra.launcher.partition=gpu", "hydra.launcher.account=lab42", "hydra.launcher.qos=high"]
    proc = sweep(args, stage_env(), timeout=300, dry_run=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = re.findall(r"^job (\d+): (.*)$", proc.stdout, flags=re.M)
    # method=adpo x {token, static:4, static:8} x seeds {0, 1, 2}; model and data narrowed on the command line.
    assert len(jobs) == 9, proc.stdout
    # Hydra escapes the colon in the sweep overrides it prints (static\:4); the config value is static:4.
    combos = {(re.search(r"method.granularity=(\S+)", o).group(1).replace("\\:", ":"),
               re.search(r"seed=(\d)", o).group(1)) for _, o in jobs}
    assert combos == {(g, s) for g in ("token", "static:4", "static:8") for s in "012"}
    assert all("model=tiny" in o and "method=adpo" in o for _, o in jobs)
    script = proc.stdout.split("--- sbatch script", 1)[1]
    # The train stage's default launcher is slurm_train: one DeepSpeed process per GPU, 8 per node.
    for line in ("#SBATCH --array=0-8%9", "#SBATCH --partition=gpu", "#SBATCH --account=lab42", "#SBATCH --qos=high",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=480GB", "#SBATCH --time=2880", "#SBATCH --requeue", "submitit.core._submit"):
        assert line in script, line
    assert "global batch: 2 x 4 x 8 processes = 64" in proc.stdout
    assert not list(tmp_path.rglob(".submitit")), "a dry run submits nothing"


def test_dry_run_fails_on_a_config_that_does_not_compose(tmp_path):
    proc = sweep(["train", "+sweep=paper_main", "model=tiny", "data=gsm8k", "method=dpo,no_such_method",
                  f"paths.root={tmp_path}"], stage_env(), timeout=300, dry_run=True)
    assert proc.returncode != 0
    assert "no_such_method" in proc.stderr


def test_cluster_settings_exported_once_reach_the_sweeps_sbatch_script(tmp_path):
    """README: `export SBATCH_PARTITION=... SBATCH_ACCOUNT=... SBATCH_QOS=... ADPO_SETUP=...` serves every entry
    point; sbatch reads the SBATCH_* variables itself for the templates, the launcher configs read them here."""
    env = stage_env(SBATCH_PARTITION="gpu", SBATCH_ACCOUNT="lab42", SBATCH_QOS="high",
                    ADPO_SETUP="module load cuda/12.4")
    proc = subprocess.run([PYTHON, "-m", "adpo.sweep", "sample", "model=tiny", "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = proc.stdout.split("--- sbatch script", 1)[1]
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab42", "#SBATCH --qos=high",
                 "\nmodule load cuda/12.4\n"):
        assert line in script, line


def test_submit_chain_dry_run_chains_stages_with_dependencies():
    proc = subprocess.run(["bash", "slurm/submit_chain.sh", "--dry-run", "model=tiny", "method=cadpo", "seed=1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    lines = proc.stdout.strip().splitlines()
    assert [re.search(r"--job-name=adpo-(\w+)", l).group(1) for l in lines] == [
        "prepare", "sample", "pairs", "weights", "train", "eval"]
    assert all(f"afterok:\\<{prev}\\>" in line for prev, line in zip(["prepare", "sample", "pairs", "weights", "train"],
                                                                   lines[1:]))
    assert "--gpus-per-node=0" in lines[0] and "--gpus-per-node=0" not in lines[1]  # prepare needs no GPU
    plain = subprocess.run(["bash", "slurm/submit_chain.sh", "--dry-run", "method=adpo"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "adpo-weights" not in plain, "weights only for cdpo/cadpo"
    # The composed config decides, not the spelling: ADPO with weights switched on needs the weights stage.
    weighted = subprocess.run(["bash", "slurm/submit_chain.sh", "--dry-run", "--from", "train", "method=adpo",
                               "method.use_weights=true"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                              check=True).stdout.splitlines()
    assert [re.search(r"--job-name=adpo-(\w+)", l).group(1) for l in weighted] == ["train", "eval"]
    listed = subprocess.run(["bash", "slurm/submit_chain.sh", "--dry-run", "--from", "weights", "method=adpo",
                             "method.use_weights=true"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "adpo-weights" in listed.stdout


def test_the_readmes_local_cluster_commands_start_use_and_stop_a_cluster(slurm):
    # A second cluster beside the fixture's (ports are picked free), through the README's commands as written.
    root = Path(tempfile.mkdtemp(prefix="adpo-readme-slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged (user munge) must reach its socket directory
    env = {**os.environ, "ADPO_SLURM_DIR": str(root), "ADPO_PYTHON": PYTHON}

    def script(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    try:
        up = script('slurm/local_cluster.sh start && eval "$(slurm/local_cluster.sh env)" && sinfo -h -o %P '
                    '&& slurm/local_cluster.sh status')
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        assert re.search(r"^debug\*?$", up.stdout, re.M), up.stdout  # sinfo reached this cluster's controller
        status = json.loads(up.stdout[up.stdout.index("{"):])
        assert status["root"] == str(root) and status["node"] and {"slurmctld", "slurmd"} <= set(status["daemons"])
    finally:
        down = script("slurm/local_cluster.sh stop")
        after = script("slurm/local_cluster.sh status", timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    assert down.returncode == 0, down.stderr[-2000:]
    # Stopped: status answers at once that nothing runs (no sinfo waiting for a controller that is gone).
    assert after.returncode == 1 and json.loads(after.stdout)["daemons"] == {}


# --- real sweeps on the local cluster ----------------------------------------------------------------------------
def test_granularity_sweep_runs_as_a_slurm_array(slurm, tiny_model_dir, pairs_dir, tmp_path):
    root = tmp_path / "runs"
    env = slurm.env(stage_env(WANDB_MODE="offline"))
    # The granularity sweep narrowed from the command line (which wins over its params) to two jobs: both run at once.
    args = ["train", "+sweep=granularity", "model=tiny", "data=gsm8k", "seed=3", "method.granularity=token,static:8",
            *LOCAL_LAUNCHER,
            *train_args(root, tiny_model_dir, pairs_dir, "train.max_steps=3", "wandb=offline")]
    started = time.monotonic()
    proc = sweep(args, env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"2-job sweep on local SLURM: {time.monotonic() - started:.1f} s")

    # One array of two tasks, all COMPLETED, as the scheduler saw them.
    submitit_dirs = list(root.rglob(".submitit"))
    assert len(submitit_dirs) == 1
    array_id = re.match(r"(\d+)_", next(p.name for p in submitit_dirs[0].iterdir() if "_" in p.name)).group(1)
    # (a task has written its result a moment before its process exits and SLURM marks it COMPLETED)
    expected = {f"{array_id}_{i}": "COMPLETED" for i in range(2)}
    wait_for(lambda: job_states(slurm, array_id) == expected, 60, f"array {array_id} to be COMPLETED")

    for granularity in ("token", "static8"):
        out = root / "train" / f"adpo-{granularity}-s3"
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert manifest["config"]["method"]["granularity"].replace(":", "") == granularity
        assert manifest["config"]["seed"] == 3 and manifest["config"]["wandb"]["group"] == "granularity"
        assert (out / "model" / "config.json").is_file()
        steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]

    runs = wandb_runs(root / "wandb")
    assert sorted(r["name"] for r in runs) == ["adpo-static8-tiny-gsm8k-s3", "adpo-token-tiny-gsm8k-s3"]
    assert {r["group"] for r in runs} == {"granularity"} and {r["job_type"] for r in runs} == {"train"}
    for run in runs:
        assert run["config"]["seed"] == 3 and run["config"]["method"]["name"] == "adpo"
        assert "+sweep=granularity" in run["config"]["hydra_job"]["overrides"]
        assert [row["_step"] for row in run["history"]] == [1, 2, 3] and all("loss" in r for r in run["history"])


def test_a_failing_job_fails_the_sweep_with_its_error(slurm, tiny_model_dir, tmp_path):
    missing = tmp_path / "no_pairs_here"
    args = ["train", "method=dpo,adpo", *LOCAL_LAUNCHER,
            *train_args(tmp_path / "runs", tiny_model_dir, missing, "wandb=disabled")]
    started = time.monotonic()
    proc = sweep(args, slurm.env(stage_env()), timeout=600)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr, proc.stderr[-4000:]
    assert time.monotonic() - started < 600


def test_a_job_killed_without_a_result_ends_the_sweep(slurm, tiny_model_dir, pairs_dir, tmp_path):
    """A job that dies before writing its result (here: cancelled) must end the sweep, not make it wait forever."""
    root = tmp_path / "runs"
    args = [PYTHON, "-m", "adpo.sweep", "train", "seed=0", *LOCAL_LAUNCHER,
            *train_args(root, tiny_model_dir, pairs_dir, "train.max_steps=100000", "wandb=disabled")]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=slurm.env(stage_env()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def our_running_job():
            # This sweep's job (its submitit folder is named after it), once SLURM runs it.
            folders = [p.name for p in root.rglob(".submitit/*") if p.is_dir() and p.name.isdigit()]
            return folders[0] if folders and job_states(slurm, folders[0]).get(folders[0]) == "RUNNING" else None

        job = wait_for(our_running_job, 300, "the sweep's job to run")
        time.sleep(2)
        subprocess.run(["scancel", job], env=slurm.env(), check=True, timeout=30)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "CANCELLED" in stderr or "has not produced any output" in stderr, stderr[-3000:]


# --- the sbatch templates: requeue on preemption ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["usr1", "scontrol"])
def test_requeued_training_resumes_from_its_checkpoint(slurm, tiny_model_dir, pairs_dir, tmp_path, how):
    """usr1: the pre-timeout signal (--signal=B:USR1) reaches the batch script, which forwards it and requeues
    itself; scontrol: the job is requeued from outside (as on preemption). Both restart the same job, whose train
    stage resumes from its newest checkpoint."""
    out = tmp_path / "train"
    log = tmp_path / "job.out"
    # The README's cluster settings, set once in the environment: SLURM's SBATCH_PARTITION and ADPO_SETUP.
    env = slurm.env(stage_env(ADPO_ROOT=str(REPO_ROOT), SBATCH_PARTITION="debug",
                              ADPO_SETUP="echo adpo-setup-ran on $(hostname)"))
    submit = subprocess.run(
        ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G", f"--output={log}",
         str(REPO_ROOT / "slurm" / "train.sbatch"),
         *train_args(tmp_path / "runs", tiny_model_dir, pairs_dir, f"output_dir={out}", "train.max_steps=60",
                     "train.save_every=5", "wandb=disabled")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    job = submit.stdout.strip().split(";")[0]

    latest = out / "checkpoints" / "latest"
    wait_for(latest.is_file, 300, f"a first checkpoint in {latest.parent}")
    if how == "usr1":
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True, timeout=30)
    else:
        subprocess.run(["scontrol", "requeue", job], env=env, check=True, timeout=30)

    def finished():
        state = job_states(slurm, job).get(job)
        return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None

    assert wait_for(finished, 600, f"job {job} to finish") == "COMPLETED", log.read_text()[-4000:]
    text = log.read_text()
    show = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    assert "Restarts=1" in show
    assert "restart 1" in text
    assert text.count("adpo-setup-ran on ") == 2, "ADPO_SETUP runs at the start of every run of the job"
    assert "Partition=debug" in show
    resumed = re.search(r"resumed from \S+ at step (\d+) of 60", text)
    assert resumed and int(resumed.group(1)) >= 5, text[-4000:]
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61)), "after the resume, every step is logged once"
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


# --- submitit's own warning signal: USR2 before the time limit -------------------------------------------------------
def test_a_sweep_job_sent_submitits_usr2_checkpoints_is_requeued_and_resumes(slurm, tiny_model_dir, pairs_dir,
                                                                            tmp_path):
    """submitit asks SLURM for `--signal=USR2@<signal_delay_s>`: every task of the job gets USR2 before the time
    limit. Both ranks of a 2-process DeepSpeed job checkpoint at the same step, rank 0 hands the signal to submitit,
    which requeues the job; the restarted job resumes from that checkpoint and the sweep ends complete."""
    root = tmp_path / "runs"
    launcher = ["hydra/launcher=slurm_train", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
                "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4",
                "hydra.launcher.timeout_min=20"]
    args = [PYTHON, "-m", "adpo.sweep", "train", "seed=0", *launcher,
            *train_args(root, tiny_model_dir, pairs_dir, "train.max_steps=40", "train.save_every=4",
                        "wandb=disabled")]
    proc = subprocess.Popen(args, cwd=tmp_path, env=slurm.env(stage_env()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = root / "train" / "adpo-token-s0"
    try:
        wait_for((out / "checkpoints" / "latest").is_file, 400, f"a first checkpoint in {out}")
        job = next(p.name for p in root.rglob(".submitit/*") if p.is_dir() and p.name.isdigit())
        subprocess.run(["scancel", "--signal=USR2", job], env=slurm.env(), check=True, timeout=30)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    show = subprocess.run(["scontrol", "show", "job", job], env=slurm.env(), capture_output=True, text=True).stdout
    assert "Restarts=1" in show, show
    logs = "".join(p.read_text(errors="replace") for p in root.rglob(f".submitit/{job}/*_log.*"))
    assert "got SIGUSR2" in logs and "requeu" in logs.lower(), logs[-4000:]
    resumed = re.search(r"resumed from \S+ at step (\d+) of 40", logs)
    assert resumed and int(resumed.group(1)) >= 4, logs[-4000:]
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41)), "after the resume, every step is logged once"
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


# --- a GPU-shaped node: the paper's resource requests, scheduled as on a GPU cluster ---------------------------------
@pytest.fixture(scope="module")
def gpu_slurm():
    # 8 GPUs (device files), 64 CPUs and 1 TB declared: what the paper's jobs ask of one node.
    yield from start_local_cluster(gpus=8, cpus=64, memory_mb=1_000_000)


def test_a_gpu_shaped_node_schedules_the_papers_requests_and_hands_out_gpus(gpu_slurm, tmp_path):
    out = tmp_path / "job.out"
    submit = subprocess.run(
        ["sbatch", "--parsable", "--gpus-per-node=8", "--cpus-per-task=64", "--mem=480G", f"--output={out}",
         "--wrap", "echo gpus=$SLURM_GPUS_ON_NODE devices=$CUDA_VISIBLE_DEVICES"],
        cwd=tmp_path, env=gpu_slurm.env(), capture_output=True, text=True, timeout=60, check=True)
    job = submit.stdout.strip()
    assert wait_for(lambda: job_states(gpu_slurm, job).get(job) == "COMPLETED", 60, f"job {job} to complete")
    assert out.read_text().split() == ["gpus=8", "devices=0,1,2,3,4,5,6,7"]

