"""The weights stage at scale: killed in the middle of the negative adapter's training, a rerun of the same command
resumes from its newest checkpoint and writes the adapters and weights of a run never stopped; gradient
checkpointing changes no weight; a checkpoint made for other inputs stops the stage instead of being resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adpo.registry import stage as registered
from test_weights import stage_overrides, toy_samples

REPO = Path(__file__).resolve().parents[1]
# 24 wrong and 12 correct unique samples; 3 per batch, 3 batches per optimizer step: 8 batches an epoch, in steps of
# 3, 3 and 2 batches (an epoch ends in a short accumulation). The negative adapter trains 3 x 16 = 48 steps and is
# checkpointed every 2; LoRA dropout is on, so the resumed run must also continue the same random state.
OVERRIDES = ("model.max_length=40", "model.max_prompt_length=null", "criticality.weight_chosen=true",
             "criticality.sft.batch_size=3",
             "criticality.sft.grad_accum=3", "criticality.sft.epochs=16", "criticality.sft.lr=0.02",
             "criticality.lora.dropout=0.1", "criticality.save_every=2")
KILL_AT_STEP = 4  # at least this checkpoint of the negative adapter exists when the run is killed (past epoch 0)


def command(root: Path, model_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", registered("weights").module, *stage_overrides(root, model_dir, *overrides)]


def stage_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_weights(root: Path, model_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(root, model_dir, *overrides), check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=stage_env())
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def checkpoint_steps(out: Path, name: str = "negative") -> list[int]:
    directory = out / "checkpoints" / name
    if not directory.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in directory.glob("step-*"))


def adapter_tensors(out: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / name / "adapter_model.safetensors"))


def weights_of(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k.endswith("_weights")}
            for line in (out / "pairs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_dir) -> Path:
    """Graded samples and their pairs, copied into each run's root."""
    from adpo.config import compose
    from adpo.io import atomic_write_jsonl
    from adpo_data_prep import pairs

    root = tmp_path_factory.mktemp("weights_base")
    atomic_write_jsonl(root / "samples" / "shard-00000.jsonl", toy_samples())
    pairs.run(compose("pairs", stage_overrides(root, tiny_model_dir, "pairing.pairs_per_question=2")))
    return root


def new_root(base: Path, tmp_path_factory, name: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    for sub in ("samples", "pairs"):
        shutil.copytree(base / sub, root / sub)
    return root


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory, tiny_model_dir) -> Path:
    root = new_root(base, tmp_path_factory, "uninterrupted")
    run_weights(root, tiny_model_dir, *OVERRIDES)
    return root / "pairs_weighted"


@pytest.fixture(scope="module")
def killed_and_resumed(base, tmp_path_factory, tiny_model_dir):
    """The stage killed (SIGKILL of its process group) once the negative adapter has a checkpoint of step >=
    KILL_AT_STEP; a copy of its output as the kill left it; then the same command again."""
    root = new_root(base, tmp_path_factory, "killed")
    out = root / "pairs_weighted"
    log_path = root / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(root, tiny_model_dir, *OVERRIDES), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=stage_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not any(s >= KILL_AT_STEP for s in checkpoint_steps(out)):
                assert proc.poll() is None, "the stage ended before the negative adapter was checkpointed:\n" + \
                    log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint of the negative adapter in time"
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
    assert (out / "positive" / "adapter_model.safetensors").is_file()
    assert not (out / "negative").exists() and not (out / "pairs.jsonl").exists()
    steps_at_kill = checkpoint_steps(out)
    snapshot = root / "as_killed"
    shutil.copytree(out, snapshot)
    resumed = run_weights(root, tiny_model_dir, *OVERRIDES)
    return out, snapshot, steps_at_kill, resumed.stdout + resumed.stderr


def test_a_killed_run_resumes_mid_adapter_to_the_same_adapters_and_weights(killed_and_resumed, uninterrupted):
    out, _, steps_at_kill, log = killed_and_resumed
    newest = max(steps_at_kill)
    assert newest >= KILL_AT_STEP
    # The positive adapter is reused; the negative resumes from the newest checkpoint, not from step 0.
    assert "reusing the positive adapter" in log
    resumed = re.search(r"weights: resuming the negative adapter at step (\d+)/(\d+) from (\S+)", log)
    assert resumed, log[-3000:]
    assert int(resumed[1]) == newest and int(resumed[2]) == 48
    assert Path(resumed[3]).name == f"step-{newest:08d}"
    # Nothing was trained again before it (the positive adapter is reused), and training went on from there.
    assert "checkpoint at step" not in log.split("resuming the negative")[0]
    assert newest + 2 >= 48 or f"LoRA SFT (negative): checkpoint at step {newest + 2}/48" in log

    # The same adapters, reports and weights as a run that was never stopped.
    for name in ("positive", "negative"):
        got, expected = adapter_tensors(out, name), adapter_tensors(uninterrupted, name)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
        report = json.loads((out / name / "train_info.json").read_text())["report"]
        assert report == pytest.approx(json.loads((uninterrupted / name / "train_info.json").read_text())["report"])
    got, expected = weights_of(out), weights_of(uninterrupted)
    assert len(got) == len(expected) == 12
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for side in a:
            assert a[side] == pytest.approx(b[side], abs=1e-6)
    # The in-progress checkpoints are gone once the adapters are saved; the stage is complete.
    assert not (out / "checkpoints").exists() and not (uninterrupted / "checkpoints").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_gradient_checkpointing_changes_no_weight(uninterrupted, tiny_model_dir):
    from adpo.config import compose
    from adpo_data_prep import weights

    root = uninterrupted.parent
    out = root / "pairs_weighted_checkpointed"
    run_weights(root, tiny_model_dir, *OVERRIDES, f"output_dir={out}", "criticality.gradient_checkpointing=true",
                "criticality.save_every=0")
    for name in ("positive", "negative"):
        got, expected = adapter_tensors(out, name), adapter_tensors(uninterrupted, name)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(weights_of(out), weights_of(uninterrupted), strict=True):
        for side in b:
            assert a[side] == pytest.approx(b[side], abs=1e-4)
    # Neither key is part of the stage's identity nor of an adapter's key: switching them keeps the work.
    from adpo.manifest import identity

    plain = compose("weights", stage_overrides(root, tiny_model_dir, *OVERRIDES))
    other = compose("weights", stage_overrides(root, tiny_model_dir, *OVERRIDES, "criticality.save_every=7",
                                               "criticality.gradient_checkpointing=true"))
    assert identity(other, "weights") == identity(plain, "weights")
    assert weights.adapter_key(other, "negative", {}) == weights.adapter_key(plain, "negative", {})


def test_a_checkpoint_made_for_other_inputs_stops_the_stage(killed_and_resumed, tmp_path, base, tiny_model_dir):
    """The killed run's negative checkpoint (positive adapter removed, so that the checkpoint is the first thing
    compared) under another learning rate: the stage stops with the conflict, before training, and keeps it."""
    _, snapshot, steps_at_kill, _ = killed_and_resumed
    for sub in ("samples", "pairs"):
        shutil.copytree(base / sub, tmp_path / sub)
    out = tmp_path / "pairs_weighted"
    shutil.copytree(snapshot, out)
    shutil.rmtree(out / "positive")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = [o for o in OVERRIDES if not o.startswith("criticality.sft.lr=")] + ["criticality.sft.lr=0.01"]
    proc = run_weights(tmp_path, tiny_model_dir, *other, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "OutputConflict" in text and "in-progress checkpoint of the negative LoRA adapter" in text, text[-3000:]
    assert "sft.lr: 0.02 -> 0.01" in text
    assert "LoRA SFT" not in text and "resuming" not in text  # nothing trained
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert checkpoint_steps(out) == steps_at_kill
