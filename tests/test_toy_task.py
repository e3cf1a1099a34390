"""The quickstart's synthetic task: deterministic, disjoint splits, correct worked solutions in the GSM8K format."""

from __future__ import annotations

import re

import pytest

from adpo.data.records import read_problems, write_problems
from adpo_data_prep.toy.task import load_toy_problems, make_problems, split_of

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_same_arguments_same_problems_and_seeds_differ():
    assert make_problems(40, seed=3, split="train") == make_problems(40, seed=3, split="train")
    assert make_problems(40, seed=3, split="train") != make_problems(40, seed=4, split="train")
    # A bigger request extends a smaller one: sizes can grow without reshuffling.
    assert make_problems(60, seed=3, split="test")[:40] == make_problems(40, seed=3, split="test")


def test_splits_are_disjoint_and_ids_unique():
    train, test = make_problems(1500, 0, "train"), make_problems(400, 0, "test")
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.question) == "train" for p in train)
    for split in (train, test):
        assert len({p.id for p in split}) == len(split)
        assert len({p.question for p in split}) == len(split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_worked_solutions_are_right_and_end_in_the_gold_answer(split):
    for p in make_problems(300, 1, split, min_steps=2, max_steps=4):
        assert p.dataset == "gsm8k" and p.gold.isdigit()
        lines = p.solution.splitlines()
        assert lines[-1] == f"#### {p.gold}"
        equations = EQUATION.findall(p.solution)
        assert len(equations) >= 2
        for a, op, b, result in equations:
            a, b, result = int(a), int(b), int(result)
            expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
            assert expected == result, (p.id, a, op, b, result)
            if op == "/":
                assert a % b == 0
        # The last equation computes the answer.
        assert int(equations[-1][3]) == int(p.gold)
        assert p.question.endswith("now?")


def test_problems_round_trip_through_the_record_files(tmp_path):
    problems = make_problems(25, 0, "test")
    write_problems(tmp_path / "test.jsonl", problems)
    assert read_problems(tmp_path / "test.jsonl") == problems


def test_loader_hook_reads_sizes_seed_and_limit_from_the_data_config():
    cfg = {"splits": {"train": 30, "test": 10}, "seed": 2, "limit": None, "min_steps": 3, "max_steps": 3}
    train = load_toy_problems(cfg, "train")
    assert train == make_problems(30, 2, "train", min_steps=3, max_steps=3)
    assert len(load_toy_problems({**cfg, "limit": 5}, "test")) == 5
    with pytest.raises(ValueError, match="no size for split 'validation'"):
        load_toy_problems(cfg, "validation")


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="split must be one of"):
        make_problems(3, 0, "dev")
    with pytest.raises(ValueError, match="min_steps"):
        make_problems(3, 0, "train", min_steps=3, max_steps=2)
