"""This project's DPO objective equals TRL's DPOTrainer's on the first step (the premise of benchmarks/train_vs_trl.py).

Same initial policy, same batch, same tokens, loss_type="sigmoid" and the same beta; the reference model differs from
the policy, as with policy == reference both losses are log 2 whatever the code computes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

BETA = 0.1
TOLERANCE = 1e-5


def _rows() -> list[dict]:
    # Responses start with a digit, so that TRL's joint tokenisation of prompt + response + "</s>" splits where
    # encode_pair does (the test checks that it does).
    rows = []
    for i, (a, b) in enumerate([(3, 4), (12, 5), (7, 9), (21, 2)]):
        filler = " Let me add the two numbers step by step." * (i % 3)
        rows.append({"id": f"p{i}", "prompt": f"Question: What is {a} plus {b}?\nAnswer: ",
                     "chosen": f"{a} + {b} = {a + b}.{filler} The answer is {a + b}.",
                     "rejected": f"{a} + {b} = {a + b + 1}. The answer is {a + b + 1}.{filler * 2}"})
    return rows


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def test_first_step_dpo_loss_matches_trl(tiny_model_dir, tmp_path, two_threads):
    pytest.importorskip("trl", reason="TRL is not installed: it is in the optional extra 'bench' (pip install -e '.[bench]')")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo.training.loop import load_tokenizer
    from adpo.training.pairs_data import make_batch, read_pairs, tokenize_pairs
    from adpo.training.reference import compute_reference_logps
    from adpo.training.step import MethodSpec, compute_loss

    tokenizer = load_tokenizer(str(tiny_model_dir))
    reference_dir = tmp_path / "reference"
    build_tiny_llama(tokenizer, reference_dir, hidden_size=64, num_layers=2, num_heads=4, seed=1)
    rows = _rows()
    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = tokenize_pairs(read_pairs(pairs_path), tokenizer)

    def load(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)

    # This project: cached per-token reference log-probs (batches of 3 pad differently from the training batch),
    # then the objective of the train step.
    reference = compute_reference_logps(load(reference_dir), pairs, pad_token_id=tokenizer.pad_token_id,
                                        batch_size=3, device="cpu")
    policy = load(tiny_model_dir).train()
    ours_loss, ours = compute_loss(policy, make_batch(pairs, reference, tokenizer.pad_token_id), MethodSpec(beta=BETA))
    assert abs(ours_loss.item() - math.log(2)) > 1e-3, "reference == policy in effect: the check could not fail"

    for precompute in (False, True):
        trainer = DPOTrainer(
            model=load(tiny_model_dir), ref_model=load(reference_dir), processing_class=tokenizer,
            train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]),
            args=DPOConfig(output_dir=str(tmp_path / f"trl-{precompute}"), use_cpu=True, bf16=False, report_to=[],
                           disable_tqdm=True, save_strategy="no", max_steps=1, per_device_train_batch_size=len(rows),
                           learning_rate=1e-5, beta=BETA, loss_type=["sigmoid"], max_length=None,
                           precompute_ref_log_probs=precompute, train_sampling_strategy="sequential",
                           dataloader_num_workers=0),
        )
        ds = trainer.train_dataset
        assert [(ds[i]["prompt_ids"], ds[i]["chosen_ids"], ds[i]["rejected_ids"]) for i in range(len(rows))] == [
            (p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs], "TRL tokenised the pairs differently"

        losses, logged = [], {}
        compute = trainer.compute_loss

        def recording(*args, **kwargs):
            out = compute(*args, **kwargs)
            losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
            # What the step logs (the trainer clears its metrics once they are logged).
            logged.update({k: v[-1] for k, v in trainer._metrics["train"].items() if isinstance(v, list) and v})
            return out

        trainer.compute_loss = recording
        trainer.train()
        where = f"precompute_ref_log_probs={precompute}"
        assert losses[0] == pytest.approx(ours_loss.item(), abs=TOLERANCE), where
        for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert logged[name] == pytest.approx(float(ours[name]), rel=1e-5, abs=1e-5), f"{name}, {where}"
