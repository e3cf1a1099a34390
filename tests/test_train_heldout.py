"""The train stage's held-out preference metrics (train.heldout_pairs -> eval/* every train.eval_every steps) and its
progress lines in the log whatever `progress` says, run for real through the stage's command line; on 2 ZeRO-3
ranks with unequal held-out shares against one process."""

from __future__ import annotations

import json
import math
import re

import pytest

from adpo.training.heldout import heldout_batches, heldout_mask
from train_helpers import read_metrics, run_train, train_overrides, wandb_history, write_pairs

HELD = 5  # over 2 ranks x micro 2: shares [0, 1], [4] and [2, 3], [] -> rank 1 runs a placeholder batch
PAIRS = 16 + HELD  # 16 trained on: 4 steps per epoch at a global batch of 4
STEPS = 8
COMMON = [f"train.max_steps={STEPS}", "train.log_every=2", "train.eval_every=4", f"train.heldout_pairs={HELD}",
          "train.lr=3e-3", "method.granularity=static:3", "train.save_every=8"]


def test_heldout_mask_takes_whole_questions_fixed_by_the_seed():
    prompts = ["a", "b", "a", "c", "d", "b", "e", "a"]
    mask = heldout_mask(prompts, 3, seed=0)
    held = {p for p, m in zip(prompts, mask) if m}
    assert sum(mask) >= 3
    assert all(m == (p in held) for p, m in zip(prompts, mask))  # a question's pairs all on one side
    assert heldout_mask(prompts, 3, seed=0) == mask
    assert any(heldout_mask(prompts, 3, seed=s) != mask for s in range(1, 10))
    assert heldout_mask(prompts, 0, seed=0) == [False] * len(prompts)
    with pytest.raises(ValueError, match="every one of the 8 pairs"):
        heldout_mask(prompts, 8, seed=0)


def test_heldout_batches_are_as_many_on_every_rank():
    shares = [heldout_batches(5, 2, r, 2) for r in range(2)]
    assert shares == [[[0, 1], [4]], [[2, 3], []]]
    assert sorted(i for s in shares for b in s for i in b) == list(range(5))


@pytest.fixture(scope="module")
def heldout_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    write_pairs(root / "pairs" / "pairs.jsonl", n=PAIRS, seed=3)
    return root


@pytest.fixture(scope="module")
def single(heldout_work, tiny_model_dir):
    """One process, `progress=false` as the sbatch templates pass it, a progress line at every chance."""
    root = heldout_work
    out = root / "single"
    proc = run_train(train_overrides(root, tiny_model_dir, root / "pairs", out, *COMMON, "wandb=offline",
                                     "train.gradient_accumulation_steps=2", "progress_every=0.001"))
    return out, proc


@pytest.mark.slow
def test_heldout_metrics_are_logged_and_the_pairs_never_trained(single, heldout_work):
    out, proc = single
    rows = read_metrics(out)
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for r in evals:
        assert {"eval/rewards/accuracies", "eval/rewards/margins", "eval/logps/chosen"} <= set(r)
        assert math.isfinite(r["eval/loss"])
    # Held-out metrics come from other pairs than the training ones: at the same step they differ.
    assert evals[-1]["eval/loss"] != pytest.approx(next(r for r in rows if r["step"] == 8)["loss"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["pairs_held_out"] == HELD and manifest["outputs"]["pairs"] == PAIRS - HELD
    assert manifest["outputs"]["final_metrics"]["eval/loss"] == evals[-1]["eval/loss"]
    [run] = list((heldout_work / "wandb").rglob("offline-run-*"))
    logged = [h for h in wandb_history(run) if "eval/loss" in h]
    assert [h["_step"] for h in logged] == [4, 8]
    assert [h["eval/loss"] for h in logged] == pytest.approx([r["eval/loss"] for r in evals], rel=1e-9)


@pytest.mark.slow
def test_progress_lines_reach_the_log_with_progress_false(single):
    _, proc = single
    found = re.findall(r"progress: train adpo static:3 \| step (\d+)/8 \d+% \| [\d.e+]+ step/s \| elapsed [\d:]+ "
                       r"\| ETA [\d:]+ \| ([^\n]*)", proc.stdout + proc.stderr)
    steps = [int(s) for s, _ in found]
    assert steps[-1] == 8 and steps == sorted(steps) and len(set(steps)) >= 4
    assert "loss " in found[-1][1] and "eval_loss " in found[-1][1] and "pairs_per_s " in found[-1][1]
    assert "it/s]" not in proc.stdout + proc.stderr  # no tqdm bar with progress=false


@pytest.mark.slow
def test_two_zero3_ranks_with_unequal_shares_match_one_process(single, heldout_work, tiny_model_dir):
    root = heldout_work
    out = root / "two"
    run_train(train_overrides(root, tiny_model_dir, root / "pairs", out, *COMMON, "deepspeed=zero3",
                              "train.gradient_accumulation_steps=1", "train.logps_chunk_size=5"), nproc=2)
    one = [r for r in read_metrics(single[0]) if "eval/loss" in r]
    two = [r for r in read_metrics(out) if "eval/loss" in r]
    assert [r["step"] for r in two] == [4, 8]
    for a, b in zip(one, two):
        for name in ("eval/loss", "eval/rewards/margins", "eval/logps/rejected"):
            assert math.isclose(a[name], b[name], rel_tol=1e-5, abs_tol=1e-6), (a["step"], name)
