"""Along training (adpo-trajectory, train.snapshot_every): snapshots, the sampled KL from the reference, and the
comparisons of methods at matched step and at matched KL."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from adpo_eval.trajectory_stats import at_kl, first_step_past, kl_grid, matched_kl, matched_step
from train_helpers import REPO_ROOT, read_metrics, run_train, stage_env, train_overrides

# ---------------------------------------------------------------------------------------------- statistics


def _curves(rows):
    return pd.DataFrame(rows, columns=["group", "seed", "step", "kl", "accuracy"])


def test_matched_step_differences_are_paired_by_seed():
    rows = []
    for seed, (base, other) in enumerate([(0.5, 0.6), (0.3, 0.5), (0.4, 0.55)]):
        rows += [("dpo", seed, 10, 1.0, base), ("adpo", seed, 10, 1.2, other)]
    rows.append(("adpo", 7, 10, 1.0, 0.0))  # a seed the baseline lacks: not paired
    table = matched_step(_curves(rows), "dpo", ["accuracy", "kl"])
    acc = table[(table["metric"] == "accuracy")].iloc[0]
    diffs = [0.1, 0.2, 0.15]
    assert acc["seeds"] == 3 and acc["difference"] == pytest.approx(np.mean(diffs))
    half = 4.302652729911275 * np.std(diffs, ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert acc["low"] == pytest.approx(np.mean(diffs) - half) and acc["high"] == pytest.approx(np.mean(diffs) + half)
    assert table[table["metric"] == "kl"].iloc[0]["difference"] == pytest.approx(0.2)
    assert set(table["group"]) == {"adpo"}


def test_values_at_kl_interpolate_between_points_and_never_extrapolate():
    run = pd.DataFrame({"kl": [0.0, 2.0, 1.0], "accuracy": [0.8, 0.2, 0.6]})  # out of KL order on purpose
    out = at_kl(run, "accuracy", [0.5, 1.5, 2.0, 2.5])
    assert out[:3] == pytest.approx([0.7, 0.4, 0.2]) and math.isnan(out[3])
    assert kl_grid(pd.DataFrame({"kl": [0.0, 1.0, 4.0]}), 4) == [0.5, 1.0, 2.0, 4.0]


def test_matched_kl_pairs_seeds_where_both_runs_reached_the_kl():
    rows = []
    for seed in range(3):
        rows += [("dpo", seed, 0, 0.0, 0.9), ("dpo", seed, 1, 2.0, 0.5),
                 ("adpo", seed, 0, 0.0, 0.9), ("adpo", seed, 1, 1.0 + seed, 0.8)]
    table = matched_kl(_curves(rows), "dpo", "accuracy", [1.0, 2.0])
    adpo = table[table["group"] == "adpo"].set_index("kl")
    # At KL 1 every seed of both groups is in range: dpo 0.7; adpo 0.8, 0.85, 0.8667.
    assert adpo.loc[1.0, "paired_seeds"] == 3
    assert adpo.loc[1.0, "difference"] == pytest.approx(np.mean([0.8, 0.85, 0.9 - 0.1 / 3]) - 0.7)
    # At KL 2 seed 0 of adpo (max KL 1) has not got there: two seeds pair.
    assert adpo.loc[2.0, "paired_seeds"] == 2 and adpo.loc[2.0, "seeds"] == 2
    dpo = table[table["group"] == "dpo"]
    assert dpo["paired_seeds"].eq(0).all() and dpo["value"].tolist() == pytest.approx([0.7, 0.5])


def test_first_step_past_a_margin():
    log = pd.DataFrame({"step": [1, 2, 3, 4], "margin": [0.5, 2.9, 3.1, 2.0]})
    assert first_step_past(log, "margin", 3.0) == 3
    assert first_step_past(log, "margin", 5.0) is None


# ---------------------------------------------------------------------------------------------- the KL estimate


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """A random tiny Llama with a tokenizer trained on the toy task's text (the quickstart's kind)."""
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.task import make_problems
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("toy_model")
    texts = [f"Question: {p.question}\nAnswer: {p.solution}" for p in make_problems(400, seed=0)]
    tokenizer = build_tokenizer(texts, out, vocab_size=320)
    build_tiny_llama(tokenizer, out, hidden_size=64, num_layers=2, num_heads=2, seed=0)
    return out


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, toy_model):
    """The same architecture and tokenizer with other random weights: a policy far from the reference."""
    from adpo.models import load_causal_lm

    out = tmp_path_factory.mktemp("other_model")
    model = load_causal_lm(toy_model, dtype="float32")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(out)
    for f in toy_model.iterdir():
        if "token" in f.name:
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _generator(model_dir):
    from adpo.generation.hf_backend import HFGenerator
    from omegaconf import OmegaConf

    return HFGenerator(OmegaConf.create({"device": "cpu", "dtype": "float32", "batch_size": 64}), str(model_dir))


def test_sequence_logps_are_the_sum_of_each_response_tokens_log_softmax(toy_model):
    from adpo.models import load_causal_lm
    from adpo_eval.policy_kl import sequence_logps

    model = load_causal_lm(toy_model, dtype="float32").eval()
    sequences = [([5, 9, 13], [7, 8]), ([4], [6, 6, 6, 2]), ([3, 3, 3, 3, 3], [11])]
    got = sequence_logps(model, sequences, pad_token_id=0, batch_size=2, device=torch.device("cpu"))
    for (prompt, response), value in zip(sequences, got):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0].double(), -1)
        expected = sum(float(logps[len(prompt) - 1 + i, t]) for i, t in enumerate(response))
        assert float(value) == pytest.approx(expected, abs=1e-4)


def test_the_sampled_kl_is_zero_against_itself_and_matches_the_exact_kl_of_one_token(toy_model, other_model):
    from adpo.models import load_causal_lm
    from adpo_eval.policy_kl import sampled_kl

    generator = _generator(other_model)
    policy = load_causal_lm(other_model, dtype="float32").eval()
    reference = load_causal_lm(toy_model, dtype="float32").eval()
    prompts = ["Question: Tom has 3 apples.\nAnswer:", "Question: A box holds 7 pens.\nAnswer:"]
    cpu = torch.device("cpu")
    itself = sampled_kl(generator, prompts, policy=policy, reference=policy, samples=4, max_tokens=8, stop=(),
                        seed=0, batch_size=8, device=cpu)
    assert itself.kl == 0.0 and itself.samples == 8 and 1 <= itself.mean_tokens <= 8
    # One token per response: the estimate is a Monte Carlo mean of log pi(y)/pi_ref(y) over the next-token
    # distribution, whose expectation is the exact KL of the two next-token distributions.
    one = sampled_kl(generator, prompts, policy=policy, reference=reference, samples=800, max_tokens=1, stop=(),
                     seed=0, batch_size=512, device=cpu)
    exact = []
    for prompt in prompts:
        ids = torch.tensor([generator.encode(prompt)])
        with torch.no_grad():
            p = torch.log_softmax(policy(ids).logits[0, -1].double(), -1)
            q = torch.log_softmax(reference(ids).logits[0, -1].double(), -1)
        exact.append(float((p.exp() * (p - q)).sum()))
    assert one.samples == 1600 and one.mean_tokens == 1.0
    assert abs(one.kl - np.mean(exact)) < 4 * one.sem, (one, exact)
    assert np.mean(exact) > 0.05  # the two models differ enough for the comparison to mean something


# ---------------------------------------------------------------------------------------------- the stage


def _write_test_split(data_dir, n=12):
    from adpo.data.records import write_problems
    from adpo_data_prep.toy.task import make_problems

    data_dir.mkdir(parents=True, exist_ok=True)
    write_problems(data_dir / "test.jsonl", make_problems(n, seed=11, split="test", min_steps=2, max_steps=3))


def _write_toy_pairs(path, seed):
    from adpo_data_prep.toy.task import make_problems

    rows = []
    for i, p in enumerate(make_problems(20, seed=3 + seed, split="train", min_steps=2, max_steps=3)):
        wrong = p.solution.replace("#### ", "#### 1")
        rows.append({"id": f"k{i}", "prompt": f"Question: {p.question}\nAnswer:", "chosen": " " + p.solution,
                     "rejected": " " + wrong, "problem_id": p.id, "question": p.question, "gold": p.gold})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _trajectory(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "adpo_eval.trajectory", "progress=false", "wandb=disabled",
                           "data=toy", "eval.prompt_style=zero_shot", "eval.max_new_tokens=24", "generation=hf",
                           "generation.device=cpu", "trajectory.problems=6", "trajectory.kl_prompts=4",
                           "trajectory.kl_samples=2", *overrides],
                          cwd=REPO_ROOT, env=stage_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def snapshotted_runs(tmp_path_factory, toy_model):
    """Two methods x two seeds, 3 steps each, a snapshot after every step."""
    root = tmp_path_factory.mktemp("trajectory")
    _write_test_split(root / "data")
    for seed in (0, 1):
        pairs_dir = root / "pairs" / f"s{seed}"
        _write_toy_pairs(pairs_dir / "pairs.jsonl", seed)
        # Snapshots every step, asked for both ways: every N steps, and at listed steps.
        for method in (["method=dpo", "train.snapshot_every=1"],
                       ["method=adpo", "method.granularity=token", "train.snapshot_at=[1,2]"]):
            name = f"{method[0].split('=')[1]}-s{seed}"
            run_train(train_overrides(root, toy_model, pairs_dir, root / "train" / name, *method, f"seed={seed}",
                                      f"run_name={name}", "train.max_steps=3", "train.lr=5e-3",
                                      "train.micro_batch_size=4", "train.gradient_accumulation_steps=1",
                                      "train.heldout_pairs=4", "train.eval_every=1", "data=toy"))
    return root


@pytest.mark.slow
def test_snapshots_are_evaluable_models_of_the_policy_along_training(snapshotted_runs):
    run = snapshotted_runs / "train" / "dpo-s0"
    for name in ("dpo-s0", "adpo-s1"):
        snapshots = sorted(p.name for p in (snapshotted_runs / "train" / name / "snapshots").iterdir())
        assert snapshots == ["step-000001", "step-000002"], name  # the last step is model/ itself
    record = json.loads((run / "snapshots" / "step-000002" / "export.json").read_text())
    assert record["steps"] == 2 and record["run_name"] == "dpo-s0"  # the card says which step it is
    from adpo.models import load_policy

    first = load_policy(run / "snapshots" / "step-000001", dtype="float32")
    final = load_policy(run / "model", dtype="float32")
    diffs = [float((a - b).abs().max()) for a, b in zip(first.state_dict().values(), final.state_dict().values())]
    assert max(diffs) > 0  # two more steps moved the weights


@pytest.mark.slow
def test_trajectory_measures_every_point_and_compares_the_methods(snapshotted_runs, tmp_path):
    root = snapshotted_runs
    out = tmp_path / "trajectory"
    proc = _trajectory(f"input_dir={root / 'train'}", f"output_dir={out}", f"data_dir={root / 'data'}")
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(curves["run"].unique()) == ["adpo-s0", "adpo-s1", "dpo-s0", "dpo-s1"]
    assert sorted(curves["step"].unique()) == [0, 1, 2, 3]
    start = curves[curves["step"] == 0]
    # Step 0 is the reference itself: no distance, the reference's accuracy, the same for every run.
    assert (start["kl"] == 0).all() and start["accuracy"].nunique() == 1 and (start["margin"] == 0).all()
    later = curves[curves["step"] > 0]
    assert (later["kl_samples"] == 8).all() and later["kl"].notna().all()
    assert ((later["total"] == 6) & later["accuracy"].between(0, 1)).all()
    # The training log's values at each step are the run's own metrics.jsonl.
    for name in ("dpo-s0", "adpo-s1"):
        logged = {row["step"]: row for row in read_metrics(root / "train" / name)}
        mine = curves[(curves["run"] == name) & (curves["step"] > 0)]
        for _, point in mine.iterrows():
            assert point["margin"] == pytest.approx(logged[point["step"]]["rewards/margins"])
            assert point["eval_margin"] == pytest.approx(logged[point["step"]]["eval/rewards/margins"])
            assert point["logps_chosen"] == pytest.approx(logged[point["step"]]["logps/chosen"])
    # ADPO against the DPO baseline, paired over the two seeds, at every step.
    by_step = pd.read_csv(out / "matched_step.csv")
    acc = by_step[(by_step["metric"] == "accuracy")]
    assert set(acc["group"]) == {"adpo"} and sorted(acc["step"]) == [0, 1, 2, 3] and (acc["seeds"] == 2).all()
    assert acc[acc["step"] == 0]["difference"].iloc[0] == 0.0
    a, d = (curves[(curves["run"] == f"{m}-s0") & (curves["step"] == 3)]["margin"].iloc[0] for m in ("adpo", "dpo"))
    b, e = (curves[(curves["run"] == f"{m}-s1") & (curves["step"] == 3)]["margin"].iloc[0] for m in ("adpo", "dpo"))
    margin3 = by_step[(by_step["metric"] == "margin") & (by_step["step"] == 3)].iloc[0]
    assert margin3["difference"] == pytest.approx(((a - d) + (b - e)) / 2)
    by_kl = pd.read_csv(out / "matched_kl.csv")
    assert set(by_kl["group"]) == {"adpo", "dpo"} and len(by_kl[by_kl["metric"] == "accuracy"]) == 2 * 8
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["points"] == 4).all() and (runs["steps"] == 3).all()
    assert (out / "trajectory.png").stat().st_size > 10_000
    report = (out / "trajectory.md").read_text()
    assert "Minus dpo at matched step" in report and "adpo" in report
    # The reference was measured once for the four runs: 1 + 4 x 3 points.
    assert len(list((out / "points").glob("*.json"))) == 13
    assert (proc.stdout + proc.stderr).count("measuring") == 13

    # A rerun is skipped; with the manifest gone, every point is read back, none measured again.
    skipped = _trajectory(f"input_dir={root / 'train'}", f"output_dir={out}", f"data_dir={root / 'data'}")
    assert "up to date" in skipped.stdout + skipped.stderr
    (out / "manifest.json").unlink()
    again = _trajectory(f"input_dir={root / 'train'}", f"output_dir={out}", f"data_dir={root / 'data'}")
    assert "measuring" not in again.stdout + again.stderr and "runs, 13 points" not in again.stderr
    assert pd.read_csv(out / "curves.csv").equals(curves)


def test_trajectory_without_runs_names_the_directory(tmp_path):
    proc = _trajectory(f"input_dir={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'out'}", check=False)
    assert proc.returncode == 1
    assert "no finished train run" in proc.stderr and str(tmp_path / "nothing") in proc.stderr
