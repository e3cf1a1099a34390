"""This project's DPO objective equals TRL's DPOTrainer's on the first step (the premise of benchmarks/train_vs_trl.py).

Same initial policy, same batch, same tokens, loss_type="sigmoid" and the same beta; the reference model differs from
the policy, as with policy == reference both losses are log 2 whatever the code computes. The check itself is the
benchmark's (check_against_trl); here it runs on another tokenizer and model, with this project's objective computed
without DeepSpeed.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO_ROOT


def _rows() -> list[dict]:
    # Responses start with a digit, so that TRL's joint tokenisation of prompt + response + "</s>" splits where
    # encode_pair does (the check verifies that it does).
    rows = []
    for i, (a, b) in enumerate([(3, 4), (12, 5), (7, 9), (21, 2)]):
        filler = " Let me add the two numbers step by step." * (i % 3)
        rows.append({"prompt": f"Question: What is {a} plus {b}?\nAnswer: ",
                     "chosen": f"{a} + {b} = {a + b}.{filler} The answer is {a + b}.",
                     "rejected": f"{a} + {b} = {a + b + 1}. The answer is {a + b + 1}.{filler * 2}"})
    return rows


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def test_first_step_dpo_loss_matches_trl(tiny_model_dir, tmp_path, two_threads, monkeypatch):
    pytest.importorskip("trl", reason="TRL is not installed: it is in the optional extra 'bench' (pip install -e '.[bench]')")
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    from train_vs_trl import BETA, check_against_trl

    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo.models import load_tokenizer
    from adpo.training.pairs_data import make_batch, read_pairs, tokenize_pairs
    from adpo.training.reference import compute_reference_logps
    from adpo.training.step import MethodSpec, compute_loss
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model_dir)
    reference_dir = tmp_path / "reference"
    build_tiny_llama(tokenizer, reference_dir, hidden_size=64, num_layers=2, num_heads=4, seed=1)
    rows = _rows()
    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps({"id": f"p{i}", **r}) + "\n" for i, r in enumerate(rows)))
    pairs = tokenize_pairs(read_pairs(pairs_path), tokenizer)

    def load(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)

    # This project: cached per-token reference log-probs (batches of 3 pad differently from the training batch),
    # then the objective of the train step.
    reference = compute_reference_logps(load(reference_dir), pairs, pad_token_id=tokenizer.pad_token_id,
                                        batch_size=3, device="cpu")
    _, ours = compute_loss(load(tiny_model_dir).train(), make_batch(pairs, reference, tokenizer.pad_token_id),
                           MethodSpec(beta=BETA))

    check = check_against_trl(policy=tiny_model_dir, reference=reference_dir, tokenizer=tokenizer, rows=rows,
                              pairs=pairs, ours={k: float(v) for k, v in ours.items()}, batch_size=len(rows),
                              out_dir=tmp_path / "trl")
    assert check["problems"] == []
