"""Answer extraction and equivalence on the real datasets, on model-style outputs, and on adversarial text."""

from __future__ import annotations

import time

import pytest

from adpo.grading import Grade, Grader, answer_key, extract_answer, grade, grade_batch, is_correct, last_boxed_content
from adpo.grading.adversarial import ADVERSARIAL_OUTPUTS
from tests.conftest import shared_data_path

# ---------------------------------------------------------------- the real data: every gold solution grades correct


@pytest.mark.real_data
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_solution_grades_correct(split):
    from adpo.data.loaders import read_jsonl_problems

    problems = read_jsonl_problems(shared_data_path("gsm8k", f"{split}.jsonl"), "gsm8k", split)
    assert len(problems) == {"train": 7473, "test": 1319}[split]
    grades = grade_batch("gsm8k", [p.solution for p in problems], [p.gold for p in problems], workers=2)
    wrong = [(p.id, p.gold, g) for p, g in zip(problems, grades) if not g.correct]
    assert wrong == []
    # ... and what was extracted is the gold itself, in canonical form
    assert all(g.extracted == p.gold for p, g in zip(problems, grades))


@pytest.mark.real_data
def test_every_math500_solution_grades_correct():
    from adpo.data.loaders import read_jsonl_problems

    problems = read_jsonl_problems(shared_data_path("math500", "test.jsonl"), "math", "test")
    assert len(problems) == 500
    grades = grade_batch("math", [p.solution for p in problems], [p.gold for p in problems], workers=2)
    wrong = [(p.id, p.gold, g) for p, g in zip(problems, grades) if not g.correct]
    assert wrong == []
    # the gold of one problem is not the answer of another (the check can fail)
    shifted = grade_batch("math", [p.solution for p in problems[:40]], [p.gold for p in problems[1:41]], workers=2)
    assert sum(g.correct for g in shifted) <= 2


# ---------------------------------------------------------------- GSM8K, model-style outputs

GSM8K_CASES = [
    # (output, gold, extracted, correct)
    ("She has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. The answer is 18.", "18", "18", True),
    ("9 * 2 = 18 dollars.\n#### 18", "18", "18", True),
    ("The answer is $18$.", "18", "18", True),
    ("So she makes **18** dollars.", "18", "18", True),
    ("The final answer is 18", "18", "18", True),
    ("The answer is \\$1,000.", "1000", "1000", True),
    ("The answer is 18 dollars.", "18", "18", True),
    ("The answer is \\text{18}.", "18", "18", True),
    ("Therefore the total is \\boxed{18}.", "18", "18", True),
    ("The answer is: 1,234,567", "1234567", "1234567", True),
    ("The answer is -5.", "-5", "-5", True),
    ("The temperature drops to \u22125 degrees. The answer is \u22125.", "-5", "-5", True),
    ("The answer is 0.50", "0.5", "0.5", True),
    ("The answer is .5", "0.5", "0.5", True),
    ("The answer is 1/2.", "0.5", "0.5", True),
    ("The answer is \\frac{3}{4}.", "0.75", "0.75", True),
    ("The answer is 18.00.", "18", "18", True),
    ("The answer is 50%.", "50", "50", True),
    ("The answer is 10 - 3 = 7.", "7", "7", True),
    ("The answer is 7. Check: 7 = 3 + 4.", "7", "7", True),
    ("The final answer is: $\\boxed{18}$", "18", "18", True),
    ("**Answer:** 18", "18", "18", True),
    ("Answer: 16 - 3 - 4 = 9 eggs are sold. She makes 9 * 2 = 18.", "18", "18", True),
    ("Answer:\n$18", "18", "18", True),
    ("So she makes 18 dollars.\n\n**Final Answer:**\n\n18 dollars", "18", "18", True),
    ("**Answer: 18**", "18", "18", True),
    ("Janet makes $18.00 per day.", "18", "18", True),
    ("She makes 9 * $2 = $18 every day at the farmers' market.", "18", "18", True),
    # a run-on answer that starts a new question with a single newline or in the "Q:" layout
    ("9 * 2 = 18. The answer is 18.\nQ: Tom has 2 apples. The answer is 2.", "18", "18", True),
    ("9 * 2 = 18. The answer is 18.\nQuestion: Tom has 2 apples.\nAnswer: The answer is 2.", "18", "18", True),
    ("He pays 3 * 4 = 12 dollars in total", "12", "12", True),  # no anchor: the last number
    ("The answer is 17.", "18", "17", False),
    ("I do not know.", "18", None, False),
    ("", "18", None, False),
    # the anchor stated last wins over earlier numbers and earlier anchors
    ("The answer is 5. Wait, that is wrong: 3 + 4 = 7. The answer is 7.", "7", "7", True),
    # text after the stop sequence (the model starting the next exemplar) is never read
    ("3 + 4 = 7. The answer is 7.\n\nQuestion: Tom has 2 apples. The answer is 2.", "7", "7", True),
    # LaTeX thousands separators
    ("The answer is $1{,}000$.", "1000", "1000", True),
    ("The answer is 1\\,000.", "1000", "1000", True),
    ("He buys 5 100-pound bags, so 500 pounds.", "500", "500", True),
]


@pytest.mark.parametrize("text,gold,extracted,correct", GSM8K_CASES)
def test_gsm8k_model_outputs(text, gold, extracted, correct):
    assert extract_answer("gsm8k", text) == extracted
    assert is_correct("gsm8k", text, gold) is correct


# ---------------------------------------------------------------- MATH, model-style outputs

MATH_CASES = [
    # (output, gold, correct)
    ("So $x = \\boxed{5}$.", "5", True),
    ("So $x = \\boxed{6}$.", "5", False),
    ("No boxed answer here, just 5.", "5", False),
    ("First \\boxed{3}, then on reflection \\boxed{5}.", "5", True),  # the last box counts
    ("First \\boxed{5}, then on reflection \\boxed{3}.", "5", False),
    ("The value is \\boxed{\\frac12}.", "0.5", True),
    ("The value is \\boxed{0.5}.", "\\frac{1}{2}", True),
    ("The value is \\boxed{\\dfrac{1}{2}}.", "\\frac{1}{2}", True),
    ("The angle is \\boxed{30^\\circ}.", "30", True),
    ("The angle is \\boxed{30}.", "30^\\circ", True),
    ("The winner is \\boxed{\\text{Evelyn}}.", "\\text{Evelyn}", True),
    ("The winner is \\boxed{Evelyn}.", "\\text{Evelyn}", True),
    ("The answer is \\boxed{\\text{(C)}}.", "\\text{(C)}", True),
    ("The domain is \\boxed{[2,5)}.", "[2,5)", True),
    ("The domain is \\boxed{[2,5]}.", "[2,5)", False),
    ("It is \\boxed{(-\\infty, 3]}", "(-\\infty,3]", True),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("The polar form is \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("The roots are \\boxed{3, 5}.", "5, 3", True),
    ("So \\boxed{x^2+2x}.", "2x+x^2", True),
    ("So \\boxed{\\frac{\\sqrt{3}}{2}}.", "\\frac{1}{2}\\sqrt{3}", True),
    ("So \\boxed{x = 5}.", "5", True),
    ("So \\boxed{10\\%}.", "10", True),
    ("The answer is \\boxed 5.", "5", True),  # "\boxed x" without braces
    ("The answer is \\fbox{5}.", "5", True),
    ("Final Answer: The final answer is $\\frac{2}{3}$. I hope it is correct.", "\\frac{2}{3}", True),
    ("Final Answer: The final answer is $24$. I hope it is correct.", "24", True),
    ("Final Answer: The final answer is 24. I hope it is correct.", "24", True),
    ("Therefore, the final answer is $18$.", "18", True),
    ("**Final Answer**: \n\n$\\frac{1}{2}$", "0.5", True),
    ("Therefore, the answer is $x = 5$.", "5", True),
    ("The final answer is 5, since $x$ is positive.", "5", True),
    ("The final answer is the value $5$.", "5", True),
    ("The final answer is \\[\n\\frac{1}{2}\n\\]", "\\frac12", True),
    ("The area is \\boxed{18\\text{ square units}}.", "18", True),
    ("It costs \\boxed{\\$18}.", "18", True),
    ("It costs \\boxed{18 dollars}.", "18", True),
    ("\\boxed{}", "5", False),  # an empty box is no answer
    # several answers in adjacent boxes are read together; a repeated box is one answer
    ("The solutions are $\\boxed{2}$ and $\\boxed{3}$.", "2, 3", True),
    ("The solutions are \\boxed{-2}, \\boxed{3}", "3,-2", True),
    ("So the answer is \\boxed{4}\n\\boxed{4}", "4", True),
    ("First \\boxed{2}. Then more text, and finally \\boxed{3}.", "2, 3", False),
    ("We get \\boxed{5}.\n\nProblem: What is 2+2?\nSolution: \\boxed{4}", "5", True),  # stop sequence honoured
    ("The number is \\boxed{1,000}.", "1000", True),
]


@pytest.mark.parametrize("text,gold,correct", MATH_CASES)
def test_math_model_outputs(text, gold, correct):
    assert is_correct("math", text, gold) is correct


def test_math_extraction_details():
    assert extract_answer("math", "a \\boxed{\\frac{1}{2}} b \\boxed{\\{1,2\\}} c") == "\\{1,2\\}"
    assert last_boxed_content("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed_content("\\boxed{unclosed") is None
    assert extract_answer("math", "Final Answer: The final answer is $[2,5)$. I hope it is correct.") == "[2,5)"
    assert extract_answer("math", "nothing to see") is None
    assert extract_answer("math", "") is None


def test_no_answer_is_wrong_not_an_error():
    for dataset in ("gsm8k", "math"):
        assert grade(dataset, "", "5") == Grade(None, False)
        assert grade(dataset, "blah", "5").correct is False
    assert is_correct("math", "\\boxed{\\frac{1}{}}", "5") is False  # malformed LaTeX
    assert is_correct("math", "\\boxed{5}", "") is False  # an empty gold matches nothing


def test_unknown_dataset_is_an_error():
    with pytest.raises(ValueError, match="dataset"):
        extract_answer("mmlu", "The answer is 5")
    with pytest.raises(ValueError, match="dataset"):
        grade_batch("mmlu", ["x"], ["5"], workers=0)


def test_answer_key_groups_equal_spellings():
    assert answer_key("gsm8k", extract_answer("gsm8k", "The answer is 18.00")) == answer_key(
        "gsm8k", extract_answer("gsm8k", "#### 18"))
    assert answer_key("math", "\\dfrac{1}{2}") == answer_key("math", "\\frac {1}{2}")
    assert answer_key("math", "3") != answer_key("math", "4")
    assert answer_key("math", None) is None


# ---------------------------------------------------------------- the batch API


def test_grade_batch_matches_serial_grading_and_keeps_order():
    texts = [case[0] for case in MATH_CASES]
    golds = [case[1] for case in MATH_CASES]
    parallel = grade_batch("math", texts, golds, workers=2, timeout_s=20)
    serial = grade_batch("math", texts, golds, workers=0, timeout_s=20)
    assert [g.correct for g in parallel] == [case[2] for case in MATH_CASES]
    assert parallel == serial


def test_grade_batch_checks_lengths_and_handles_empty():
    assert grade_batch("gsm8k", [], [], workers=2) == []
    with pytest.raises(ValueError, match="golds"):
        grade_batch("gsm8k", ["a"], [], workers=0)
    assert grade_batch("gsm8k", [None], ["5"], workers=0) == [Grade(None, False)]  # type: ignore[list-item]


@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_adversarial_outputs_finish_in_bounded_time(dataset):
    timeout_s = 2.0
    texts = list(ADVERSARIAL_OUTPUTS.values()) + ["The answer is \\boxed{5}. The answer is 5."]
    start = time.monotonic()
    with Grader(workers=2, timeout_s=timeout_s) as grader:
        grades = grader.grade_batch(dataset, texts, ["5"] * len(texts))
    elapsed = time.monotonic() - start
    assert [g.correct for g in grades] == [False] * len(ADVERSARIAL_OUTPUTS) + [True]
    # every stuck item costs at most two deadlines (in its chunk, then alone), spread over two workers
    assert elapsed < 2 * timeout_s * len(texts) / 2 + 15


def test_a_stuck_item_is_killed_and_its_worker_replaced():
    # math-verify's own alarm set past the deadline: the power tower keeps sympy busy until the worker is killed
    with Grader(workers=1, timeout_s=1.0, soft_timeout_s=60) as grader:
        first = grader.grade_batch("math", [ADVERSARIAL_OUTPUTS["power tower"], "\\boxed{5}"], ["5", "5"])
        again = grader.grade_batch("math", ["\\boxed{5}"], ["5"])
    assert first[0].error == "timeout" and first[1].correct
    assert again[0].correct


# ---------------------------------------------------------------- every real gold, restated in common model styles

GSM8K_STYLES = [
    "Adding it up gives {g}. The answer is {g}.",
    "The answer is ${g}$.",
    "So the total is **{g}**.",
    "The final answer is {g}",
    "She makes \\${gc} in all.",
    "That makes {gc} dollars.",
    "Therefore, the answer is \\boxed{{{g}}}.",
    "The final answer is: $\\boxed{{{gc}}}$",
    "The answer is {g}.\n\nQuestion: A new question with 12345 in it.",
]


@pytest.mark.real_data
@pytest.mark.parametrize("style", GSM8K_STYLES)
def test_gsm8k_golds_in_model_styles(style):
    from adpo.data.loaders import read_jsonl_problems

    problems = read_jsonl_problems(shared_data_path("gsm8k", "test.jsonl"), "gsm8k", "test")
    golds = [p.gold for p in problems]

    def render(value: int) -> str:
        return "3 + 4 = 7 and 12 - 5 = 7. " + style.format(g=value, gc=f"{value:,}")

    right = grade_batch("gsm8k", [render(int(g)) for g in golds], golds, workers=0)
    wrong = grade_batch("gsm8k", [render(int(g) + 1) for g in golds], golds, workers=0)
    assert [g.correct for g in right] == [True] * len(golds)
    assert not any(g.correct for g in wrong)


MATH_STYLES = [
    "Thus the answer is $\\boxed{%s}$.",
    "Final Answer: The final answer is $%s$. I hope it is correct.",
    "The final answer is: $\\boxed{%s}$",
    "Therefore the answer is \\(\\boxed{%s}\\).",
    "**Final Answer**\n\n\\[\n\\boxed{%s}\n\\]",
    "So, the answer is $%s$.",
]


@pytest.mark.real_data
@pytest.mark.parametrize("style", MATH_STYLES)
def test_math500_golds_in_model_styles(style):
    from adpo.data.loaders import read_jsonl_problems

    problems = read_jsonl_problems(shared_data_path("math500", "test.jsonl"), "math", "test")
    golds = [p.gold for p in problems]
    right = grade_batch("math", [style % g for g in golds], golds, workers=2)
    assert [(p.id, g.correct) for p, g in zip(problems, right) if not g.correct] == []


@pytest.mark.real_data
def test_math500_other_golds_in_model_styles_are_wrong():
    from adpo.data.loaders import read_jsonl_problems

    golds = [p.gold for p in read_jsonl_problems(shared_data_path("math500", "test.jsonl"), "math", "test")][:20]
    others = golds[7:] + golds[:7]
    texts = [style % o for style in MATH_STYLES for o in others]
    with Grader(workers=2) as grader:
        wrong = grader.grade_batch("math", texts, golds * len(MATH_STYLES))
        same = grader.grade_batch("math", [f"\\boxed{{{o}}}" for o in others], golds)
    # every style agrees with the plain box, which is wrong except where two golds really are equal
    assert [g.correct for g in wrong] == [g.correct for g in same] * len(MATH_STYLES)
    assert sum(g.correct for g in same) <= 1
