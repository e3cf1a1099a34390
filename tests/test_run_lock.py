"""One run per output directory (adpo.run_lock): a second pipeline on one root is refused within seconds naming the
holder, a killed holder's lock is taken over, different directories and the ranks of one run are not blocked."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adpo.run_lock import OutputInUse, lock_target, output_lock

REPO = Path(__file__).resolve().parents[1]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def hold_lock(output_dir: Path, config_name: str = "prepare") -> subprocess.Popen:
    """Another process holding the lock of output_dir through output_lock, until killed."""
    code = ("import sys, time; from omegaconf import OmegaConf; from adpo.run_lock import output_lock\n"
            f"with output_lock(OmegaConf.create({{'output_dir': {str(output_dir)!r}}}), {config_name!r}):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def stage_cfg(output_dir: Path):
    return OmegaConf.create({"output_dir": str(output_dir)})


def test_a_second_pipeline_on_one_root_is_refused_naming_the_holder_then_takes_over_once_it_is_killed(
        tmp_path, caplog):
    # The real pipeline, kept busy cheaply: its first stage's "python" is a script that sleeps.
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nexec sleep 600\n")
    slow.chmod(0o755)
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "adpo.pipeline", "experiment=tiny_chain", f"paths.root={root}",
           f"pipeline.python={slow}", "wandb=disabled"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                             start_new_session=True)
    lock = root / ".pipeline.lock"
    try:
        wait_for(lambda: lock.is_file() and lock.read_text().strip(), 60, "the first pipeline's lock")
        assert json.loads(lock.read_text())["pid"] == first.pid
        wait_for(lambda: (root / "logs" / "01-prepare.log").is_file(), 60, "the first pipeline's first stage")

        start = time.time()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
        seconds = time.time() - start
        assert second.returncode != 0 and seconds < 20, (seconds, second.stderr[-2000:])
        assert f"is in use by another run: pid {first.pid} on host" in second.stderr, second.stderr[-2000:]
        assert str(lock) in second.stderr and "experiment=tiny_chain" in second.stderr
        assert first.poll() is None, "the refused run must leave the first one alone"
        assert "02-" not in " ".join(p.name for p in (root / "logs").iterdir())
        # The pipeline's root lock does not block a stage's own directory (its children lock those).
        with output_lock(stage_cfg(root / "data"), "prepare"):
            pass
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    # Killed with SIGKILL, the first run left its lock file but no lock: the next run takes it over and says so.
    assert lock.is_file()
    cfg = OmegaConf.create({"paths": {"root": str(root)}, "pipeline": {"dry_run": False}})
    with caplog.at_level(logging.WARNING, logger="adpo.run_lock"), output_lock(cfg, "pipeline"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {first.pid} on host" in caplog.text and "not running" in caplog.text
    assert not lock.exists(), "a run that ends removes its lock file"


def test_different_directories_are_not_blocked_and_the_same_one_is(tmp_path):
    holder = hold_lock(tmp_path / "samples")
    try:
        with output_lock(stage_cfg(tmp_path / "pairs"), "pairs") as path:  # another stage's directory, meanwhile
            assert path == tmp_path / ".pairs.lock" and path.is_file()
        with pytest.raises(OutputInUse, match=rf"samples is in use by another run: pid {holder.pid} on host"):
            with output_lock(stage_cfg(tmp_path / "samples"), "sample"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_lives_beside_the_directory_that_atomic_directory_replaces(tmp_path):
    from adpo.io import atomic_directory

    out = tmp_path / "pairs"
    with output_lock(stage_cfg(out), "pairs") as path:
        for content in ("a", "b"):  # written twice: the second replaces the directory whole
            with atomic_directory(out) as tmp:
                (tmp / "pairs.jsonl").write_text(content)
        assert path.is_file() and path.parent == out.parent
        probe = subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                                "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(path)], capture_output=True)
        assert probe.returncode != 0 and b"BlockingIOError" in probe.stderr, "still held after the swaps"


def test_jobs_run_one_after_another_in_one_process_each_take_and_release_their_lock(tmp_path):
    out = tmp_path / "data"
    for _ in range(2):  # the serial launcher's jobs: the second is not refused by the first
        with output_lock(stage_cfg(out), "prepare") as path:
            with output_lock(stage_cfg(out), "prepare"):  # re-entered in one process, not refused
                pass
            assert path.is_file()
        assert not path.exists()


def test_ranks_other_than_0_of_a_distributed_run_share_rank_0s_lock(tmp_path, monkeypatch):
    holder = hold_lock(tmp_path / "train")  # rank 0 of this run, say
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        assert lock_target(stage_cfg(tmp_path / "train"), "train") is None
        with output_lock(stage_cfg(tmp_path / "train"), "train") as path:
            assert path is None
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(OutputInUse, match=f"pid {holder.pid}"):
            with output_lock(stage_cfg(tmp_path / "train"), "train"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_configs_without_an_output_and_dry_runs_take_no_lock(tmp_path):
    assert lock_target(OmegaConf.create({"output_dir": None}), "eval") is None
    dry = OmegaConf.create({"paths": {"root": str(tmp_path)}, "pipeline": {"dry_run": True}})
    with output_lock(dry, "pipeline") as path:
        assert path is None and not (tmp_path / ".pipeline.lock").exists()
