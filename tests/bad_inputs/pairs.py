"""Bad inputs, area "pairs": preference pairs that would train nothing or train twice, and truncation that cuts
responses away. Each case writes a small pairs.jsonl and reads it as the train stage does (read_pairs, then
adpo.training.pairs_checks.checked_pairs, with a byte-level BPE tokenizer built in the case's directory)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from adpo.io import DataError
from adpo.training.pairs_checks import checked_pairs
from adpo.training.pairs_data import read_pairs
from tests.bad_inputs import BadInput

PROMPT = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: "
LONG_PROMPT = "Question: " + "A box holds 12 pens and a bag holds 5 pens. " * 6 + "How many pens?\nAnswer: "
TEXT = [PROMPT + "Tom has 3 + 4 = 7 apples. The answer is 7.", LONG_PROMPT + "12 * 5 = 60 pens. #### 60"] * 10


def _tokenizer(tmp: Path):
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    return build_tokenizer(TEXT, tmp / "tokenizer", vocab_size=320)


def _rows(n: int, prompt: str = PROMPT) -> list[dict]:
    return [{"id": f"p{i}", "prompt": prompt, "chosen": f"3 + 4 = 7. The answer is 7. ({i})",
             "rejected": f"3 + 4 = {8 + i}. The answer is {8 + i}."} for i in range(n)]


def _write(tmp: Path, rows: list[dict]) -> Path:
    path = tmp / "pairs" / "pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check(tmp: Path, rows: list[dict], **tokenization):
    path = _write(tmp, rows)
    records, pairs, report = checked_pairs(path, read_pairs(path), _tokenizer(tmp), **tokenization)
    return path, records, pairs, report


def _dropped(report, **expected: int) -> None:
    counts = report.dropped_counts()
    assert counts == {**dict.fromkeys(counts, 0), **expected}, counts


def all_identical(tmp: Path):
    rows = [{**r, "rejected": r["chosen"]} for r in _rows(4)]
    _check(tmp, rows, max_prompt_length=256, max_length=512)


def one_identical(tmp: Path):
    rows = _rows(5)
    rows[2]["rejected"] = rows[2]["chosen"]
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("adpo.training.pairs_checks")
    logger.addHandler(handler)
    try:
        path, records, pairs, report = _check(tmp, rows, max_prompt_length=256, max_length=512)
        report.log_findings()
    finally:
        logger.removeHandler(handler)
    assert [r.id for r in records] == ["p0", "p1", "p3", "p4"] and len(pairs) == 4
    _dropped(report, identical=1)
    assert report.manifest_outputs()["pairs_dropped"]["identical"] == 1
    warning = [m for m in seen if "same text" in m]
    assert warning and str(path) in warning[0] and "1 of 5 pairs left out" in warning[0] \
        and "line 3 (id 'p2')" in warning[0], seen


def repeated_row_same_id(tmp: Path):
    rows = _rows(3)
    _, records, _, report = _check(tmp, rows + [dict(rows[1])], max_prompt_length=256, max_length=512)
    assert [r.where.rsplit(":", 1)[1] for r in records] == ["1", "2", "3"]  # the first of the two is kept
    _dropped(report, duplicate=1)
    assert report.dropped["duplicate"] == ["line 4 (id 'p1') repeats line 2"]


def same_id_other_pair(tmp: Path):
    rows = _rows(3)
    _check(tmp, rows + [{**rows[1], "rejected": "3 + 4 = 9."}], max_prompt_length=256, max_length=512)


def same_pair_other_id(tmp: Path):
    rows = _rows(3)
    _, records, _, report = _check(tmp, rows + [{**rows[0], "id": "copy"}], max_prompt_length=256, max_length=512)
    assert [r.id for r in records] == ["p0", "p1", "p2"]
    _dropped(report, duplicate=1)


def truncation_counted(tmp: Path):
    tok = _tokenizer(tmp)
    rows = _rows(3) + [{**r, "id": f"long{i}", "rejected": r["rejected"] + " Let me check that again." * 4}
                       for i, r in enumerate(_rows(2))]
    max_prompt_length, max_length = 12, 12 + len(tok(rows[0]["chosen"], add_special_tokens=False)["input_ids"]) + 1
    _, _, pairs, report = _check(tmp, rows, max_prompt_length=max_prompt_length, max_length=max_length)
    # Every prompt is longer than 12 tokens; the chosen answers fit with their EOS, the two long rejected do not.
    assert len(tok(PROMPT)["input_ids"]) > max_prompt_length
    assert report.truncated_counts() == {"pairs": 5, "prompt": 5, "chosen": 0, "rejected": 2}
    assert report.manifest_outputs()["pairs_truncated"]["rejected"] == 2
    assert all(len(p.prompt_ids) + len(p.rejected_ids) == max_length for p in pairs[3:])
    _dropped(report)


def null_max_prompt_length_some_prompts_too_long(tmp: Path):
    tok = _tokenizer(tmp)
    short, long = _rows(3), [{**r, "id": f"long{i}"} for i, r in enumerate(_rows(2, LONG_PROMPT))]
    max_length = len(tok(PROMPT)["input_ids"]) + 24
    assert len(tok(LONG_PROMPT)["input_ids"]) >= max_length
    _, records, pairs, report = _check(tmp, short + long, max_prompt_length=None, max_length=max_length)
    # Left whole, the long prompts leave no token of max_length: those pairs are left out, not cut to one token.
    assert [r.id for r in records] == ["p0", "p1", "p2"]
    _dropped(report, no_room_for_response=2)
    assert all(len(p.chosen_ids) > 1 and len(p.rejected_ids) > 1 for p in pairs)
    assert report.truncated_counts()["prompt"] == 0


def null_max_prompt_length_every_prompt_too_long(tmp: Path):
    _check(tmp, _rows(3, LONG_PROMPT), max_prompt_length=None, max_length=40)


def identical_after_truncation(tmp: Path):
    tok = _tokenizer(tmp)
    rows = _rows(3)
    rows[1] = {**rows[1], "chosen": "3 + 4 = 7. The answer is 7.", "rejected": "3 + 4 = 7. The answer is 8."}
    common = len(tok("3 + 4 = 7. The answer is", add_special_tokens=False)["input_ids"])
    max_length = len(tok(PROMPT)["input_ids"]) + common - 2  # both cut inside the words they share
    _, records, _, report = _check(tmp, rows, max_prompt_length=256, max_length=max_length)
    assert rows[1]["id"] not in [r.id for r in records]
    assert report.dropped["identical_after_truncation"] == ["line 2 (id 'p1')"]


CASES = [
    BadInput("pairs-all-identical", all_identical, r"pairs\.jsonl: no pair left to train on: all 4 pairs are left out: "
             r"4 identical \(chosen and rejected are the same text: line 1 \(id 'p0'\)", DataError,
             "a pairs file whose chosen equals rejected in every row is refused before training, naming the file"),
    BadInput("pairs-one-identical", one_identical, None,
             rule="a pair whose chosen equals rejected is left out, counted (train manifest: pairs_dropped.identical) "
                  "and named in a warning (file and line)"),
    BadInput("pairs-repeated-row", repeated_row_same_id, None,
             rule="a row repeating an earlier pair (same id and content) is left out, the first kept, and counted "
                  "(pairs_dropped.duplicate)"),
    BadInput("pairs-same-pair-other-id", same_pair_other_id, None,
             rule="the same prompt, chosen and rejected under another id is a repeat too: left out and counted"),
    BadInput("pairs-id-on-two-pairs", same_id_other_pair, r"pairs\.jsonl:4: field 'id' is 'p1', the id of line 2 "
             r"too, which holds a different pair", DataError,
             "one id on two different pairs is refused, naming both lines"),
    BadInput("pairs-truncation-counted", truncation_counted, None,
             rule="pairs cut by model.max_prompt_length / model.max_length are counted per side (train manifest: "
                  "pairs_truncated) and logged once"),
    BadInput("pairs-null-max-prompt-length-long-prompts", null_max_prompt_length_some_prompts_too_long, None,
             rule="under model.max_prompt_length=null a prompt that leaves no room in model.max_length is not cut to "
                  "a one-token response: the pair is left out and counted (pairs_dropped.no_room_for_response)"),
    BadInput("pairs-null-max-prompt-length-all-too-long", null_max_prompt_length_every_prompt_too_long,
             r"pairs\.jsonl: no pair left to train on: .*3 no_room_for_response.*model\.max_prompt_length=null leaves "
             r"prompts whole", DataError,
             "when every prompt leaves no room for the responses, training is refused, naming the setting"),
    BadInput("pairs-identical-after-truncation", identical_after_truncation, None,
             rule="a pair whose responses are the same tokens once cut to model.max_length is left out and counted"),
]
