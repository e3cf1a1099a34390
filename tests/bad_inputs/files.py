"""Input files a stage reads (data, prepared problems, samples, pairs, predictions, metrics, the paper's numbers):
whatever is wrong with one is reported with the file, the line and the field (issue 15, "files")."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tests.bad_inputs import BadInput

# A GSM8K row in the hub's layout, and what the prepare stage writes: a Problem record.
HUB_ROW = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"}
PROBLEM = {"id": "p0", "dataset": "gsm8k", "question": HUB_ROW["question"], "gold": "7"}
SAMPLE = {"problem_id": "p0", "question": HUB_ROW["question"], "gold": "7", "sample_index": 0, "text": "#### 7",
          "correct": True}
LATIN1 = "Caf\xe9 au lait".encode("latin-1")  # what a file saved by a non-UTF-8 editor holds: 0xe9 for "é"


def _lines(path: Path, *lines: bytes | dict | list | str) -> Path:
    """A file of the given lines: dicts and lists as JSON, bytes as they are (to write what is not UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((line if isinstance(line, bytes) else
                     (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def _latin1_row(row: dict, field: str) -> bytes:
    """`row` as a JSON line whose `field` ends in a Latin-1 byte (column: after `"field": "` and the text)."""
    text = json.dumps({**row, field: "@@"})
    return text.replace('"@@"', '"').encode() + LATIN1 + b'"'


# --- the readers, as the stages call them ----------------------------------------------------------------------------

@functools.cache
def _gsm8k_local():
    from adpo.config import compose

    return compose("prepare", ["data=gsm8k_local"]).data  # composed once: the cases differ in the file only


def local_data(path: Path) -> object:
    """The prepare stage's reader of a local data file (data=gsm8k_local with data.splits.train=<path>)."""
    from omegaconf import OmegaConf

    from adpo.data.loaders import load_problems

    return load_problems(OmegaConf.merge(_gsm8k_local(), {"splits": {"train": str(path)}}), "train")


def prepared(path: Path) -> object:
    from adpo.data.records import read_problems

    return read_problems(path)


def pairs(path: Path) -> object:
    from adpo.training.pairs_data import read_pairs

    return read_pairs(path)


def samples(directory: Path) -> object:
    from adpo_data_prep.pairing import read_samples

    return read_samples(directory)


def eval_run(directory: Path) -> object:
    """The aggregate stage's reader of one finished eval directory (manifest, predictions, metrics)."""
    from adpo.io import atomic_write_json
    from adpo_eval.runs import load_run

    atomic_write_json(directory / "manifest.json", {"stage": "eval", "status": "complete",
                                                    "config": {"method": {"name": "dpo"}, "seed": 0}})
    return load_run(directory)


def paper_numbers(path: Path) -> object:
    from adpo_eval.paper import read_paper_numbers

    return read_paper_numbers(path)


# --- the cases -------------------------------------------------------------------------------------------------------

NOT_UTF8 = r":2: not valid UTF-8 \(byte 0xe9 at column \d+\)"
RULE_UTF8 = "bytes that are not UTF-8 are reported by file, line and column, never as a bare UnicodeDecodeError"

CASES = [
    # Bytes that are not UTF-8, in every kind of file a stage reads.
    BadInput("data-file-not-utf8", lambda tmp: local_data(_lines(tmp / "gsm8k.jsonl", HUB_ROW,
                                                                 _latin1_row(HUB_ROW, "question"))),
             rf"gsm8k\.jsonl{NOT_UTF8}", rule=RULE_UTF8),
    BadInput("prepared-problems-not-utf8", lambda tmp: prepared(_lines(tmp / "train.jsonl", PROBLEM,
                                                                       _latin1_row(PROBLEM, "question"))),
             rf"train\.jsonl{NOT_UTF8}", rule=RULE_UTF8),
    BadInput("pairs-file-not-utf8", lambda tmp: pairs(_lines(
        tmp / "pairs.jsonl", {"id": 0, "prompt": "Q", "chosen": "a", "rejected": "b"},
        _latin1_row({"id": 1, "prompt": "Q", "chosen": "a", "rejected": "b"}, "rejected"))),
        rf"pairs\.jsonl{NOT_UTF8}", rule=RULE_UTF8),
    BadInput("samples-shard-not-utf8", lambda tmp: samples(_lines(
        tmp / "samples" / "shard-00000.jsonl", SAMPLE, _latin1_row({**SAMPLE, "sample_index": 1}, "text")).parent),
        rf"shard-00000\.jsonl{NOT_UTF8}", rule=RULE_UTF8),
    BadInput("predictions-not-utf8", lambda tmp: eval_run(_lines(
        tmp / "eval" / "predictions.jsonl", {"id": "p0", "correct": True},
        _latin1_row({"id": "p1", "correct": False}, "output")).parent),
        rf"predictions\.jsonl{NOT_UTF8}", rule=RULE_UTF8),
    BadInput("metrics-json-not-utf8", lambda tmp: eval_run(_lines(
        tmp / "eval" / "metrics.json", "{", b'  "note": "' + LATIN1 + b'"', "}").parent),
        rf"metrics\.json{NOT_UTF8}", rule=RULE_UTF8),
    BadInput("paper-numbers-csv-not-utf8", lambda tmp: paper_numbers(_lines(
        tmp / "paper_tables.csv", "table,method,granularity,model,dataset,accuracy",
        b"main,DPO,sequence," + LATIN1 + b",GSM8K,64.37")),
        rf"paper_tables\.csv{NOT_UTF8}", rule=RULE_UTF8),

    # Files without rows, and a directory where a file belongs.
    BadInput("data-file-empty", lambda tmp: local_data(_lines(tmp / "gsm8k.jsonl")),
             r"gsm8k\.jsonl: empty file, expected problems",
             rule="a data file without a problem is refused naming the file"),
    BadInput("prepared-problems-blank-lines-only", lambda tmp: prepared(_lines(tmp / "test.jsonl", "", "  ", "")),
             r"test\.jsonl: only blank lines, expected problems",
             rule="a file of blank lines is as empty as an empty one"),
    BadInput("predictions-empty", lambda tmp: eval_run(_lines(tmp / "eval" / "predictions.jsonl", "").parent),
             r"predictions\.jsonl: only blank lines, expected predictions",
             rule="a finished eval run's predictions file holds its predictions"),
    BadInput("paper-numbers-header-only", lambda tmp: paper_numbers(_lines(
        tmp / "paper.csv", "table,method,granularity,model,dataset,accuracy")),
        r"paper\.csv: no rows under the header", rule="a paper-numbers file without a number is refused"),
    BadInput("data-path-is-a-directory", lambda tmp: local_data((tmp / "gsm8k").mkdir() or tmp / "gsm8k"),
             r"gsm8k: is a directory, expected a file",
             rule="a directory given where a file belongs is named, not an IsADirectoryError"),
    BadInput("prepared-problems-is-a-directory", lambda tmp: prepared((tmp / "train.jsonl").mkdir()
                                                                      or tmp / "train.jsonl"),
             r"train\.jsonl: is a directory, expected a file",
             rule="a directory given where a file belongs is named, not an IsADirectoryError"),

    # Lines that are not what they should be: each names file:line (and the field).
    BadInput("data-file-invalid-json-line-3", lambda tmp: local_data(_lines(
        tmp / "gsm8k.jsonl", HUB_ROW, HUB_ROW, '{"question": "x", "answer": }')),
        r"gsm8k\.jsonl:3: not valid JSON \(Expecting value at column 29\)",
        rule="a line that is not JSON is named by file, line and column"),
    BadInput("prepared-problems-line-not-an-object", lambda tmp: prepared(_lines(tmp / "train.jsonl", PROBLEM,
                                                                                 [PROBLEM])),
             r"train\.jsonl:2: expected a JSON object, got list",
             rule="a line that is JSON but not an object is named by file and line"),
    BadInput("data-file-missing-field", lambda tmp: local_data(_lines(
        tmp / "gsm8k.jsonl", HUB_ROW, {"question": "Where is the answer?"})),
        r"gsm8k\.jsonl:2: missing field 'answer'", rule="a missing field is named with its file and line"),
    BadInput("prepared-problems-wrong-typed-field", lambda tmp: prepared(_lines(
        tmp / "train.jsonl", PROBLEM, {**PROBLEM, "id": "p1", "gold": 7})),
        r"train\.jsonl:2: field 'gold' must be str, got int",
        rule="a field of the wrong type is named with its file, line and the type it must be"),
    BadInput("pairs-file-wrong-typed-field", lambda tmp: pairs(_lines(
        tmp / "pairs.jsonl", {"id": 0, "prompt": "Q", "chosen": "a", "rejected": "b"},
        {"id": 1, "prompt": "Q", "chosen": ["a"], "rejected": "b"})),
        r"pairs\.jsonl:2: field 'chosen' must be str, got list",
        rule="a field of the wrong type is named with its file, line and the type it must be"),
    BadInput("predictions-wrong-typed-field", lambda tmp: eval_run(_lines(
        tmp / "eval" / "predictions.jsonl", {"id": "p0", "correct": True}, {"id": "p1", "correct": "no"}).parent),
        r"predictions\.jsonl:2: field 'correct' must be bool or int, got str",
        rule="a field of the wrong type is named with its file, line and the type it must be"),
    BadInput("paper-numbers-accuracy-not-a-number", lambda tmp: paper_numbers(_lines(
        tmp / "paper.csv", "table,method,granularity,model,dataset,accuracy",
        "main,DPO,sequence,Llama-3-8B,GSM8K,64.37", "main,ADPO,token,Llama-3-8B,GSM8K,n/a")),
        r"paper\.csv:3: field 'accuracy' must be a number, got 'n/a'",
        rule="a field of the wrong type is named with its file, line and the type it must be"),
    BadInput("paper-numbers-row-with-extra-field", lambda tmp: paper_numbers(_lines(
        tmp / "paper.csv", "table,method,granularity,model,dataset,accuracy",
        "main,DPO,sequence,Llama-3-8B,GSM8K,64,37")),
        r"paper\.csv:2: 7 fields, the header has 6", rule="a CSV row that does not fit the header is named by line"),
]
