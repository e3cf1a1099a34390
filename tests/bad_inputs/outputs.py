"""A stage's output is complete or absent; data files do not depend on where things were (issue 15, items 2 and 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bad_inputs import BadInput

GOOD = [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
        for i in range(5)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepare(root: Path, train: Path, test: Path):
    from adpo.config import compose
    from adpo_data_prep import prepare

    cfg = compose("prepare", ["data=gsm8k_local", f"data.splits.train={train}", f"data.splits.test={test}",
                              f"paths.root={root}", "wandb=disabled", "progress=false"])
    return prepare.run(cfg)


def _status(directory: Path) -> str | None:
    from adpo.manifest import read_manifest

    return (read_manifest(directory) or {}).get("status")


def prepare_with_a_bad_split_writes_nothing(tmp: Path) -> None:
    from adpo.io import DataError

    train = _jsonl(tmp / "in" / "train.jsonl", GOOD)
    test = _jsonl(tmp / "in" / "test.jsonl", [*GOOD[:2], {"question": "q", "answer": "no final answer"}])
    with pytest.raises(DataError, match=rf"{test}:3: field 'answer'"):
        _prepare(tmp / "root", train, test)
    assert not (tmp / "root" / "data").exists() or not any((tmp / "root" / "data").iterdir())


def other_settings_refused_and_finished_data_kept(tmp: Path) -> None:
    from adpo.config_diff import OutputConflict

    train, test = _jsonl(tmp / "in" / "train.jsonl", GOOD), _jsonl(tmp / "in" / "test.jsonl", GOOD)
    data = _prepare(tmp / "root", train, test)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    bad_test = _jsonl(tmp / "in" / "bad.jsonl", [{"question": "q", "answer": "no final answer"}])
    with pytest.raises(OutputConflict, match="stored -> this run"):
        _prepare(tmp / "root", _jsonl(tmp / "in" / "train1.jsonl", GOOD[:1]), bad_test)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # nothing touched, manifest still complete
    assert _status(data) == "complete"


def a_failure_after_writing_began_is_never_taken_for_finished(tmp: Path) -> None:
    """A run that fails half-way (here: test.jsonl cannot be replaced) leaves a 'running' manifest: the rerun of the
    same command redoes the work, and so does the command that made the earlier, finished data."""
    from adpo.manifest import is_complete, read_manifest

    train, test = _jsonl(tmp / "in" / "train.jsonl", GOOD), _jsonl(tmp / "in" / "test.jsonl", GOOD)
    other_train = _jsonl(tmp / "in" / "train3.jsonl", GOOD[:3])
    data = tmp / "root" / "data"
    (data / "test.jsonl").mkdir(parents=True)  # in the way of the second split's write
    with pytest.raises(OSError):
        _prepare(tmp / "root", other_train, test)
    assert (data / "train.jsonl").is_file() and _status(data) == "running"
    record = read_manifest(data)
    assert not is_complete(data, json.loads(json.dumps(record["config"])), list(record["inputs"]))
    (data / "test.jsonl").rmdir()
    _prepare(tmp / "root", train, test)  # leftovers of an unfinished run of other settings are redone, not refused
    assert _status(data) == "complete"
    assert len((data / "train.jsonl").read_text().splitlines()) == len(GOOD)


def weights_of_another_vocabulary(tmp: Path) -> None:
    from adpo.models import VOCABULARY_ID
    from adpo.training.pairs_data import PairRecord, check_weights_tokenizer
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["Question: 1 + 2\nAnswer: 3", "Question: 2 + 2\nAnswer: 4"] * 4, tmp / "tok",
                                vocab_size=280)
    record = PairRecord("p0", "Question: 1 + 2\nAnswer:", " 3", " 4", where=f"{tmp}/pairs.jsonl:7",
                        rejected_weights=[1.0], weights_tokenizer=VOCABULARY_ID + "0" * 16)
    check_weights_tokenizer([record], tokenizer, "policy")


CASES = [
    BadInput("prepare-one-bad-split-writes-nothing", prepare_with_a_bad_split_writes_nothing, None,
             rule="every split is read and checked before any file is written"),
    BadInput("prepare-other-settings-keep-finished-data", other_settings_refused_and_finished_data_kept, None,
             rule="finished outputs of other settings are refused (OutputConflict), never half-replaced"),
    BadInput("stage-failed-half-way-not-finished", a_failure_after_writing_began_is_never_taken_for_finished, None,
             rule="a stage marks its manifest 'running' before it writes; only its last step marks it complete"),
    BadInput("weights-from-another-vocabulary", weights_of_another_vocabulary,
             r"pairs\.jsonl:7: field 'weights_tokenizer' is 'vocab-sha256:0{16}'", error=ValueError,
             rule="cDPO weights record the vocabulary's digest; a policy with another vocabulary refuses them"),
]
