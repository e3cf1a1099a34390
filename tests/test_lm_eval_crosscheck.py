"""The eval stage against lm-evaluation-harness (eval/adpo_eval/lm_eval_crosscheck.py), at a tiny scale.

The same tiny model and problems through our eval path and through lm-eval's HFLM with a task built from local
files: the prompts and the greedy generations must be identical, and every problem where lm-eval's correctness
differs from ours must fall in one of the explained kinds. Then texts ending in common model styles, replayed
through lm-eval's task pipeline: which of them each side grades right is pinned down per style.
"""

from __future__ import annotations

import csv

import pytest
from adpo_eval.lm_eval_crosscheck import FILTERS, INVALID, MODEL_STYLES, Row, explain

EXPLAINED = (
    "agree: ",
    "no match for lm-eval's regex",
    "lm-eval's match is not a number",
    "same number, but lm-eval compares strings",
    "different number: ",
)


def _explained(why: str) -> bool:
    return why.startswith(EXPLAINED)


def _row(output, gold, ours, ours_correct, lm):
    row = Row("x", gold, output, ours, ours_correct, lm)
    row.why = {name: explain(row, name) for name in lm}
    return row


def test_explain_kinds():
    row = _row("9 * 2 = 18 dollars.\n#### 18", "18", "18", True,
               {"strict-match": (INVALID, False), "flexible-extract": ("18", True), "hash-strict-match": ("18", True)})
    assert row.why["strict-match"].startswith("no match for lm-eval's regex ('The answer is N.')")
    assert row.why["flexible-extract"] == row.why["hash-strict-match"] == "agree: both correct"
    row = _row("The answer is 18.00.", "18", "18", True, {"strict-match": ("18.00", False)})
    assert row.why["strict-match"].startswith("same number, but lm-eval compares strings")
    row = _row("The answer is 18. Check: 3 + 4 = 7.", "18", "18", True, {"flexible-extract": ("7", False)})
    assert row.why["flexible-extract"].startswith("different number: flexible-extract takes the last number")
    row = _row("The answer is 17 + 1 = 18.", "18", "18", True, {"strict-match": ("17", False)})
    assert row.why["strict-match"].startswith("different number: lm-eval takes the first match")
    row = _row("I do not know.", "18", None, False, {"flexible-extract": (INVALID, False)})
    assert row.why["flexible-extract"] == "agree: both found no answer"
    generated = _row("a", "18", None, False, {"flexible-extract": ("18", True)})
    generated.generation_identical = False
    assert explain(generated, "flexible-extract").startswith("different generations")


# Everything below runs lm-eval itself.
needs_lm_eval = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("lm_eval") is None,
    reason="lm-eval is not installed (pip install -e '.[crosscheck]'; scripts/setup.sh installs it)")


@needs_lm_eval
@pytest.mark.slow
def test_same_prompts_and_generations_as_lm_eval(tiny_model_dir, tmp_path):
    """The command line on a random tiny model: identical prompts (zero- and few-shot) and greedy generations, every
    difference in correctness explained, the tables written; gsm8k_cot's own layout gives other prompts."""
    from adpo_data_prep.toy.task import make_problems
    from adpo_eval.lm_eval_crosscheck import main

    from adpo.data.records import write_problems

    data = write_problems(tmp_path / "test.jsonl", make_problems(4, seed=0, split="test"))
    import torch

    out = tmp_path / "out"
    lines: list[str] = []
    threads = torch.get_num_threads()
    summaries = main(["--model-dir", str(tiny_model_dir), "--data", str(data), "--prompts", "zero_shot",
                      "few_shot:1@2", "zero_shot/stock@2", "--max-new-tokens", "16", "--batch-size", "4", "--replay-gsm8k", "",
                      "--out", str(out)], echo=lines.append)
    assert torch.get_num_threads() == threads  # generated with 1 thread, then restored for the tests that follow
    assert [s["problems"] for s in summaries] == [4, 2, 2]
    for s in summaries[:2]:
        assert s["prompts_identical"] == s["generations_identical"] == s["problems"], s
    # lm-eval in gsm8k_cot's own layout ("Q: ...\nA:") is another prompt
    assert summaries[2]["prompts_identical"] == 0
    with (out / "generate_zero_shot.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for r in rows:
        assert r["prompt_identical"] == r["generation_identical"] == "1"
        for name in FILTERS:
            assert _explained(r[f"{name}_why"]), r
            assert (r[f"{name}_correct"] == r["ours_correct"]) == r[f"{name}_why"].startswith("agree"), r
    assert (out / "README.md").read_text() == lines[0]
    assert (out / "summary.csv").exists()


def _expected(style: str, gold: str) -> dict[str, bool]:
    """Which of lm-eval's filters grade a text ending in `style` (with the right answer) correct."""
    strict = style in ("The answer is {g}.", "The answer is {g} dollars.", "The answer is {g}. Check: 3 + 4 = 7.",
                       "The answer is {g}.\nQ: A new question with 12345 apples.")
    flexible = {"The answer is {g}.00.": False,  # "18.00." is compared as a string
                "The answer is {g}. Check: 3 + 4 = 7.": gold == "7",  # the last number
                "The answer is {g}.\nQ: A new question with 12345 apples.": gold == "12345"}.get(style, True)
    return {"strict-match": strict, "flexible-extract": flexible, "hash-strict-match": style == "#### {g}"}


@needs_lm_eval
def test_model_style_endings_replayed_through_lm_eval(tmp_path):
    """Toy problems' worked solutions ending in each MODEL_STYLES ending, through lm-eval's task pipeline (8-shot
    prompts identical to ours) and our grading: ours grades all of them correct, lm-eval's filters as expected."""
    from adpo_data_prep.toy.task import make_problems
    from adpo_eval.lm_eval_crosscheck import model_style_texts, replay, summarize

    problems = make_problems(2 * len(MODEL_STYLES), seed=0, split="test")
    tags = {p.id: MODEL_STYLES[i % len(MODEL_STYLES)] for i, p in enumerate(problems)}
    rows = replay(problems, model_style_texts(problems), prompt_style="few_shot", num_shots=None, work=tmp_path,
                  name="styles", tags=tags)
    assert all(r.prompt_identical for r in rows)
    assert all(r.ours_correct for r in rows), [(r.output[-60:], r.ours) for r in rows if not r.ours_correct]
    for r in rows:
        got = {name: ok for name, (_, ok) in r.lm.items()}
        assert got == _expected(r.tag, r.gold), (r.tag, r.gold, r.lm)
        assert all(_explained(w) for w in r.why.values()), r.why
    s = summarize(rows, "styles")
    assert s["flexible-extract_agreement"] >= len(rows) - 6
