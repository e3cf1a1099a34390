"""Where a rejected answer first goes wrong, as a character span of the answer text: pure text, no torch.

The process statistics ask whether a trained policy's implicit reward turns negative at the first wrong step of a
rejected answer, so they need that step's position. Two locators:

- `toy`: exact. The toy task's question determines its one correct solution (`adpo_data_prep.toy.task.solve`); the
  first character where the answer leaves it, snapped to the start of its word or number, is the error.
- `arithmetic`: for GSM8K-style answers, whose reasoning has no single correct text: the first written arithmetic
  statement "LHS = RHS" that is false. Blind to errors that are not false equations (a wrong operand copied from the
  question, a wrong plan), so it finds a subset of the errors, never a correct statement.

`none` locates nothing (answers without a locator).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

LOCATORS = ("toy", "arithmetic", "none")

# The toy task's solver, named as data: adpo_eval never imports adpo_data_prep (imports go one way, checked by
# tests/test_layout.py), the way the core names the data side's generator in conf/data/toy.yaml.
TOY_SOLVER = "adpo_data_prep.toy.task.solve"


@dataclass(frozen=True)
class FirstError:
    char: int  # index into the response text where the first wrong value/word begins
    end: int  # index just past the wrong value (toy: the differing word; arithmetic: the RHS number)
    kind: str  # "toy" or "arithmetic"
    statement: str  # the line (toy) or the statement "LHS = RHS" (arithmetic) that is wrong, as written
    expected: str | None  # toy: the correct line; arithmetic: the true value of the LHS, formatted


def first_error(locator: str, question: str, response: str) -> FirstError | None:
    """The first error of `response` by the named locator (one of LOCATORS); None when it locates none."""
    if locator == "toy":
        return toy_first_error(question, response)
    if locator == "arithmetic":
        return arithmetic_first_error(response)
    if locator == "none":
        return None
    raise ValueError(f"unknown first-error locator {locator!r}; expected one of {LOCATORS}")


# ---------------------------------------------------------------------------------------------------------- toy


def _toy_solver() -> Callable[[str], str]:
    """The data side's solver, imported by name at first use (see TOY_SOLVER)."""
    module, _, name = TOY_SOLVER.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _word_span(text: str, i: int, lo: int) -> tuple[int, int]:
    """The maximal alphanumeric run of `text` around index i (not before lo); (i, i + 1) when text[i] is not one."""
    if i >= len(text) or not text[i].isalnum():
        return i, min(i + 1, len(text))
    start, end = i, i + 1
    while start > lo and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end


def _short_final_answer(body: str, solution: str, start: int) -> FirstError | None:
    """A prefix of the solution that ends inside the final "#### N" after some of its digits: a final answer written
    wrong ("#### 1" for "#### 12"), not an answer cut short."""
    last = solution.rfind("\n") + 1
    digits = last + len("#### ")
    if not solution.startswith("#### ", last) or len(body) <= digits:
        return None
    char = start + digits
    return FirstError(char=char, end=start + len(body), kind="toy", statement=body[last:],
                      expected=solution[last:])


def toy_first_error(question: str, response: str) -> FirstError | None:
    """The first place `response` leaves the toy question's correct solution, or None when it never does.

    The response's leading whitespace is skipped (answers follow the prompt after a space) and so is its trailing
    whitespace; offsets are into the response as given. The differing character is snapped back to the start of the
    word or number holding it, so a wrong "12" where "13" belongs starts at the "1"; a word cut short ("1." where
    "10." belongs) is wrong from its start too. An answer that is a strict prefix of the solution was cut short (the
    length limit) and has no wrong step written: None, except when it stops inside the final "#### N" after some of
    its digits, which is a wrong final answer. One that goes on past the whole solution is wrong where it goes on.
    Raises ValueError when the question is not a toy question.
    """
    solution = _toy_solver()(question)
    start = len(response) - len(response.lstrip())
    body = response[start:].rstrip()
    if body == solution:
        return None
    if solution.startswith(body):
        return _short_final_answer(body, solution, start)
    i = next((j for j, (a, b) in enumerate(zip(body, solution)) if a != b), len(solution))
    cut_short = 0 < i < len(solution) and solution[i].isalnum() and body[i - 1].isalnum() and not body[i].isalnum()
    char, end = _word_span(response, start + i - (1 if cut_short else 0), start)
    line = body[:char - start].count("\n")
    solution_lines = solution.split("\n")
    return FirstError(char=char, end=end, kind="toy", statement=body.split("\n")[line],
                      expected=solution_lines[line] if line < len(solution_lines) else None)


# --------------------------------------------------------------------------------------------------- arithmetic

# A number as written: "$" optional, thousands commas, decimals, "%" optional; not glued to a word ("3x", "5th").
_NUMBER = r"\$?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![\w.,]?[0-9])"
_TOKEN = re.compile(rf"(?P<num>(?<![\w.,]){_NUMBER}%?(?!\w))|(?P<op>[-+*/×÷])|(?P<x>(?<!\w)x(?!\w))"
                    r"|(?P<lp>\()|(?P<rp>\))|(?P<ws>[ \t]+)|(?P<other>\w+|.)", re.DOTALL)
# The number right after "=": whitespace and "$" before it, an optional minus sign.
_RHS = re.compile(r"\s*\$?(?P<num>-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<dec>[0-9]+))?)(?![\w.,]?[0-9])"
                  r"(?P<pct>%)?")
_BINARY = {"+", "-", "*", "/", "×", "÷"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # num | op | lp | rp | ws | other
    text: str
    start: int  # index into the whole text


def _tokens(text: str, lo: int, hi: int) -> list[_Tok]:
    """text[lo:hi] as tokens; a lone "x" between two numbers with spaces around it is multiplication, else prose."""
    toks = [_Tok(m.lastgroup or "other", m.group(), lo + m.start()) for m in _TOKEN.finditer(text[lo:hi])]
    for k, t in enumerate(toks):
        if t.kind == "x":
            times = (2 <= k <= len(toks) - 3 and toks[k - 1].kind == toks[k + 1].kind == "ws"
                     and toks[k - 2].kind == toks[k + 2].kind == "num")
            toks[k] = _Tok("op" if times else "other", t.text, t.start)
    return toks


class _Unparsable(Exception):
    """The tokens are not one whole arithmetic expression (or divide by zero): the statement is not checked."""


class _Parser:
    """Recursive descent over expression tokens: + - over * / × ÷ over unary minus over numbers and parentheses.

    A unary minus must touch what it negates ("-3", not "- 3"): a dash after prose is punctuation, not a sign.
    """

    def __init__(self, toks: list[_Tok]):
        self.toks = [t for t in toks if t.kind != "ws"]
        self.pos = 0
        self.binary = 0  # binary operators seen: a bare number is not a statement worth checking

    def _peek(self) -> _Tok | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def _take(self) -> _Tok:
        t = self._peek()
        if t is None:
            raise _Unparsable("expression ends early")
        self.pos += 1
        return t

    def parse(self) -> Fraction:
        value = self._sum()
        if self._peek() is not None:
            raise _Unparsable(f"unexpected {self._peek()}")
        return value

    def _sum(self) -> Fraction:
        value = self._product()
        while (t := self._peek()) is not None and t.kind == "op" and t.text in "+-":
            self._take()
            self.binary += 1
            right = self._product()
            value = value + right if t.text == "+" else value - right
        return value

    def _product(self) -> Fraction:
        value = self._unary()
        while (t := self._peek()) is not None and t.kind == "op" and t.text not in "+-":
            self._take()
            self.binary += 1
            right = self._unary()
            if t.text in "*×x":
                value *= right
            elif right == 0:
                raise _Unparsable("division by zero")
            else:
                value /= right
        return value

    def _unary(self) -> Fraction:
        t = self._take()
        if t.kind == "op" and t.text == "-":
            nxt = self._peek()
            if nxt is None or nxt.start != t.start + 1:
                raise _Unparsable("a dash apart from what follows is not a sign")
            return -self._unary()
        if t.kind == "num":
            if t.text.endswith("%"):
                raise _Unparsable("percentages are not checked")
            return Fraction(t.text.lstrip("$").replace(",", ""))
        if t.kind == "lp":
            value = self._sum()
            if self._take().kind != "rp":
                raise _Unparsable("unclosed parenthesis")
            return value
        raise _Unparsable(f"unexpected {t}")


def _expression_before(text: str, lo: int, eq: int) -> list[_Tok]:
    """The expression tokens right before the "=" at eq, not before lo: back to the last prose token, without the
    leading tokens that cannot open an expression (a closing parenthesis, an operator other than a touching minus)
    and without opening parentheses that are never closed ("(3 + 4 = 7)")."""
    toks = _tokens(text, lo, len(text[:eq].rstrip()))
    last_other = max((k for k, t in enumerate(toks) if t.kind == "other"), default=-1)
    toks = toks[last_other + 1:]
    while toks:
        t = toks[0]
        nxt = toks[1] if len(toks) > 1 else None
        touching_minus = t.text == "-" and nxt is not None and nxt.start == t.start + 1
        unclosed = t.kind == "lp" and _closing_paren(toks) is None
        if t.kind == "ws" or t.kind == "rp" or (t.kind == "op" and not touching_minus) or unclosed:
            toks = toks[1:]
        else:
            break
    return toks


def _closing_paren(toks: list[_Tok]) -> int | None:
    """Index of the parenthesis closing the one at toks[0], or None."""
    depth = 0
    for k, t in enumerate(toks):
        depth += (t.kind == "lp") - (t.kind == "rp")
        if depth == 0:
            return k
    return None


def _expression_after(text: str, start: int, hi: int) -> list[_Tok]:
    """The expression tokens from `start` (the RHS number) up to the first prose token or `hi`."""
    toks = _tokens(text, start, hi)
    first_other = next((k for k, t in enumerate(toks) if t.kind == "other"), len(toks))
    return toks[:first_other]


def _evaluate(toks: list[_Tok]) -> Fraction | None:
    """The value of an expression with at least one binary operator; None when it is not one, or not checkable."""
    parser = _Parser(toks)
    try:
        value = parser.parse()
    except _Unparsable:
        return None
    return value if parser.binary else None


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _holds(lhs: Fraction, rhs: Fraction, decimals: int) -> bool:
    """Equal up to the rounding the RHS's written decimals allow ("10/3 = 3.33" holds, "7 * 8 = 54" does not)."""
    return abs(float(lhs - rhs)) <= 0.5 * 10 ** (-decimals) + 1e-9 * max(1.0, abs(float(lhs)))


def _check(text: str, lo: int, eq: int, next_eq: int) -> FirstError | None:
    """The statement ending in the "=" at eq, when it is checkable and false."""
    lhs_toks = _expression_before(text, lo, eq)
    lhs = _evaluate(lhs_toks) if lhs_toks else None
    rhs = _RHS.match(text, eq + 1)
    if lhs is None or rhs is None or rhs["pct"]:
        return None
    if _holds(lhs, Fraction(rhs["num"].replace(",", "")), len(rhs["dec"] or "")):
        return None
    # "2 * 3 = 3 * 2": the right side is an expression of the same value, not a false result.
    rhs_value = _evaluate(_expression_after(text, rhs.start("num"), next_eq))
    if rhs_value is not None and _holds(lhs, rhs_value, 9):
        return None
    return FirstError(char=rhs.start("num"), end=rhs.end("num"), kind="arithmetic",
                      statement=text[lhs_toks[0].start:rhs.end("num")], expected=_format(lhs))


def arithmetic_first_error(response: str) -> FirstError | None:
    """The first false arithmetic statement "LHS = RHS" of a GSM8K-style answer, or None when none is false.

    For each "=", the LHS is the arithmetic expression right before it (numbers with "$", thousands commas and
    decimals; + - * / × ÷, "x" between spaced numbers; parentheses; never crossing an earlier "=", so calculator
    annotations "<<48/2=24>>24" and chains "2 * 3 = 6 * 2 = 12" check each step), the RHS the number right after
    it. Skipped as not checkable: an LHS without an operator ("x = 5", "20% of 50 = 10"), with a percentage, with
    words between the numbers, dividing by zero; an RHS that is no number or is a percentage.
    """
    eqs = [m.start() for m in re.finditer("=", response)]
    for k, eq in enumerate(eqs):
        lo = eqs[k - 1] + 1 if k else 0
        hi = eqs[k + 1] if k + 1 < len(eqs) else len(response)
        found = _check(response, lo, eq, hi)
        if found is not None:
            return found
    return None
