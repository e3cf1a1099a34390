"""Degenerate and repeated pairs through the train stage itself: left out and counted in the manifest of a real
(short) run, and a file of nothing but degenerate pairs refused before the reference pass. The rules, case by case,
are in tests/bad_inputs/pairs.py."""

from __future__ import annotations

import json

import pytest
from train_helpers import run_train, train_overrides, write_pairs

from adpo.config import compose
from adpo.io import DataError
from adpo.stage_results import result_line


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_manifest_counts_pairs_left_out_and_cut(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs_dir = tmp_path / "pairs"
    rows = _rows(write_pairs(pairs_dir / "pairs.jsonl", n=8, seed=5))
    rows += [{**rows[2], "id": "same", "rejected": rows[2]["chosen"]}, dict(rows[4])]  # identical; a repeat of line 5
    (pairs_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A limit that cuts some responses (prompt + response + EOS over it) and not others; prompts kept whole.
    prompt_len = [len(tok(r["prompt"])["input_ids"]) for r in rows[:8]]
    over = {side: [n + len(tok(r[side], add_special_tokens=False)["input_ids"]) + 1 for n, r in zip(prompt_len, rows)]
            for side in ("chosen", "rejected")}
    max_length = sorted(over["chosen"] + over["rejected"])[8]
    over = {side: [n > max_length for n in lengths] for side, lengths in over.items()}
    out = tmp_path / "train"
    proc = run_train(train_overrides(tmp_path, tiny_model_dir, pairs_dir, out, "train.max_steps=2",
                                     "train.save_every=0", f"model.max_length={max_length}",
                                     f"model.max_prompt_length={max(prompt_len)}"))
    log = proc.stdout + proc.stderr
    assert "pairs.jsonl: 1 of 10 pairs left out (chosen and rejected are the same text): line 9 (id 'same')" in log
    assert "line 10 (id 'p4') repeats line 5" in log
    outputs = json.loads((out / "manifest.json").read_text())["outputs"]
    assert outputs["pairs"] == 8
    assert outputs["pairs_dropped"] == {"identical": 1, "duplicate": 1, "no_room_for_response": 0,
                                        "identical_after_truncation": 0}
    cut = {"chosen": sum(over["chosen"]), "rejected": sum(over["rejected"])}
    assert outputs["pairs_truncated"] == {"pairs": sum(map(any, zip(over["chosen"], over["rejected"]))), "prompt": 0,
                                          **cut}
    assert 0 < cut["chosen"] + cut["rejected"]
    assert result_line("train", outputs).endswith("; 2 pairs left out (1 duplicate, 1 identical)")  # adpo-pipeline's


def test_a_file_of_identical_pairs_is_refused_before_the_reference_pass(tmp_path, tiny_model_dir):
    from adpo.train import run

    pairs_dir = tmp_path / "pairs"
    rows = [{**r, "rejected": r["chosen"]} for r in _rows(write_pairs(pairs_dir / "pairs.jsonl", n=4))]
    (pairs_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "train"
    cfg = compose("train", train_overrides(tmp_path, tiny_model_dir, pairs_dir, out))
    with pytest.raises(DataError, match=rf"^{pairs_dir / 'pairs.jsonl'}: no pair left to train on: all 4 pairs .*"
                                        r"4 identical"):
        run(cfg)
    assert not (pairs_dir / "reference_logps").exists()
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
