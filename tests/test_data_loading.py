"""GSM8K and MATH as Problem records: local JSONL (the real files), hub-style `datasets` data, configs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adpo.config import compose, conf_dir
from adpo.data.loaders import (
    data_splits,
    gsm8k_gold,
    load_problems,
    parse_level,
    read_hub_problems,
    read_jsonl_problems,
    split_spec,
)
from adpo.data.records import read_problems, write_problems
from adpo.io import DataError
from tests.conftest import shared_data_path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- the real local files


@pytest.mark.real_data
def test_gsm8k_local_config_reads_the_real_files():
    shared_data_path("gsm8k", "test.jsonl")
    cfg = compose("prepare", ["data=gsm8k_local"])
    assert data_splits(cfg.data) == ["train", "test"]
    train, test = load_problems(cfg.data, "train"), load_problems(cfg.data, "test")
    assert (len(train), len(test)) == (7473, 1319)
    first = test[0]
    assert first.id == "gsm8k-test-00000" and first.dataset == "gsm8k"
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs")
    assert first.gold == "18" and first.solution.endswith("#### 18")
    assert test[42].id == "gsm8k-test-00042"
    assert len({p.id for p in train}) == 7473
    assert all(p.gold.lstrip("-").isdigit() and "," not in p.gold for p in train + test)


@pytest.mark.real_data
def test_math500_local_config_reads_the_real_file():
    shared_data_path("math500", "test.jsonl")
    cfg = compose("prepare", ["data=math500_local"])
    assert data_splits(cfg.data) == ["test"]
    with pytest.raises(ValueError, match="no 'train' split"):
        load_problems(cfg.data, "train")
    problems = load_problems(cfg.data, "test")
    assert len(problems) == 500 and len({p.id for p in problems}) == 500
    first = problems[0]
    assert first.id == "test/precalculus/807.json"
    assert first.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.subject == "Precalculus" and first.level == 2
    assert {p.level for p in problems} == {1, 2, 3, 4, 5}
    assert len({p.subject for p in problems}) == 7


@pytest.mark.real_data
def test_limit_keeps_the_first_problems():
    shared_data_path("gsm8k", "test.jsonl")
    cfg = compose("prepare", ["data=gsm8k_local", "data.limit=5"])
    full = read_jsonl_problems(shared_data_path("gsm8k", "test.jsonl"), "gsm8k", "test")
    assert load_problems(cfg.data, "test") == full[:5]


def test_relative_local_paths_resolve_from_the_repository(monkeypatch, tmp_path):
    shared_data_path("gsm8k", "test.jsonl")
    monkeypatch.chdir(tmp_path)  # "../shared/data/..." does not exist from here, but does from the repo root
    monkeypatch.delenv("ADPO_SHARED_DATA", raising=False)
    cfg = compose("prepare", ["data=gsm8k_local", "data.limit=2"])
    assert cfg.data.splits.test.startswith("../shared/data")
    assert len(load_problems(cfg.data, "test")) == 2


# ---------------------------------------------------------------- gold answers and fields


def test_gsm8k_gold_is_the_text_after_the_last_hashes():
    assert gsm8k_gold("5 + 5 = 10\n#### 1,000", "f:1") == "1000"
    assert gsm8k_gold("#### 3 #### -4 ", "f:1") == "-4"
    with pytest.raises(DataError, match="f:1.*'answer'.*####"):
        gsm8k_gold("no final line", "f:1")
    with pytest.raises(DataError, match="empty final answer"):
        gsm8k_gold("####  ", "f:1")


def test_math_level():
    assert parse_level("Level 3", "w") == 3
    assert parse_level(4, "w") == 4
    assert parse_level("Level ?", "w") is None and parse_level(None, "w") is None
    with pytest.raises(DataError, match="w: field 'level'"):
        parse_level("hard", "w")


def test_math_gold_falls_back_to_the_last_box(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "P1", "solution": "So $\\boxed{\\frac{1}{2}}$ or rather $\\boxed{\\frac{1}{3}}$.",
         "level": "Level 5", "type": "Algebra"},
        {"problem": "P2", "solution": "\\boxed{4}", "answer": "4", "level": "Level ?", "type": "Geometry"},
    ])
    a, b = read_jsonl_problems(path, "math", "train", name="math")
    assert (a.id, a.gold, a.level, a.subject) == ("math-train-00000", "\\frac{1}{3}", 5, "Algebra")
    assert (b.gold, b.level, b.subject) == ("4", None, "Geometry")


def test_prepared_problem_records_load_as_they_are(tmp_path):
    src = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "answer": "x\n#### 7"}])
    problems = read_jsonl_problems(src, "gsm8k", "test")
    write_problems(tmp_path / "prepared.jsonl", problems)
    assert read_jsonl_problems(tmp_path / "prepared.jsonl", "gsm8k", "test") == problems
    assert read_problems(tmp_path / "prepared.jsonl") == problems
    with pytest.raises(DataError, match=r"prepared\.jsonl:1: field 'dataset' is 'gsm8k'"):
        read_jsonl_problems(tmp_path / "prepared.jsonl", "math", "test")


# ---------------------------------------------------------------- malformed files name file, line and field


@pytest.mark.parametrize("line,message", [
    ('{"question": "Q", "answer": "#### 1"}\n{not json\n', r"bad\.jsonl:2: not valid JSON"),
    ('{"question": "Q"}\n', r"bad\.jsonl:1: missing field 'answer'"),
    ('{"question": 5, "answer": "#### 1"}\n', r"bad\.jsonl:1: field 'question' must be str"),
    ('{"question": "Q", "answer": "1"}\n', r"bad\.jsonl:1: field 'answer' has no '####"),
    ('\n\n{"question": " ", "answer": "#### 1"}\n', r"bad\.jsonl:3: field 'question' is empty"),
    ('[1, 2]\n', r"bad\.jsonl:1: expected a JSON object"),
    ('{"question": "Q", "answer": "#### 1"}\n{"question": "Q", "answer": "#### 1", "id": "gsm8k-x-00000"}\n',
     r"duplicate problem id"),
])
def test_malformed_gsm8k_file(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line)
    with pytest.raises(DataError, match=message):
        read_jsonl_problems(path, "gsm8k", "x")


def test_malformed_math_file(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "P", "solution": "no box here"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: field 'solution' has no \\boxed"):
        read_jsonl_problems(path, "math", "test")
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "P", "solution": "\\boxed{1}", "level": []}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: field 'level'"):
        read_jsonl_problems(path, "math", "test")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.jsonl: file not found"):
        read_jsonl_problems(tmp_path / "nowhere.jsonl", "gsm8k", "test")


# ---------------------------------------------------------------- the hub path, on local `datasets` data


@pytest.fixture()
def gsm8k_hub_dir(tmp_path) -> Path:
    """A directory laid out like the hub repo (train/test data files) with real GSM8K rows."""
    root = tmp_path / "gsm8k_hub"
    root.mkdir()
    for split in ("train", "test"):
        rows = [obj for _, obj in zip(range(6), map(json.loads, shared_data_path("gsm8k", f"{split}.jsonl").open()))]
        write_jsonl(root / f"{split}.jsonl", rows)
    return root


def test_hub_loading_through_datasets(gsm8k_hub_dir):
    cfg = compose("prepare", ["data=gsm8k", f"data.path={gsm8k_hub_dir}", "data.config=null"])
    test = load_problems(cfg.data, "test")
    local = read_jsonl_problems(gsm8k_hub_dir / "test.jsonl", "gsm8k", "test")
    assert test == local  # same records, same ids, whichever way the data came
    assert [p.gold for p in test][:3] == ["18", "3", "70000"]


def test_hub_configs_are_concatenated_in_order(tmp_path):
    """EleutherAI/hendrycks_math has one config per subject; a local repo with the same README configs stands in."""
    root = tmp_path / "hendrycks"
    readme = ["---", "configs:"]
    for subject in ("algebra", "geometry"):
        (root / subject).mkdir(parents=True)
        for split in ("train", "test"):
            write_jsonl(root / subject / f"{split}.jsonl", [
                {"problem": f"{subject} {split} {i}", "solution": f"so \\boxed{{{i}}}", "level": f"Level {i + 1}",
                 "type": subject.title()} for i in range(3)])
        readme += [f"- config_name: {subject}", "  data_files:"]
        readme += [f"  - split: {split}\n    path: {subject}/{split}.jsonl" for split in ("train", "test")]
    (root / "README.md").write_text("\n".join(readme + ["---", ""]))
    cfg = compose("prepare", ["data=math", f"data.path={root}", "data.config=[algebra,geometry]", "data.limit=5"])
    problems = load_problems(cfg.data, "train")
    assert [p.question for p in problems] == [f"algebra train {i}" for i in range(3)] + ["geometry train 0",
                                                                                         "geometry train 1"]
    assert [p.id for p in problems][:2] == ["math-train-00000", "math-train-00001"]
    assert [p.gold for p in problems] == ["0", "1", "2", "0", "1"]
    assert problems[3].subject == "Geometry" and problems[3].level == 1


def test_hub_loading_from_a_saved_dataset(tmp_path):
    import datasets

    rows = [json.loads(line) for line in shared_data_path("math500", "test.jsonl").open()][:4]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    problems = read_hub_problems(str(tmp_path / "saved"), "math", "test")
    assert [p.id for p in problems] == [r["unique_id"] for r in rows]
    assert [p.gold for p in problems] == [r["answer"] for r in rows]
    with pytest.raises(DataError, match="no split 'train'"):
        read_hub_problems(str(tmp_path / "saved"), "math", "train")


def test_a_bad_hub_row_is_named(tmp_path):
    root = tmp_path / "bad_hub"
    root.mkdir()
    write_jsonl(root / "test.jsonl", [{"question": "Q", "answer": "#### 1"}, {"question": "Q2", "answer": "none"}])
    with pytest.raises(DataError, match=r"bad_hub\[test\] row 1: field 'answer' has no '####"):
        read_hub_problems(str(root), "gsm8k", "test")


# ---------------------------------------------------------------- every shipped data config is well-formed


@pytest.mark.parametrize("name", sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml")))
def test_every_data_config_resolves(name):
    cfg = compose("prepare", [f"data={name}"])
    assert cfg.data.dataset in ("gsm8k", "math")
    splits = data_splits(cfg.data)
    assert "test" in splits
    if cfg.data.source == "toy":  # generated, no files (tests/test_toy_task.py)
        return
    for split in splits:
        spec = split_spec(cfg.data, split)
        assert spec["source"] in ("hub", "local") and spec["path"]


def test_math500_takes_train_from_full_math_and_test_from_math500():
    cfg = compose("prepare", ["data=math500"])
    train, test = split_spec(cfg.data, "train"), split_spec(cfg.data, "test")
    assert (train["path"], train["split"], len(train["config"])) == ("EleutherAI/hendrycks_math", "train", 7)
    assert (test["path"], test["split"], test["config"]) == ("HuggingFaceH4/MATH-500", "test", None)
    full = compose("prepare", ["data=math"])
    assert split_spec(full.data, "test")["path"] == "EleutherAI/hendrycks_math"
    gsm = compose("prepare", ["data=gsm8k"])
    assert split_spec(gsm.data, "test") | {"limit": None} == {
        "source": "hub", "path": "openai/gsm8k", "config": "main", "split": "test", "limit": None}
