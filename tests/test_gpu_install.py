"""The GPU install (`scripts/setup.sh --gpu`, the `gpu` extra) resolves: pip's own resolver, asked for what that
script installs, finds one set of versions in which vLLM's torch and transformers satisfy this project's ranges.
Nothing is installed (`pip install --dry-run`; wheels' metadata only, where the index serves it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def pip(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)


def version_of(report: dict, name: str) -> str:
    for item in report["install"]:
        if item["metadata"]["name"].lower().replace("_", "-") == name:
            return item["metadata"]["version"]
    raise AssertionError(f"{name} is not in the resolved set")


def requirement_of(report: dict, package: str, dependency: str) -> str | None:
    for item in report["install"]:
        if item["metadata"]["name"].lower() == package:
            for req in item["metadata"].get("requires_dist", []):
                if re.match(rf"{dependency}\b", req, re.I) and "extra ==" not in req:
                    return req
    return None


def test_the_gpu_extra_resolves_with_vllms_torch_and_our_transformers(tmp_path):
    index = pip("index", "versions", "vllm", timeout=120)
    if index.returncode != 0:
        pytest.skip(f"the package index cannot be reached from here: {index.stderr.strip()[-300:]}")
    report_path = tmp_path / "report.json"
    # What `scripts/setup.sh --gpu` asks for: the project with its gpu, bench and dev extras.
    proc = pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report_path),
               f"{REPO}[gpu,bench,dev]")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    vllm, torch = version_of(report, "vllm"), version_of(report, "torch")
    assert vllm.startswith("0.33."), vllm
    # vLLM pins the torch it was built against; the resolved torch is that one, not this project's CPU pin.
    pinned = requirement_of(report, "vllm", "torch")
    assert pinned and torch in pinned, (pinned, torch)
    transformers = tuple(int(p) for p in version_of(report, "transformers").split(".")[:2])
    assert (5, 16) <= transformers < (5, 20)
    for name in ("deepspeed", "peft", "trl", "hydra-core", "math-verify", "submitit"):
        version_of(report, name)
