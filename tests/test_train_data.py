"""The train stage's data path without DeepSpeed: pairs validation, batch layout, reference log-prob cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adpo.data.tokenize import encode_pair
from adpo.io import DataError
from adpo.training.logps import batch_token_logps
from adpo.training.pairs_data import make_batch, read_pairs, tokenize_pairs
from adpo.training.reference import cache_key, model_fingerprint, reference_logps
from adpo.training.schedule import DataSchedule
from adpo.training.step import MethodSpec, compute_loss
from train_helpers import add_weights, write_pairs

TOKENIZATION = {"prompt_format": "plain", "max_prompt_length": 256, "max_length": 512}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _rows(n=4):
    return [{"id": f"p{i}", "prompt": "Question: 2 + 2?\nAnswer: ", "chosen": f"2 + 2 = 4. {i}",
             "rejected": f"2 + 2 = 5. The answer is {i}."} for i in range(n)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        (json.dumps({"id": "x", "prompt": "Q", "rejected": "no"}), "missing field 'chosen'"),
        (json.dumps({"id": "x", "prompt": "Q", "chosen": "  ", "rejected": "no"}), "field 'chosen' is empty"),
        (json.dumps({"id": "x", "prompt": "Q", "chosen": "yes", "rejected": ""}), "field 'rejected' is empty"),
        ('{"id": "x", "prompt": "Q", "chosen": "yes", ', "not valid JSON"),
        (json.dumps({"id": "x", "prompt": 3, "chosen": "yes", "rejected": "no"}), "field 'prompt' must be str"),
    ],
)
def test_malformed_pairs_name_file_line_and_field(tmp_path, bad_line, expected):
    path = _write(tmp_path / "pairs.jsonl", [json.dumps(r) for r in _rows(2)] + [bad_line])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert f"{path}:3" in str(err.value) and expected in str(err.value)


def test_weighted_method_without_weights_names_file_line_and_field(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [json.dumps(r) for r in _rows(2)])
    assert len(read_pairs(path)) == 2  # fine for unweighted methods
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'rejected_weights'"):
        read_pairs(path, use_weights=True)


def test_weights_that_do_not_line_up_are_refused(tmp_path, tokenizer):
    rows = add_weights(_rows(3), tokenizer, value=0.5, **TOKENIZATION)
    rows[1]["rejected_weights"] = rows[1]["rejected_weights"][:-1]
    rows[2]["rejected_weights"][0] = 1.5
    path = _write(tmp_path / "pairs.jsonl", [json.dumps(r) for r in rows[:2]])
    records = read_pairs(path, use_weights=True)
    with pytest.raises(DataError, match=rf"{path}:2: field 'rejected_weights' has \d+ values but the response"):
        tokenize_pairs(records, tokenizer, **TOKENIZATION)
    path = _write(tmp_path / "pairs.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(DataError, match=rf"{path}:3: field 'rejected_weights'\[0\] must be a number in \[0, 1\]"):
        read_pairs(path, use_weights=True)


def test_tokenisation_is_the_shared_contract(tmp_path, tokenizer):
    path = write_pairs(tmp_path / "pairs.jsonl", n=3)
    records = read_pairs(path)
    pairs = tokenize_pairs(records, tokenizer, prompt_format="plain", max_prompt_length=8, max_length=20)
    for rec, pair in zip(records, pairs):
        enc = encode_pair(tokenizer, rec.prompt, rec.chosen, prompt_format="plain", max_prompt_length=8, max_length=20)
        assert pair.prompt_ids == enc.prompt_ids and pair.chosen_ids == enc.response_ids
        assert len(pair.prompt_ids) <= 8 and len(pair.prompt_ids) + len(pair.rejected_ids) <= 20


def test_padded_batch_gives_each_row_its_unpadded_log_probs(tmp_path, tokenizer, model):
    """The collated [2B, L] batch must score every response token exactly as a forward over that row alone."""
    pairs = tokenize_pairs(read_pairs(write_pairs(tmp_path / "pairs.jsonl", n=3)), tokenizer, **TOKENIZATION)
    zeros = [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in pairs]
    batch = make_batch(pairs, zeros, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 6
    with torch.no_grad():
        logps = batch_token_logps(model, batch)
        for row, (prompt, response) in enumerate([(p.prompt_ids, p.chosen_ids) for p in pairs]
                                                 + [(p.prompt_ids, p.rejected_ids) for p in pairs]):
            ids = torch.tensor([prompt + response])
            full = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            expected = full[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]]
            got = logps[row][batch.response_mask[row]]
            assert batch.response_mask[row].sum() == len(response)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reference_cache_is_computed_once_and_keyed_by_content(tmp_path, tokenizer, model, tiny_model_dir):
    path = write_pairs(tmp_path / "pairs.jsonl", n=5)
    pairs = tokenize_pairs(read_pairs(path), tokenizer, **TOKENIZATION)
    from adpo.io import file_sha256

    key, meta = cache_key(model=model_fingerprint(str(tiny_model_dir)), dtype="float32", tokenization=TOKENIZATION,
                          pairs_sha256=file_sha256(path))
    loads = []

    def load_model():
        loads.append(1)
        return model

    kwargs = dict(cache_path=tmp_path / "cache" / f"{key}.pt", meta=meta, load_model=load_model,
                  pad_token_id=tokenizer.pad_token_id, batch_size=2, device="cpu")
    first, cached = reference_logps(pairs, **kwargs)
    assert not cached and loads == [1]
    again, cached = reference_logps(pairs, **kwargs)
    assert cached and loads == [1]
    for (c1, r1), (c2, r2), p in zip(first, again, pairs):
        assert torch.equal(c1, c2) and torch.equal(r1, r2) and len(c1) == len(p.chosen_ids)
    # The policy at its start is the reference: every log-ratio is zero, so DPO's loss is log 2.
    batch = make_batch(pairs[:4], first[:4], tokenizer.pad_token_id)
    with torch.no_grad():
        loss, metrics = compute_loss(model, batch, MethodSpec(granularity="sequence"))
    assert abs(float(loss) - float(torch.log(torch.tensor(2.0)))) < 1e-4
    assert abs(float(metrics["rewards/margins"])) < 1e-4
    # Another pairs file (or other tokenisation) is another key.
    path.write_text(path.read_text().replace("Question", "Q"))
    assert cache_key(model=meta["model"], dtype="float32", tokenization=TOKENIZATION,
                     pairs_sha256=file_sha256(path))[0] != key
    assert cache_key(model=meta["model"], dtype="float32", tokenization={**TOKENIZATION, "max_length": 64},
                     pairs_sha256=meta["pairs_sha256"])[0] != key


def test_data_order_depends_only_on_seed_and_step():
    one = DataSchedule(16, micro_batch_size=2, accumulation=2, world_size=1, seed=3)
    two = DataSchedule(16, micro_batch_size=2, accumulation=1, world_size=2, seed=3)
    for step in range(9):  # crosses epoch boundaries
        assert [i for mb in one.micro_batches(step, 0) for i in mb] == \
               two.micro_batches(step, 0)[0] + two.micro_batches(step, 1)[0]
    epoch0 = sorted(i for s in range(4) for mb in one.micro_batches(s, 0) for i in mb)
    assert epoch0 == list(range(16))  # each epoch sees every pair once
    assert one.micro_batches(5, 0) == DataSchedule(16, micro_batch_size=2, accumulation=2, world_size=1,
                                                   seed=3).micro_batches(5, 0)
    assert one.micro_batches(0, 0) != DataSchedule(16, micro_batch_size=2, accumulation=2, world_size=1,
                                                   seed=4).micro_batches(0, 0)
