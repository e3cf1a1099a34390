"""cDPO weights: the p_CE formula, and the weights stage on the tiny model (fine-tune two LoRA adapters, score)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adpo.registry import stage as registered
from adpo_data_prep.criticality import contrastive_token_probs
from adpo.io import atomic_write_jsonl

REPO = Path(__file__).resolve().parents[1]


def test_contrastive_probs_match_the_formula_token_by_token():
    torch.manual_seed(0)
    pos, neg = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    for lam in (0.0, 0.5, 1.0, 3.0):
        got = contrastive_token_probs(pos, neg, labels, lam)
        for b in range(2):
            for t in range(5):
                z = (1 + lam) * pos[b, t] - lam * neg[b, t]
                expected = torch.softmax(z, dim=-1)[labels[b, t]]
                assert got[b, t].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert ((got >= 0) & (got <= 1)).all()


def test_contrastive_probs_reduce_to_the_model_when_both_agree_or_lambda_is_zero():
    torch.manual_seed(1)
    z, other = torch.randn(1, 4, 7), torch.randn(1, 4, 7)
    labels = torch.randint(0, 7, (1, 4))
    plain = torch.softmax(z, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(contrastive_token_probs(z, z, labels, 1.0), plain)
    torch.testing.assert_close(contrastive_token_probs(z, other, labels, 0.0), plain)
    # A token the positive model likes more than the negative one gets more probability than either gives it.
    pos, neg = torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)
    pos[0, 0, 2], neg[0, 0, 2] = 1.0, -1.0
    assert contrastive_token_probs(pos, neg, torch.tensor([[2]])).item() > torch.softmax(pos[0, 0], -1)[2].item()


# ---------------------------------------------------------------- the stage on the tiny model


def toy_samples() -> list[dict]:
    """Six addition questions, eight graded samples each: correct, wrong (one wrong value most frequent), garbage."""
    rows = []
    for q in range(6):
        a, b = q + 2, 3 * q + 1
        gold = str(a + b)
        texts = [(f"{a} + {b} = {a + b}. The answer is {a + b}.", gold, True),
                 (f"We add {a} and {b} to get {a + b}.\n#### {a + b}", gold, True),
                 (f"{a} + {b} = {a + b + 1}. The answer is {a + b + 1}.", str(a + b + 1), False),
                 (f"Adding gives {a + b + 1}.\n#### {a + b + 1}", str(a + b + 1), False),
                 (f"{a} - {b} is {a - b}. The answer is {a - b}.", str(a - b), False),
                 (f"{a} + {b} = {a + b + 1}. The answer is {a + b + 1}.", str(a + b + 1), False),  # duplicate
                 ("apples apples apples", None, False),
                 (f"It is {a * b}. The answer is {a * b}.", str(a * b), a * b == a + b)]
        for i, (text, extracted, correct) in enumerate(texts):
            rows.append({"problem_id": f"q{q}", "dataset": "gsm8k", "question": f"Tom has {a} apples and gets {b} "
                         "more. How many apples does he have?", "gold": gold, "prompt": "(few-shot prompt)",
                         "sample_index": i, "text": text, "extracted": extracted, "correct": correct,
                         "finish_reason": "stop"})
    return rows


def stage_overrides(tmp_path: Path, model_dir: Path, *overrides: str) -> list[str]:
    return [f"paths.root={tmp_path}", f"model.name_or_path={model_dir}", "progress=false", "wandb=disabled",
            *overrides]


def run_stage(stage: str, tmp_path: Path, model_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", registered(stage).module,
                           *stage_overrides(tmp_path, model_dir, *overrides)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("weights")
    atomic_write_jsonl(root / "samples" / "shard-00000.jsonl", toy_samples())
    from adpo.config import compose
    from adpo_data_prep import pairs

    pairs.run(compose("pairs", stage_overrides(root, tiny_model_dir, "pairing.pairs_per_question=2")))
    # max_length 40 cuts the longer responses: weights must follow the truncated tokens. A few optimizer steps at
    # lr 3e-4 barely move a fresh LoRA adapter (B starts at 0); a larger lr makes the training visible here.
    overrides = ("model.max_length=40", "model.max_prompt_length=null", "criticality.weight_chosen=true",
                 "criticality.sft.batch_size=4",
                 "criticality.sft.lr=0.02", "criticality.sft.epochs=2")
    proc = run_stage("weights", root, tiny_model_dir, *overrides)
    return root, proc, overrides


def test_weights_stage_weights_every_response_token_in_unit_interval(weighted_run, tiny_model_dir):
    from transformers import AutoTokenizer

    from adpo.data.tokenize import encode_pair
    from adpo.models import vocabulary_id

    root, _, _ = weighted_run
    pairs_in = [json.loads(x) for x in (root / "pairs" / "pairs.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (root / "pairs_weighted" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == len(pairs_in) == 12
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    truncated = 0
    for before, row in zip(pairs_in, rows, strict=True):
        assert {k: row[k] for k in before} == before  # the input pair is kept as it was
        assert row["weights_tokenizer"] == vocabulary_id(tok)  # the vocabulary, not where the model was
        for side in ("rejected", "chosen"):
            enc = encode_pair(tok, row["prompt"], row[side], prompt_format="plain", max_prompt_length=None,
                              max_length=40)
            weights = row[f"{side}_weights"]
            assert len(weights) == len(enc.response_ids)
            assert all(0.0 <= w <= 1.0 for w in weights)
            truncated += enc.response_ids[-1] != tok.eos_token_id
    assert truncated > 0  # the max_length cut was exercised


def test_adapters_are_saved_and_trained(weighted_run, tiny_model_dir):
    """Fresh LoRA adapters leave the model unchanged (B = 0), so p_CE would be the base model's probability:
    trained adapters must move it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adpo.data.tokenize import encode_pair

    root, _, _ = weighted_run
    out = root / "pairs_weighted"
    for name in ("positive", "negative"):
        assert (out / name / "adapter_config.json").is_file()
        assert (out / name / "adapter_model.safetensors").is_file()
        info = json.loads((out / name / "train_info.json").read_text())
        assert info["report"]["examples"] > 0 and info["report"]["response_tokens"] > 0
        assert info["report"]["loss_last"] < info["report"]["loss_first"]
    stats = json.loads((out / "weights_stats.json").read_text())
    assert stats["adapters"]["positive"]["examples"] == 12  # two unique correct texts x 6 questions
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    row = json.loads((out / "pairs.jsonl").read_text().splitlines()[0])
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    enc = encode_pair(tok, row["prompt"], row["rejected"], max_prompt_length=None, max_length=40)
    with torch.no_grad():
        logits = model(torch.tensor([enc.input_ids])).logits[0, len(enc.prompt_ids) - 1: -1]
    base_probs = torch.softmax(logits, -1).gather(-1, torch.tensor(enc.response_ids)[:, None])[:, 0]
    diff = (torch.tensor(row["rejected_weights"]) - (1 - base_probs)).abs().max().item()
    assert diff > 1e-3


def test_weights_stage_skips_finished_work_and_reuses_trained_adapters(weighted_run, tiny_model_dir, caplog):
    from adpo.config import compose
    from adpo_data_prep import weights

    root, _, overrides = weighted_run
    out = root / "pairs_weighted"
    first = (out / "pairs.jsonl").read_bytes()
    cfg = compose("weights", stage_overrides(root, tiny_model_dir, *overrides))
    caplog.set_level("INFO", logger="adpo_data_prep.weights")
    weights.run(cfg)
    assert "nothing to do" in caplog.text
    # Without the manifest the stage reruns, reuses both adapters (same inputs) and writes the same weights.
    (out / "manifest.json").unlink()
    caplog.clear()
    weights.run(cfg)
    assert caplog.text.count("reusing the") == 2
    assert (out / "pairs.jsonl").read_bytes() == first
    # As if killed after the first adapter: the second is retrained to the same weights.
    shutil.rmtree(out / "negative")
    (out / "manifest.json").unlink()
    caplog.clear()
    weights.run(cfg)
    assert "reusing the positive" in caplog.text and "negative adapter trained" in caplog.text
    assert (out / "pairs.jsonl").read_bytes() == first


def test_weights_stage_defaults_to_rejected_only(tmp_path, tiny_model_dir):
    from adpo.config import compose
    from adpo_data_prep import pairs, weights

    atomic_write_jsonl(tmp_path / "samples" / "shard-00000.jsonl", toy_samples()[:16])
    base = [f"paths.root={tmp_path}", f"model.name_or_path={tiny_model_dir}", "progress=false", "wandb=disabled"]
    pairs.run(compose("pairs", base))
    weights.run(compose("weights", base))
    rows = [json.loads(x) for x in (tmp_path / "pairs_weighted" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all("rejected_weights" in r and "chosen_weights" not in r for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cdpo", "cadpo"])
def test_train_stage_consumes_the_weighted_pairs(weighted_run, tiny_model_dir, method):
    """The weights stage's real output trains under the weighted methods, and the weights (not all 1) change the
    training, which the unweighted method on the same pairs shows."""
    root, _, weight_overrides = weighted_run
    max_length = [o for o in weight_overrides if o.startswith(("model.max_length=", "model.max_prompt_length="))]
    common = ("train=tiny", "deepspeed=zero0", "train.max_steps=2", "train.log_every=1", *max_length)
    run_stage("train", root, tiny_model_dir, f"method={method}", f"output_dir={root / method}", *common)
    unweighted = "dpo" if method == "cdpo" else "adpo"
    run_stage("train", root, tiny_model_dir, f"method={unweighted}", f"input_dir={root / 'pairs_weighted'}",
              f"output_dir={root / unweighted}", *common)
    assert (root / method / "model" / "config.json").is_file()
    rows = {m: [json.loads(line) for line in (root / m / "metrics.jsonl").read_text().splitlines()]
            for m in (method, unweighted)}
    # Step 1: the policy is the reference, every log-ratio is 0, and weighting them changes nothing.
    assert rows[method][0]["loss"] == pytest.approx(rows[unweighted][0]["loss"], abs=1e-6)
    # Step 2: the weights have shaped the first update and the loss.
    assert rows[method][1]["loss"] != pytest.approx(rows[unweighted][1]["loss"], rel=1e-5)
