"""Input files read with their errors placed (file, line, column), and outputs with the modes the umask gives
(issue 15, "files"). The one-line cases are in tests/bad_inputs/files.py."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from adpo.io import DataError, atomic_directory, iter_jsonl, open_input, read_json, read_text


def test_a_bad_byte_is_placed_by_line_and_column_in_characters(tmp_path):
    # "é" (2 bytes) and "€" (3 bytes) before the bad byte each count as one column, as an editor shows them.
    prefix = '{"q": "é€'
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"q": "ok"}\n\n' + prefix.encode() + b'\xff"}\n')
    with pytest.raises(DataError, match=rf"rows\.jsonl:3: not valid UTF-8 \(byte 0xff at column {len(prefix) + 1}\)"):
        list(iter_jsonl(path))
    # The whole-file readers (JSON, CSV) place it the same way.
    with pytest.raises(DataError, match=rf"rows\.jsonl:3: not valid UTF-8 \(byte 0xff at column {len(prefix) + 1}\)"):
        read_text(path)


def test_valid_files_read_as_before_with_a_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes("\ufeff".encode() + b'{"q": "caf\xc3\xa9"}\r\n\r\n{"q": 2}\r\n')
    assert list(iter_jsonl(path, require="rows")) == [(1, {"q": "café"}), (3, {"q": 2})]
    (tmp_path / "m.json").write_bytes("\ufeff".encode() + b'{\n  "a": 1\n}\n')
    assert read_json(tmp_path / "m.json") == {"a": 1}
    (tmp_path / "bad.json").write_text('{\n  "a": 1,\n}\n')
    with pytest.raises(DataError, match=r"bad\.json:3: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_a_path_that_cannot_be_opened_is_named(tmp_path):
    (tmp_path / "file").write_text("{}\n")
    with pytest.raises(DataError, match=r"file/rows\.jsonl: cannot be read \(Not a directory\)"):
        list(iter_jsonl(tmp_path / "file" / "rows.jsonl"))
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "secret.jsonl"
    path.write_text("{}\n")
    path.chmod(0)
    with pytest.raises(DataError, match=r"secret\.jsonl: cannot be read \(Permission denied\)"):
        with open_input(path):
            pass


# --- modes ----------------------------------------------------------------------------------------------------------

def _wrong_modes(root: Path, umask: int) -> list[str]:
    """Every directory and file under root (root included) whose mode is not what mkdir()/open() under `umask`
    would give."""
    wrong = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode != want:
            wrong.append(f"{path.relative_to(root.parent)}: {oct(mode)}, the umask gives {oct(want)}")
    return wrong


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_what_stages_write_has_the_modes_the_umask_gives(umask, tmp_path):
    """The prepare stage's output, a model saved as the stages save models (atomic_directory: sft, export, the tiny
    paper models; safetensors >= 0.8 writes weights 0600, mkdtemp directories 0700) and a weights-stage adapter."""
    from peft import LoraConfig, get_peft_model

    from adpo.config import compose
    from adpo_data_prep import prepare
    from adpo_data_prep.lora_finetune import save_adapter
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    rows = [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"#### {i + 2}"}
            for i in range(3)]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "outputs"
    prepared = prepare.run(compose("prepare", ["data=gsm8k_local", f"data.splits.train={data}",
                                               f"data.splits.test={data}", f"paths.root={root}", "wandb=disabled",
                                               "progress=false"]))
    assert (prepared / "train.jsonl").is_file()

    with atomic_directory(root / "model") as tmp:
        tokenizer = build_tokenizer([r["question"] for r in rows] * 10, tmp, vocab_size=300)
        model = build_tiny_llama(tokenizer, tmp, hidden_size=32, num_layers=1, num_heads=1, seed=0)
    assert (root / "model" / "model.safetensors").is_file()

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="negative")
    save_adapter(peft_model, "negative", root / "weights" / "adapters" / "negative", {"key": "k"})
    assert (root / "weights" / "adapters" / "negative" / "adapter_model.safetensors").is_file()

    assert _wrong_modes(root, umask) == []
