"""The train stage run for real on CPU, through its command line: DeepSpeed ZeRO-2/3 on 2 gloo ranks against one
process, resume after a SIGKILL, wandb's offline files, cADPO with unit weights against ADPO, LoRA merged after
ZeRO-3, malformed input. One 1-process run (module fixture) is the reference the others are compared with.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from train_helpers import (PYTHON, REPO_ROOT, load_state_dict, read_metrics, run_train, stage_env, train_overrides,
                           wandb_history, write_pairs)

pytestmark = pytest.mark.slow

STEPS = 16
# 16 pairs, global batch 4 (micro 2 x accumulation 2 on one rank, or micro 2 x 2 ranks): 4 steps per epoch.
COMMON = [f"train.max_steps={STEPS}", "train.save_every=4", "train.keep_checkpoints=2", "train.log_every=1",
          "train.lr=3e-3", "method.granularity=static:3"]


def assert_losses_match(a: list[dict], b: list[dict], rel=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b):
        # While the policy is still the reference (no update yet: the warm-up starts at lr 0), margins are 0 up to
        # rounding (log-probs computed in chunks against a reference computed whole), and the fraction of segments
        # won is the sign of that rounding.
        at_reference = abs(ra["rewards/margins"]) < 1e-5
        compared = ("loss", "rewards/margins", "logps/chosen") + (() if at_reference else ("segments/win_fraction",))
        for name in compared:
            assert math.isclose(ra[name], rb[name], rel_tol=rel, abs_tol=1e-6), (ra["step"], name, ra[name], rb[name])


def assert_same_weights(dir_a: Path, dir_b: Path, atol=1e-6):
    a, b = load_state_dict(dir_a), load_state_dict(dir_b)
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("train_stage")
    pairs_dir = root / "pairs"
    write_pairs(pairs_dir / "pairs.jsonl", n=16, seed=1)
    return root, pairs_dir


@pytest.fixture(scope="module")
def baseline(work, tiny_model_dir):
    """One process, no launcher, ZeRO-2, gradient accumulation 2, wandb offline; log-probs from the model's whole
    logits (train.logps_chunk_size=null), which the chunked runs below are compared with."""
    root, pairs_dir = work
    out = root / "single"
    proc = run_train(train_overrides(root, tiny_model_dir, pairs_dir, out, *COMMON, "wandb=offline",
                                     "train.gradient_accumulation_steps=2", "train.logps_chunk_size=null"))
    return out, proc


def test_single_process_run_writes_model_metrics_and_manifest(baseline, work, tiny_model_dir):
    out, proc = baseline
    rows = read_metrics(out)
    assert len(rows) == STEPS
    expected = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "rewards/saturated", "logps/chosen", "logps/rejected", "segments/win_fraction", "segments/per_pair",
                "segments/saturated", "grad_norm", "learning_rate", "tokens_per_second"}
    assert expected <= set(rows[0])
    # The policy starts as the reference: zero log-ratios on the first step, then it learns the preference.
    assert abs(rows[0]["rewards/margins"]) < 1e-5
    assert rows[-1]["rewards/margins"] > 0.5 and rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["grad_norm"] > 0 and r["tokens_per_second"] > 0 for r in rows)
    # Warmup then cosine decay.
    lrs = [r["learning_rate"] for r in rows]
    assert max(lrs) == pytest.approx(3e-3) and lrs[-1] < lrs[len(lrs) // 2] < max(lrs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["outputs"]["steps"] == STEPS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert AutoTokenizer.from_pretrained(out / "model").eos_token_id == model.config.eos_token_id
    base = load_state_dict(tiny_model_dir)
    trained = load_state_dict(out / "model")
    assert sorted(base) == sorted(trained) and any(not torch.equal(base[k], trained[k]) for k in base)
    # The reference cache sits beside the pairs, one file, for the next runs to reuse.
    assert len(list((work[1] / "reference_logps").glob("*.pt"))) == 1
    assert "reference log-probs cached in" in proc.stdout + proc.stderr


def test_wandb_offline_files_hold_the_logged_metrics(baseline, work):
    out, _ = baseline
    runs = list((work[0] / "wandb").rglob("offline-run-*"))
    assert len(runs) == 1
    history = wandb_history(runs[0])
    assert [h["_step"] for h in history] == list(range(1, STEPS + 1))
    for logged, row in zip(history, read_metrics(out)):
        for name in ("loss", "rewards/accuracies", "segments/per_pair", "grad_norm", "learning_rate"):
            assert logged[name] == pytest.approx(row[name], rel=1e-9), name


def test_rerun_of_a_finished_run_is_skipped(baseline, work, tiny_model_dir):
    from adpo.config import compose
    from adpo.train import run

    out, _ = baseline
    before = (out / "manifest.json").read_text()
    root, pairs_dir = work
    cfg = compose("train", train_overrides(root, tiny_model_dir, pairs_dir, out, *COMMON, "wandb=offline",
                                           "train.gradient_accumulation_steps=2"))
    assert run(cfg) is None  # finished work: returns before any process group or model is set up
    assert (out / "manifest.json").read_text() == before


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_ranks_match_one_process(baseline, work, tiny_model_dir, stage):
    """2 gloo ranks x micro 2 see the same global batches as 1 rank x accumulation 2: same losses, same weights.
    The ZeRO-3 run gets its own copy of the pairs, so it also computes the reference log-probs on 2 ranks. The ranks
    compute log-probs 5 positions at a time (the baseline: whole logits), lm_head trained and partitioned too."""
    root, pairs_dir = work
    if stage == "zero3":
        own = root / "pairs_zero3"
        own.mkdir()
        shutil.copy(pairs_dir / "pairs.jsonl", own / "pairs.jsonl")
        pairs_dir = own
    out = root / f"two_{stage}"
    hydra_runs = set((root / ".hydra" / "train").iterdir())
    proc = run_train(train_overrides(root, tiny_model_dir, pairs_dir, out, *COMMON, f"deepspeed={stage}",
                                     "train.gradient_accumulation_steps=1", "train.logps_chunk_size=5"), nproc=2)
    assert "2 ranks" in proc.stdout + proc.stderr
    assert_losses_match(read_metrics(baseline[0]), read_metrics(out))
    assert_same_weights(baseline[0] / "model", out / "model")
    if stage == "zero3":
        assert len(list((pairs_dir / "reference_logps").glob("*.pt"))) == 1
        assert not list((pairs_dir / "reference_logps").glob(".*part*"))
    # Only rank 0 wrote a Hydra run directory and log; rank 1 wrote nothing of Hydra's anywhere.
    new_runs = set((root / ".hydra" / "train").iterdir()) - hydra_runs
    assert len(new_runs) == 1 and [p.name for p in next(iter(new_runs)).glob("*.log")] == ["train.log"]
    assert not (REPO_ROOT / "train.log").exists() and not (REPO_ROOT / ".hydra").exists()


def test_resume_after_kill_gives_the_same_weights(baseline, work, tiny_model_dir):
    root, pairs_dir = work
    out = root / "killed"
    wandb_dir = root / "wandb_killed"
    overrides = train_overrides(root, tiny_model_dir, pairs_dir, out, *COMMON, "train.gradient_accumulation_steps=2",
                                "wandb=offline", f"wandb.dir={wandb_dir}")
    proc = subprocess.Popen([PYTHON, "-m", "adpo.train", *overrides], cwd=REPO_ROOT, env=stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        # Kill once a checkpoint exists and training has gone past it (work since the checkpoint is lost).
        while proc.poll() is None and time.monotonic() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 6:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    # Killed mid-run: no model, and a manifest that says so (written before training touched the directory).
    assert not (out / "model").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"

    resumed = run_train(overrides)
    log = resumed.stdout + resumed.stderr
    match = re.search(rf"resumed from .* at step (\d+) of {STEPS}", log)
    assert match, log[-3000:]
    resumed_at = int(match.group(1))
    assert 4 <= resumed_at < STEPS and resumed_at % 4 == 0
    assert_losses_match(read_metrics(baseline[0]), read_metrics(out), rel=1e-6)
    assert_same_weights(baseline[0] / "model", out / "model", atol=1e-7)
    # wandb: the resumed run continues the same run id, logging the steps it trained again. (What the killed run's
    # file holds depends on what wandb had flushed when it was killed.)
    runs = sorted(wandb_dir.rglob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1
    assert [h["_step"] for h in wandb_history(runs[-1])] == list(range(resumed_at + 1, STEPS + 1))


def test_usr1_checkpoints_the_current_step_then_resume_matches(baseline, work, tiny_model_dir):
    """SLURM's warning signal (USR1) between two periodic checkpoints: the run saves the step it is at, exits with
    the signal's status, and the rerun resumes from that step, not from the older periodic checkpoint."""
    root, pairs_dir = work
    out = root / "preempted"
    overrides = train_overrides(root, tiny_model_dir, pairs_dir, out, *COMMON, "train.gradient_accumulation_steps=2")
    proc = subprocess.Popen([PYTHON, "-m", "adpo.train", *overrides], cwd=REPO_ROOT, env=stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
                proc.send_signal(signal.SIGUSR1)
                break
            time.sleep(0.01)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    saved = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    # Periodic checkpoints are every 4 steps; the signal's is at the step it arrived in (5 or a little later).
    assert 5 <= saved < STEPS and (out / "checkpoints" / f"step{saved}").is_dir()
    assert len(read_metrics(out)) == saved and not (out / "model").exists()

    resumed = run_train(overrides)
    assert f"at step {saved} of {STEPS}" in resumed.stdout + resumed.stderr
    assert_losses_match(read_metrics(baseline[0]), read_metrics(out), rel=1e-6)
    assert_same_weights(baseline[0] / "model", out / "model", atol=1e-7)


def test_cadpo_with_unit_weights_trains_exactly_like_adpo(baseline, work, tiny_model_dir):
    from transformers import AutoTokenizer

    root, _ = work
    weighted = root / "pairs_weighted"
    write_pairs(weighted / "pairs.jsonl", n=16, seed=1, weights_tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
                value=1.0)
    out = root / "cadpo"
    run_train(train_overrides(root, tiny_model_dir, weighted, out, "method=cadpo", *COMMON,
                              "train.gradient_accumulation_steps=2"))
    assert_losses_match(read_metrics(baseline[0]), read_metrics(out), rel=1e-6)


def test_cdpo_official_drops_pairs_over_the_limits_and_decays_the_lr_linearly(work, tiny_model_dir):
    """method=cdpo_official's defaults reach the run: train.length_policy=drop (pairs over the limits left out, counted
    in the manifest) and train.schedule=linear (TRL's warmup then linear decay), and it starts at log 2."""
    from transformers import AutoTokenizer

    root, _ = work
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    weighted = root / "pairs_official"
    rows = [json.loads(line) for line in write_pairs(weighted / "pairs.jsonl", n=24, seed=2).read_text().splitlines()]
    # Official filter: len(prompt ids with BOS) + len(response ids) < max_length for both responses.
    lengths = sorted(len(tok(r["prompt"])["input_ids"]) + max(len(tok(r[k], add_special_tokens=False)["input_ids"])
                                                            for k in ("chosen", "rejected")) for r in rows)
    max_length = lengths[len(lengths) // 2]
    expected_dropped = sum(n >= max_length for n in lengths)
    assert 0 < expected_dropped < len(rows) - 4
    # Weights as the weights stage writes them: with the tokenisation settings training uses.
    write_pairs(weighted / "pairs.jsonl", n=24, seed=2, weights_tokenizer=tok, max_length=max_length)
    out = root / "cdpo_official"
    run_train(train_overrides(root, tiny_model_dir, weighted, out, "method=cdpo_official",
                              f"model.max_length={max_length}", f"model.max_prompt_length={max_length - 1}",
                              "train.max_steps=10",
                              "train.log_every=1", "train.lr=1e-3", "train.warmup_ratio=0.2",
                              "train.gradient_accumulation_steps=1"))
    summary = json.loads((out / "manifest.json").read_text())["outputs"]
    assert summary["pairs_dropped_over_length"] == expected_dropped
    assert summary["pairs"] == len(rows) - expected_dropped
    metrics = read_metrics(out)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
    total, warmup = 10, 2
    # The learning rate logged at step s is the one its update used: the schedule's value after s - 1 steps.
    for row in metrics:
        done = row["step"] - 1
        expected = 1e-3 * (done / warmup if done < warmup else (total - done) / (total - warmup))
        assert row["learning_rate"] == pytest.approx(expected, rel=1e-6, abs=1e-12), row["step"]


def test_lora_under_zero3_exports_merged_full_weights(work, tiny_model_dir):
    """LoRA under ZeRO-3 on 2 ranks, log-probs 5 positions at a time, against one process with whole logits."""
    root, pairs_dir = work
    lora = ["deepspeed=zero3", "train.max_steps=4", "train.lora.enabled=true", "train.lora.r=4", "train.lora.alpha=8",
            "train.lora.target_modules=[q_proj,v_proj]", "train.export=merged"]  # the adapter alone: test_export.py
    out, whole = root / "lora", root / "lora_whole_logits"
    run_train(train_overrides(root, tiny_model_dir, pairs_dir, out, *COMMON, *lora, "train.logps_chunk_size=5",
                              "train.gradient_accumulation_steps=1"), nproc=2)
    run_train(train_overrides(root, tiny_model_dir, pairs_dir, whole, *COMMON, *lora, "train.logps_chunk_size=null",
                              "train.gradient_accumulation_steps=2"))
    base, merged = load_state_dict(tiny_model_dir), load_state_dict(out / "model")
    assert sorted(base) == sorted(merged)  # no adapter keys: merged into the base weights
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    chunked, plain = read_metrics(out), read_metrics(whole)
    assert len(chunked) == len(plain) == 4
    for a, b in zip(chunked, plain):
        for name in ("loss", "rewards/margins", "logps/chosen"):
            assert math.isclose(a[name], b[name], rel_tol=1e-5, abs_tol=1e-6), (a["step"], name, a[name], b[name])
    assert_same_weights(out / "model", whole / "model")


def test_malformed_pairs_file_stops_the_stage_naming_file_line_field(work, tiny_model_dir, tmp_path):
    from adpo.config import compose
    from adpo.io import DataError
    from adpo.train import run

    root, pairs_dir = work
    lines = (pairs_dir / "pairs.jsonl").read_text().splitlines()
    cases = {"missing": (2, "missing field 'rejected'"), "empty": (4, "field 'chosen' is empty"),
             "not_json": (6, "not valid JSON")}
    for name, (lineno, message) in cases.items():
        bad = list(lines)
        row = json.loads(bad[lineno - 1])
        if name == "missing":
            del row["rejected"]
        elif name == "empty":
            row["chosen"] = ""
        bad[lineno - 1] = json.dumps(row) if name != "not_json" else bad[lineno - 1][:-5]
        (tmp_path / name).mkdir()
        (tmp_path / name / "pairs.jsonl").write_text("\n".join(bad) + "\n")
        # The data is checked before any process group, model or output exists: this is the stage's whole run.
        cfg = compose("train", train_overrides(tmp_path, tiny_model_dir, tmp_path / name, tmp_path / f"out_{name}"))
        with pytest.raises(DataError) as err:
            run(cfg)
        assert f"{tmp_path / name / 'pairs.jsonl'}:{lineno}: {message}" in str(err.value)
        assert not (tmp_path / f"out_{name}").exists()
