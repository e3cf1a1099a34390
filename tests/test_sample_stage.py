"""Sampling -> pairs end to end on a tiny model that has learnt a little arithmetic, and resumption after SIGKILL.

A random tiny model writes garbage with no answer in it; this one is trained for a few seconds on templated
single-digit sums, so it answers in the GSM8K format ("The answer is N"), sometimes right and often wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from adpo.io import DataError, atomic_write_jsonl

REPO = Path(__file__).resolve().parents[1]
SUMS = [(a, b) for a in range(1, 6) for b in range(0, 5)]  # answers 1..9: single digits


def question(a: int, b: int) -> str:
    return f"Tom has {a} apples and buys {b} more. How many apples does he have?"


def solution(a: int, b: int) -> str:
    return f"{a} + {b} = {a + b}. The answer is {a + b}."


@pytest.fixture(scope="module")
def arith_model(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Llama trained for ~150 steps on "Question: ...\\nAnswer:" + " a + b = c. The answer is c."."""
    import torch

    from adpo.data.prompts import response_text, zero_shot_prompt
    from adpo.data.tokenize import collate_responses, encode_pair
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("arith_model")
    pairs = [(zero_shot_prompt("gsm8k", question(a, b)), response_text(solution(a, b))) for a, b in SUMS]
    texts = [prompt + response for prompt, response in pairs]
    tokenizer = build_tokenizer(texts, out, vocab_size=300)
    model = build_tiny_llama(tokenizer, out, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    torch.manual_seed(0)
    encoded = [encode_pair(tokenizer, prompt, response) for prompt, response in pairs]
    batch = collate_responses(encoded, tokenizer.pad_token_id, with_labels=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return out


def write_problems(root: Path, count: int) -> Path:
    rows = [{"id": f"p{i:03d}", "dataset": "gsm8k", "question": question(a, b), "gold": str(a + b)}
            for i, (a, b) in enumerate((SUMS * 4)[:count])]
    return atomic_write_jsonl(root / "data" / "train.jsonl", rows)


def overrides(root: Path, model: Path, *extra: str) -> list[str]:
    return [f"paths.root={root}", f"model.name_or_path={model}", "progress=false", "wandb=disabled",
            "sampling.n=12", "sampling.max_tokens=24", "sampling.temperature=1.0", "sampling.prompt_style=zero_shot",
            "sampling.shard_size=4", "sampling.grade_workers=0", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shard_rows(samples_dir: Path) -> list[dict]:
    return [row for path in sorted(samples_dir.glob("shard-*.jsonl")) for row in read_jsonl(path)]


def sample_and_pair(root: Path, model: Path, *extra: str) -> None:
    from adpo.config import compose
    from adpo_data_prep import pairs, sample

    sample.run(compose("sample", overrides(root, model, *extra)))
    pairs.run(compose("pairs", overrides(root, model, *extra)))


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, arith_model) -> Path:
    root = tmp_path_factory.mktemp("sampled")
    write_problems(root, 16)
    sample_and_pair(root, arith_model)
    return root


def test_samples_are_graded_and_complete(sampled):
    from adpo.grading import grade

    rows = shard_rows(sampled / "samples")
    assert len(rows) == 16 * 12
    assert [(r["problem_id"], r["sample_index"]) for r in rows] == [(f"p{i:03d}", k) for i in range(16)
                                                                      for k in range(12)]
    for r in rows:
        g = grade("gsm8k", r["text"], r["gold"])
        assert (r["extracted"], r["correct"]) == (g.extracted, g.correct)
        assert r["finish_reason"] in ("stop", "length")
        # The prompt is stored once per question (sampling.prompt_in_rows=first).
        assert (r["prompt"] is not None) == (r["sample_index"] == 0)
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    answered = sum(r["extracted"] is not None for r in rows) / len(rows)
    assert 0.05 < accuracy < 0.95 and answered > 0.5, (accuracy, answered)  # the test needs both kinds
    manifest = json.loads((sampled / "samples" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["outputs"]["samples"] == 16 * 12


def test_pairs_chosen_correct_rejected_from_most_frequent_wrong_group(sampled, arith_model):
    from adpo.manifest import model_identity

    from adpo_data_prep.pairing import answer_key

    rows = shard_rows(sampled / "samples")
    pairs = read_jsonl(sampled / "pairs" / "pairs.jsonl")
    assert len(pairs) >= 3
    by_question: dict[str, list[dict]] = {}
    for r in rows:
        by_question.setdefault(r["problem_id"], []).append(r)
    for p in pairs:
        samples = by_question[p["problem_id"]]
        texts = {r["text"]: r for r in samples}
        chosen, rejected = texts[p["chosen"]], texts[p["rejected"]]
        assert chosen["correct"] and not rejected["correct"] and rejected["extracted"] is not None
        wrong = Counter(answer_key(r["extracted"], "gsm8k") for r in samples if r["extracted"] is not None and
                        not r["correct"])
        top = max(wrong.values())
        assert wrong[answer_key(rejected["extracted"], "gsm8k")] == top
        assert p["prompt"] == f"Question: {p['question']}\nAnswer:"
        assert p["chosen"].startswith(" ") and p["rejected"].startswith(" ")  # the model wrote the space itself
        assert p["provenance"]["model"] == model_identity(arith_model)  # name and content digest, no path
        assert str(arith_model) not in json.dumps(p)
        assert p["provenance"]["sampling"]["temperature"] == 1.0
    questions_with_both = sum(any(r["correct"] for r in s) and any(not r["correct"] and r["extracted"] for r in s)
                              for s in by_question.values())
    assert len(pairs) == questions_with_both
    stats = json.loads((sampled / "pairs" / "stats.json").read_text())
    assert stats["questions"] == 16 and stats["questions_with_both"] == questions_with_both
    assert stats["sample_accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))


def test_same_seed_gives_byte_identical_samples_and_pairs(sampled, arith_model, tmp_path):
    """Another root, and the model copied elsewhere: the data files do not record where anything was."""
    import shutil

    moved = shutil.copytree(arith_model, tmp_path / "elsewhere" / arith_model.name)
    write_problems(tmp_path, 16)
    sample_and_pair(tmp_path, moved)
    for a, b in zip(sorted((sampled / "samples").glob("shard-*.jsonl")), sorted((tmp_path / "samples").glob(
            "shard-*.jsonl")), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "pairs" / "pairs.jsonl").read_bytes() == (sampled / "pairs" / "pairs.jsonl").read_bytes()


def test_killed_sampling_loses_no_finished_shard(arith_model, tmp_path):
    from adpo.config import compose
    from adpo_data_prep import pairs, sample

    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for root in (killed, reference):
        write_problems(root, 24)
    args = overrides(killed, arith_model, "sampling.shard_size=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adpo_data_prep.sample", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples_dir = killed / "samples"
    deadline = time.monotonic() + 300
    try:
        while len(list(samples_dir.glob("shard-*.jsonl"))) < 3:
            assert proc.poll() is None, "the sampling run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
                for p in samples_dir.glob("shard-*.jsonl")}
    assert 3 <= len(finished) < 24
    for content, _, _ in finished.values():  # every shard on disk is whole: 12 parseable rows
        assert len([json.loads(line) for line in content.decode().splitlines()]) == 12

    # The pairs stage refuses the unfinished sample set.
    with pytest.raises(DataError, match="not 'complete'"):
        pairs.run(compose("pairs", args))

    sample.run(compose("sample", args))
    after = {p.name: p for p in samples_dir.glob("shard-*.jsonl")}
    assert len(after) == 24
    for name, (content, mtime, inode) in finished.items():
        path = after[name]
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime and path.stat().st_ino == inode

    # The resumed run drew exactly what an uninterrupted run draws (shard i is seeded with seed + i).
    sample.run(compose("sample", overrides(reference, arith_model, "sampling.shard_size=1")))
    for name in after:
        assert (samples_dir / name).read_bytes() == (reference / "samples" / name).read_bytes(), name
