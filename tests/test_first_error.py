"""Locating the first error of a rejected answer: the toy task's solver read back from its questions, the exact toy
locator on answers corrupted at known places, and the arithmetic locator on handwritten GSM8K-style answers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from adpo_data_prep.toy.task import make_problems, solve
from adpo_eval.first_error import LOCATORS, FirstError, arithmetic_first_error, first_error, toy_first_error

STEP = re.compile(r"(?P<word>[A-Z][a-z]+( one group)?)(?P<mid>.*) = (?P<result>[0-9]+)\.$")


def _problems(n: int = 300) -> list:
    """Problems of every step count, both splits: answers with one step up to five."""
    return [p for lo, hi in ((1, 2), (3, 5)) for split in ("train", "test")
            for p in make_problems(n // 4, seed=11, split=split, min_steps=lo, max_steps=hi)]


def _answer(lines: list[str], j: int, bad_line: str, lead: str = " ") -> tuple[str, int]:
    """The answer `lines` with line j replaced by `bad_line`, and the offset where line j starts in it."""
    prefix = lead + "".join(line + "\n" for line in lines[:j])
    return prefix + "\n".join([bad_line, *lines[j + 1:]]), len(prefix)


# --------------------------------------------------------------------------------------------------------- solve


@pytest.mark.parametrize("seed", [0, 1, 5])
@pytest.mark.parametrize("split", ["train", "test"])
def test_solve_rebuilds_every_generated_solution(seed, split):
    n = 0
    for lo in range(1, 6):
        for hi in range(lo, 6):
            for p in make_problems(100, seed=seed, split=split, min_steps=lo, max_steps=hi):
                assert solve(p.question) == p.solution, p.question
                n += 1
    assert n == 1500


@pytest.mark.parametrize("question, named", [
    ("Mia has 7 shells. She eats 3 shells. How many shells does Mia have now?", "She eats 3 shells."),
    ("Mia has 7 shells. She finds 3 more pens. How many shells does Mia have now?", "She finds 3 more pens."),
    ("Mia has 7 shells. She finds 3 more shells. He finds 1 more shells. How many shells does Mia have now?",
     "He finds 1 more shells."),
    ("Mia has 7 shells. She finds 3 more shells.", "She finds 3 more shells."),
    ("Mia has 7 shells. She finds 3 more shells. How many pens does Mia have now?", "How many pens"),
    ("Mia owns 7 shells. She finds 3 more shells. How many shells does Mia have now?", "Mia owns 7 shells."),
    ("Mia has 7 shells. She splits the shells into 2 equal groups and keeps one group. "
     "How many shells does Mia have now?", "She splits the shells into 2 equal groups"),
    ("Janet's ducks lay 16 eggs per day.", "Janet's ducks lay 16 eggs per day."),
])
def test_solve_names_the_sentence_off_the_templates(question, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        solve(question)


def test_solve_reads_each_template():
    question = ("Leo has 7 cards. He finds 3 more cards. He gives 2 cards to his sister. He buys 2 boxes with 4 cards "
                "in each. Then he doubles the number of cards. He splits the cards into 4 equal groups and keeps one "
                "group. How many cards does Leo have now?")
    assert solve(question) == ("Finds 3: 7 + 3 = 10.\nGives 2: 10 - 2 = 8.\nBuys 2 * 4 = 8, so 8 + 8 = 16.\n"
                               "Doubles: 16 * 2 = 32.\nKeeps one group: 32 / 4 = 8.\n#### 8")


# ------------------------------------------------------------------------------------------------------ toy locator


def test_toy_wrong_result_is_located_at_the_result():
    checked = 0
    for p in _problems():
        lines = p.solution.split("\n")
        for j, line in enumerate(lines[:-1]):
            m = STEP.match(line)
            bad = line[:m.start("result")] + str(int(m["result"]) + 1) + "."
            response, at = _answer(lines, j, bad)
            assert toy_first_error(p.question, response) == FirstError(
                char=at + m.start("result"), end=at + m.start("result") + len(str(int(m["result"]) + 1)),
                kind="toy", statement=bad, expected=line)
            checked += 1
    assert checked > 500


def test_toy_wrong_copied_operand_is_located_at_the_operand():
    checked = 0
    for p in _problems():
        lines = p.solution.split("\n")
        for j, line in enumerate(lines[:-1]):
            # The running value copied into the step: after "Finds 3: " or after ", so ".
            m = re.search(r"(?:, so |^[^:,]*: )(?P<v>[0-9]+) ", line)
            bad = line[:m.start("v")] + str(int(m["v"]) + 10) + line[m.end("v"):]
            response, at = _answer(lines, j, bad)
            error = toy_first_error(p.question, response)
            assert (error.char, error.statement, error.expected) == (at + m.start("v"), bad, line)
            checked += 1
    assert checked > 500


def test_toy_wrong_step_word_is_located_at_the_word():
    for p in _problems(40):
        lines = p.solution.split("\n")
        word = lines[0].split()[0]
        # A different word, and one that differs only from its third letter on: wrong from its first either way.
        for bad_word in ("Loses", word[:2] + "zz"):
            bad = bad_word + lines[0][len(word):]
            response = " " + "\n".join([bad, *lines[1:]])
            error = toy_first_error(p.question, response)
            assert (error.char, error.end, error.statement, error.expected) == (1, 1 + len(bad_word), bad, lines[0])


def test_toy_missing_line_is_located_where_the_next_line_was_written():
    checked = 0
    for p in _problems():
        lines = p.solution.split("\n")
        for j in range(len(lines) - 1):
            if lines[j][0] == lines[j + 1][0]:
                continue  # same step word: the lines part later, somewhere inside
            response = " " + "\n".join(lines[:j] + lines[j + 1:])
            at = 1 + sum(len(line) + 1 for line in lines[:j])
            error = toy_first_error(p.question, response)
            assert (error.char, error.statement, error.expected) == (at, lines[j + 1], lines[j])
            checked += 1
    assert checked > 100


def test_toy_word_cut_short_is_wrong_from_its_start():
    question = "Mia has 7 shells. She finds 3 more shells. How many shells does Mia have now?"
    response = " Finds 3: 7 + 3 = 1.\n#### 1"
    assert toy_first_error(question, response) == FirstError(
        char=response.index("= 1.") + 2, end=response.index("= 1.") + 3, kind="toy",
        statement="Finds 3: 7 + 3 = 1.", expected="Finds 3: 7 + 3 = 10.")


def test_toy_correct_and_cut_short_answers_have_no_error():
    for p in _problems(40):
        assert toy_first_error(p.question, " " + p.solution) is None
        assert toy_first_error(p.question, p.solution + "\n") is None
        last = p.solution.rindex("\n") + len("#### ")
        for cut in (0, 1, 7, len(p.solution) // 2, last):
            assert toy_first_error(p.question, " " + p.solution[:cut]) is None


def test_toy_final_answer_short_of_digits_is_wrong_not_cut_short():
    question = "Mia has 7 shells. She finds 5 more shells. How many shells does Mia have now?"
    response = " Finds 5: 7 + 5 = 12.\n#### 1"
    assert toy_first_error(question, response) == FirstError(
        char=len(response) - 1, end=len(response), kind="toy", statement="#### 1", expected="#### 12")


def test_toy_leading_whitespace_is_skipped_but_offsets_are_the_responses():
    question = "Tom has 4 pens. He finds 2 more pens. He gives 1 pens to a friend. How many pens does Tom have now?"
    solution = "Finds 2: 4 + 2 = 6.\nGives 1: 6 - 1 = 5.\n#### 5"
    assert solve(question) == solution
    bad = "Finds 2: 4 + 2 = 6.\nGives 1: 6 - 1 = 4.\n#### 4"
    for lead in ("", " ", "\n  "):
        error = toy_first_error(question, lead + bad)
        assert error.char == len(lead) + bad.index("= 4") + 2 and error.end == error.char + 1
        assert (error.statement, error.expected) == ("Gives 1: 6 - 1 = 4.", "Gives 1: 6 - 1 = 5.")


def test_toy_answer_going_on_past_the_solution_is_wrong_where_it_goes_on():
    question = "Tom has 4 pens. He finds 2 more pens. How many pens does Tom have now?"
    response = " Finds 2: 4 + 2 = 6.\n#### 6\nFinds 1: 6 + 1 = 7."
    error = toy_first_error(question, response)
    assert (error.char, error.end) == (response.index("#### 6") + 6, response.index("#### 6") + 7)
    extra = toy_first_error(question, " Finds 2: 4 + 2 = 6.\n#### 61")
    assert (extra.char, extra.statement, extra.expected) == (len(" Finds 2: 4 + 2 = 6.\n#### "), "#### 61", "#### 6")


def test_toy_locator_refuses_other_questions():
    with pytest.raises(ValueError, match="Natalia sold clips"):
        toy_first_error("Natalia sold clips to 48 of her friends.", " 48 / 2 = 24")


# ----------------------------------------------------------------------------------------------- arithmetic locator


def test_first_false_statement_among_true_ones():
    text = ("Each box has 7 rows of 8 eggs, so 7 * 8 = 54 eggs per box.\nShe buys 3 boxes: 3 * 54 = 162 eggs.\n"
            "She had 12 + 3 = 15 before.\n#### 162")
    text = "He starts with 20 - 5 = 15 eggs. " + text
    assert arithmetic_first_error(text) == FirstError(
        char=text.index("54"), end=text.index("54") + 2, kind="arithmetic", statement="7 * 8 = 54", expected="56")


def test_true_answers_have_no_error():
    text = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
            "in April and May.\n#### 72")
    assert arithmetic_first_error(text) is None
    assert arithmetic_first_error("No arithmetic here, just 42.\n#### 42") is None


@pytest.mark.parametrize("text, wrong, expected", [
    ("The rent is $1,200 + $300 = $1,600 a month.", "1,600", "1500"),
    ("Tickets cost 2 * $12.50 = $24.", "24", "25"),
    ("She earns 12 * 3 = 36 dollars, so 36 * 2 = $70.", "70", "72"),
])
def test_dollars_and_thousands_commas(text, wrong, expected):
    error = arithmetic_first_error(text)
    assert (error.char, error.end, error.expected) == (text.index(wrong), text.index(wrong) + len(wrong), expected)
    assert arithmetic_first_error(text.replace(wrong, expected)) is None


@pytest.mark.parametrize("text, false_at", [
    ("10/3 = 3.33", None), ("10/3 = 3.3", None), ("10/3 = 3", None), ("2/3 = 0.67", None), ("7/2 = 3.5", None),
    ("1.5 * 2 = 3.0", None), ("0.1 + 0.2 = 0.3", None),
    ("10/3 = 3.34", "3.34"), ("10/3 = 3.4", "3.4"), ("2/3 = 0.6", "0.6"), ("10/4 = 2.6", "2.6"), ("10/3 = 4", "4"),
])
def test_decimals_allow_the_rounding_written(text, false_at):
    error = arithmetic_first_error(text)
    assert (error and error.char) == (text.rindex(false_at) if false_at else None)


def test_expected_value_is_formatted():
    assert arithmetic_first_error("10/3 = 4").expected == "3.3333"
    assert arithmetic_first_error("3 * 0.5 = 3").expected == "1.5"
    assert arithmetic_first_error("6 / 3 = 3").expected == "2"
    assert arithmetic_first_error("3 - 5 = 2").expected == "-2"


def test_chains_check_each_equals_sign_with_the_expression_before_it():
    assert arithmetic_first_error("2 * 3 = 6 * 2 = 12") is None
    text = "2 * 3 = 6 * 2 = 13"
    error = arithmetic_first_error(text)
    assert (error.char, error.statement, error.expected) == (text.index("13"), "6 * 2 = 13", "12")
    text = "2 * 3 = 7 * 2 = 14"
    assert arithmetic_first_error(text).char == text.index("7")
    # The right side may be an expression of the same value rather than a result.
    assert arithmetic_first_error("2 * 3 = 3 * 2") is None


def test_calculator_annotations():
    text = "She has 48/2 = <<48/2=25>>25 clips."
    error = arithmetic_first_error(text)
    assert (error.char, error.statement, error.expected) == (text.index("=25") + 1, "48/2=25", "24")


@pytest.mark.parametrize("text", [
    "20% of 50 = 10", "x = 5", "So 5% * 40 = 3", "The answer = 12", "5 apples + 3 apples = 8 apples",
    "5 apples + 3 = 9", "apples - 3 = 5", "10 / 0 = 3", "(12 - 12) / (3 - 3) = 1", "1/2 = 50%", "2(3 + 4) = 15",
    "3x + 4 = 20", "4 = 5", "7 * 8 = many",
])
def test_not_checkable_statements_are_skipped(text):
    assert arithmetic_first_error(text) is None


def test_x_between_spaced_numbers_is_multiplication():
    assert arithmetic_first_error("3 x 4 = 12") is None
    text = "He buys 3 x 4 = 13 pens."
    assert arithmetic_first_error(text).char == text.index("13")
    # Not between numbers with spaces: prose, so nothing is checked.
    assert arithmetic_first_error("3x4 = 13") is None
    assert arithmetic_first_error("a box 4 = 13") is None


def test_parentheses_and_other_operators():
    text = "(3 + 4) * 2 = 15"
    error = arithmetic_first_error(text)
    assert (error.char, error.statement, error.expected) == (text.index("15"), text, "14")
    assert arithmetic_first_error("(3 + 4) * 2 = 14") is None
    text = "The total (3 + 4 = 8) is wrong."
    error = arithmetic_first_error(text)
    assert (error.char, error.statement) == (text.index("8"), "3 + 4 = 8")
    assert arithmetic_first_error("10 ÷ 2 × 3 = 15") is None
    assert arithmetic_first_error("10 ÷ 2 × 3 = 16").expected == "15"


def test_negative_numbers():
    assert arithmetic_first_error("3 - 5 = -2") is None
    assert arithmetic_first_error("-3 + 5 = 2") is None
    text = "3 - 5 = 2"
    assert arithmetic_first_error(text).char == text.index("2")
    text = "4 * -2 = -6"
    error = arithmetic_first_error(text)
    assert (error.char, error.end, error.expected) == (text.index("-6"), len(text), "-8")


# ----------------------------------------------------------------------------------------------------- dispatch


def test_first_error_dispatches_by_locator():
    p = make_problems(1, seed=2)[0]
    bad = " " + p.solution.replace("#### ", "#### 9")
    assert LOCATORS == ("toy", "arithmetic", "none")
    assert first_error("toy", p.question, bad) == toy_first_error(p.question, bad) is not None
    assert first_error("arithmetic", "", "7 * 8 = 54") == arithmetic_first_error("7 * 8 = 54") is not None
    assert first_error("none", p.question, bad) is None
    with pytest.raises(ValueError, match=r"'gsm8k'.*\('toy', 'arithmetic', 'none'\)"):
        first_error("gsm8k", p.question, bad)


def test_locators_need_neither_torch_nor_transformers():
    code = ("import sys\nfrom adpo_eval.first_error import first_error\n"
            "q = 'Tom has 4 pens. He finds 2 more pens. How many pens does Tom have now?'\n"
            "assert first_error('toy', q, ' Finds 2: 4 + 2 = 7.') is not None\n"
            "assert first_error('arithmetic', q, '7 * 8 = 54') is not None\n"
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
