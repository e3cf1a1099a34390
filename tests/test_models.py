"""The pieces every stage shares (adpo.models, the collator, the pairs reader) on the tiny model built by conftest."""

from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from adpo.data.tokenize import EncodedResponse, collate_responses
from adpo.io import DataError
from adpo.models import load_causal_lm, load_tokenizer, lora_config, resolve_device, resolve_dtype
from adpo.training.pairs_data import TokenizedPair, iter_pair_rows, make_batch, read_pairs

# ---------------------------------------------------------------- dtype and device


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_a_gpu_that_has_it():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype(None, torch.device("cpu")) is torch.float32
    if torch.cuda.is_available():
        assert resolve_dtype("auto", "cuda") is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    else:
        assert resolve_dtype("auto") is torch.float32  # the default device is the CPU here


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bf16", torch.bfloat16),
                                         ("torch.float16", torch.float16), (torch.bfloat16, torch.bfloat16),
                                         ("half", torch.float16)])
def test_dtype_names_and_torch_names(name, dtype):
    assert resolve_dtype(name, "cpu") is dtype


@pytest.mark.parametrize("name", ["float8", "int8", "float64", ""])
def test_unknown_dtype_names_the_config_key(name):
    with pytest.raises(ValueError, match=r"^generation\.dtype: unknown dtype"):
        resolve_dtype(name, "cpu", key="generation.dtype")


def test_device_auto_is_the_gpu_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------- loading


def test_load_causal_lm_resolves_auto_and_moves_to_the_device(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="auto", device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert load_causal_lm(str(tiny_model_dir), dtype="bfloat16").dtype == torch.bfloat16


def test_load_causal_lm_refuses_a_bad_dtype_naming_the_key(tiny_model_dir):
    with pytest.raises(ValueError, match=r"^model\.dtype: unknown dtype 'fp8'"):
        load_causal_lm(tiny_model_dir, dtype="fp8")


def test_tokenizer_without_pad_token_pads_with_eos(tiny_model_dir, tmp_path):
    assert load_tokenizer(tiny_model_dir).pad_token == "<pad>"  # a pad token of its own is kept
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.pad_token_id == reloaded.eos_token_id is not None


# ---------------------------------------------------------------- LoRA


def test_lora_config_from_a_config_section(tiny_model_dir):
    from peft import get_peft_model

    section = OmegaConf.create({"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1,
                                "target_modules": ["q_proj", "v_proj"]})
    config = lora_config(section)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.bias == "none" and config.task_type == "CAUSAL_LM"
    assert lora_config(dict(section)) == config  # a plain dict section gives the same config
    model = get_peft_model(load_causal_lm(tiny_model_dir, dtype="float32"), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable)


# ---------------------------------------------------------------- collation


def test_collate_pads_right_with_labels_on_the_response_only():
    encoded = [EncodedResponse([1, 5], [6, 7, 2]), EncodedResponse([1], [8])]
    batch = collate_responses(encoded, pad_id=0, with_labels=True)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 2], [-100, 8, -100, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    assert set(collate_responses(encoded, pad_id=0)) == {"input_ids", "attention_mask"}


def test_preference_batch_is_padded_by_the_same_collator():
    pairs = [TokenizedPair([1, 5], [6, 2], [7, 7, 7, 2]), TokenizedPair([1], [9, 2], [2])]
    reference = [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in pairs]
    batch = make_batch(pairs, reference, pad_token_id=3)
    rows = [EncodedResponse(p.prompt_ids, p.chosen_ids) for p in pairs]
    rows += [EncodedResponse(p.prompt_ids, p.rejected_ids) for p in pairs]
    padded = collate_responses(rows, pad_id=3)
    assert torch.equal(batch.input_ids, padded["input_ids"])
    assert torch.equal(batch.attention_mask, padded["attention_mask"])


# ---------------------------------------------------------------- pairs reader


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_pair_rows_are_read_whole(tmp_path):
    row = {"id": "p0", "prompt": "Q: 1+1?\nA: ", "chosen": "2", "rejected": "3", "provenance": {"seed": 1}}
    path = _write(tmp_path / "pairs.jsonl", [row, {**row, "id": 7}])
    rows = list(iter_pair_rows(path))
    assert rows == [(f"{path}:1", row), (f"{path}:2", {**row, "id": 7})]
    assert [r.id for r in read_pairs(path)] == ["p0", "7"]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "Q", "chosen": "a", "rejected": "b"}, "missing field 'id'"),
    ({"id": "x", "prompt": "Q", "chosen": "a"}, "missing field 'rejected'"),
    ({"id": "x", "prompt": " ", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
    ({"id": ["x"], "prompt": "Q", "chosen": "a", "rejected": "b"}, "field 'id' must be str or int"),
    ('{"id": "x", ', "not valid JSON"),
])
def test_pair_reader_names_file_line_and_field(tmp_path, bad, message):
    good = {"id": "p0", "prompt": "Q", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "pairs.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: {message}"):
        list(iter_pair_rows(path))


def test_pair_reader_refuses_a_file_without_pairs(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no pairs"):
        list(iter_pair_rows(path))
