"""The local SLURM cluster as a pytest fixture: installed with apt-get if missing, started under /tmp, stopped by pid."""

from __future__ import annotations

import os
import shutil
import sys
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The cluster tooling lives with the sbatch templates (slurm/), outside the installed packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slurm"))
from local_cluster import LocalCluster, ensure_installed  # noqa: E402


def start_local_cluster(**shape) -> Iterator[LocalCluster]:
    """A running cluster for a fixture; `shape`: LocalCluster's cpus, memory_mb, gpus (a GPU-shaped node)."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurmd launches jobs; munged runs as the munge user)")
    try:
        ensure_installed()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"SLURM not available: {e}")
    # Not under pytest's 0700 tmp dirs: munged (user munge) must reach its socket directory.
    root = Path(tempfile.mkdtemp(prefix="adpo-slurm-", dir="/tmp"))
    root.chmod(0o755)
    cluster = LocalCluster(root, **shape)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def job_states(cluster: LocalCluster, job_id: str) -> dict[str, str]:
    """{job or array task id: state} as the sacct stand-in reports it (what submitit sees)."""
    out = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id],
                         env=cluster.env(), capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("|") for line in out.splitlines()[1:] if line.strip()]
    return {row[0]: row[1] for row in rows}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
