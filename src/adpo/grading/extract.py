"""Final answers out of model text: pure string work, linear in the length of the text (no backtracking blow-ups).

GSM8K: the last of "The answer is N" / "The final answer is N" / "Answer: N", "#### N" and \\boxed{N}; else the last
number in the text. The number is returned in a canonical form ("1,000.50" -> "1000.5", "1/2" -> "0.5").
MATH: the last brace-matched \\boxed{...} (also "\\boxed x" and \\fbox{...}); else "Final Answer: The final answer is
$...$" (or "the answer is ..."). Text after the dataset's stop sequence (the model starting the next exemplar) is
never read.
"""

from __future__ import annotations

import re
from fractions import Fraction

from adpo.data.prompts import truncate_at_stop

# Where a model that runs on starts the next exemplar: the stop sequences of adpo.data.prompts, and the same with a
# single newline or the "Q:" layout, in case a backend did not stop exactly there.
STOPS = {"gsm8k": ("\nQuestion:", "\nQ:"), "math": ("\nProblem:",)}

# ---------------------------------------------------------------- boxed answers (brace-matched, one linear pass)

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SPACE = re.compile(r"\\boxed[ \t]+([^\s$]+)")
_BRACE = re.compile(r"(?<!\\)[{}]")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each unescaped "{" -> position of its matching "}" (unclosed ones are absent)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            match[stack.pop()] = m.start()
    return match


def last_boxed_content(text: str) -> str | None:
    """The content of the last non-empty, closed \\boxed{...} / \\fbox{...} / "\\boxed x" in `text`, or None.
    Adjacent boxes ("\\boxed{2} and \\boxed{3}") are read together: "2, 3"."""
    found = _last_boxed(text)
    return found[1] if found else None


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(where the last box starts, its content), see last_boxed_content."""
    spans: list[tuple[int, int, int, bool]] = []  # (command start, content start, content end, braced)
    starts = list(_BOX_START.finditer(text))
    if starts:
        match = _matching_braces(text)
        for m in starts:
            close = match.get(m.end() - 1)
            if close is not None:
                spans.append((m.start(), m.end(), close, True))
    for m in _BOX_SPACE.finditer(text):
        spans.append((m.start(), m.start(1), m.end(1), False))
    # Slice only the winner: slicing every nested box of a pathological text would be quadratic.
    spans.sort(reverse=True)
    for k, (start, begin, end, braced) in enumerate(spans):
        content = text[begin:end].strip() if braced else text[begin:end].rstrip(".,;")
        if not content:
            continue
        # "\boxed{2}, \boxed{3}" / "\boxed{2} and \boxed{3}": several answers given as adjacent boxes, read together.
        parts = [content]
        for prev_start, prev_begin, prev_end, prev_braced in spans[k + 1:k + 10]:
            gap = text[prev_end + (1 if prev_braced else 0):start]
            if prev_end > start or not _BOX_GAP.fullmatch(gap):
                break
            prev = text[prev_begin:prev_end].strip()
            if prev and prev not in parts:  # the same answer boxed twice is one answer
                parts.append(prev)
            start = prev_start
        return spans[k][0], ", ".join(reversed(parts))
    return None


_BOX_GAP = re.compile(r"[\s$,;]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad)[\s$,;]*)?")


# ---------------------------------------------------------------- numbers (GSM8K)

# "the answer is 18", "final answer would be 18": the number may come later in the sentence.
_ANSWER_IS = re.compile(r"\banswer\b[ \t*:]*(?:is|was|would be|will be|should be)[ \t*:]*", re.IGNORECASE)
# "Answer: 18", "**Final answer:** $18", "#### 18": only a sentence stating one number counts ("Answer: 16 - 3 = 13
# eggs are left. ..." is a response that begins by echoing the prompt's "Answer:", not a stated result).
_ANSWER_COLON = re.compile(r"\banswer\b[ \t*]*[:=][ \t*:]*|####", re.IGNORECASE)
# A "-" is a sign only where it cannot be subtraction ("10-3" is 10 and 3, "x = -3" is -3).
_SIGN = r"(?:(?<![\w)\]}.])-)?"
_NUMBER = re.compile(_SIGN + r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?!\.\d|\d))?|\.\d+)")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_SPAN_LIMIT = 300  # how far after an anchor the stated answer may be
_MAX_DIGITS = 64


def _clean_numeric(span: str) -> str:
    span = span.replace("\u2212", "-").replace("\u2013", "-")
    span = _TEXT_CMD.sub(r" \1 ", span)
    span = _LATEX_FRAC.sub(r"\1/\2", span)
    # "\$1{,}000\,000", "**18**", "50\%": separators and markup that are not part of the number
    for token in ("\\$", "$", "{,}", "\\,", "\\!", "**", "\\%", "%"):
        span = span.replace(token, "")
    return span.replace("\\ ", " ")


def parse_number(text: str) -> Fraction | None:
    """"1,000" / "-3" / "0.50" / ".5" / "3/4" -> exact Fraction; anything else -> None."""
    text = text.strip().replace(",", "").replace(" ", "")
    if len(text) > _MAX_DIGITS:  # not an answer, and int() of a huge string is slow (and limited in Python 3.11+)
        return None
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value


def canonical_number(value: Fraction) -> str:
    """18 -> "18", 1/2 -> "0.5", 1/3 -> "1/3": one spelling per value, for grouping answers."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a finite decimal
        digits = 0
        while (value * 10**digits).denominator != 1:
            digits += 1
        scaled = str(abs(int(value * 10**digits))).rjust(digits + 1, "0")
        return ("-" if value < 0 else "") + scaled[:-digits] + "." + scaled[-digits:]
    return f"{value.numerator}/{value.denominator}"


def _first_sentence(span: str) -> str:
    # "Final Answer:\n\n18": the stated answer may start on a later line
    return _SENTENCE_END.split(span.lstrip().split("\n", 1)[0], 1)[0]


def _number_in_span(span: str, last: bool = False) -> Fraction | None:
    span = _clean_numeric(span[:_SPAN_LIMIT] if not last else span)
    if not last:
        # "The answer is 18 - 3 = 15": the stated result is after the last "=" of the first line.
        line = _first_sentence(span)
        if "=" in line:
            line = line.rsplit("=", 1)[1]
        numbers = _NUMBER.findall(line)
        chosen = numbers[0] if numbers else None
    else:
        numbers = _NUMBER.findall(span)
        chosen = numbers[-1] if numbers else None
    return parse_number(chosen) if chosen is not None else None


def extract_gsm8k(text: str) -> str | None:
    """The final number of a GSM8K answer in canonical form, or None when the text has no number."""
    text, _ = truncate_at_stop(text, STOPS["gsm8k"])
    candidates: list[tuple[int, Fraction]] = []
    for anchor in (_ANSWER_IS, _ANSWER_COLON):
        for m in anchor.finditer(text):
            span = text[m.end():m.end() + _SPAN_LIMIT]
            if anchor is _ANSWER_COLON and len(_NUMBER.findall(_first_sentence(_clean_numeric(span)))) != 1:
                continue
            value = _number_in_span(span)
            if value is not None:
                candidates.append((m.start(), value))
    boxed = _last_boxed(text)
    if boxed is not None:
        value = _number_in_span(boxed[1])
        if value is not None:
            candidates.append((boxed[0], value))
    if candidates:
        return canonical_number(max(candidates, key=lambda c: c[0])[1])
    value = _number_in_span(text[-20000:], last=True)
    return canonical_number(value) if value is not None else None


# ---------------------------------------------------------------- LaTeX answers (MATH)

_FINAL_ANSWER = re.compile(r"final answer[\s*]*(?:is|:)|\banswer[\s*]*is", re.IGNORECASE)
# Inline math: $...$, $$...$$, \(...\), \[...\]; an escaped "\$" is a dollar sign, not a delimiter.
_DOLLARS = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


_DIGIT = re.compile(r"\d")
_CLAUSE = re.compile(r",\s+(?=[A-Za-z])|;|\s+(?:since|because|as|which|where)\s")


def _clean_latex_answer(answer: str) -> str | None:
    answer = answer.strip()
    answer = answer.removesuffix("I hope it is correct.").strip()
    while answer and answer[-1] in ".,;" and not answer.endswith("\\."):
        answer = answer[:-1].rstrip()
    return answer or None


def extract_math(text: str) -> str | None:
    """The final LaTeX answer of a MATH solution (see module doc), or None."""
    text, _ = truncate_at_stop(text, STOPS["math"])
    boxed = last_boxed_content(text)
    if boxed is not None:
        return _clean_latex_answer(boxed)
    anchors = list(_FINAL_ANSWER.finditer(text))
    for m in reversed(anchors):
        span = text[m.end():m.end() + 2000]
        span = span.split("I hope it is correct", 1)[0]
        span = span.lstrip(" \t\n*:").split("\n\n", 1)[0]
        # "$\frac{2}{3}$" or "\[ ... \]" right there (may run over lines), else the math of the first sentence
        # ("the final answer is the value $5$."), else that sentence's text ("The final answer is 24.")
        math = _DOLLARS.match(span)
        if not math:
            span = _first_sentence(span).replace("**", "")
            math = _DOLLARS.search(span)
            if math and _DIGIT.search(span[:math.start()]):  # "5, since $x$ is positive": the 5, not the x
                span, math = span[:math.start()], None
        # "24, which is even": the answer ends where a clause begins
        answer = next(g for g in math.groups() if g is not None) if math else _CLAUSE.split(span, 1)[0]
        answer = _clean_latex_answer(answer.strip(" :"))
        if answer:
            return answer
    return None


def extract_answer(dataset: str, text: str) -> str | None:
    """The final answer in `text` for "gsm8k" or "math", or None when there is none. Never raises on odd text."""
    if not isinstance(text, str) or not text:
        return None
    if dataset == "gsm8k":
        return extract_gsm8k(text)
    if dataset == "math":
        return extract_math(text)
    raise ValueError(f"dataset must be 'gsm8k' or 'math', got {dataset!r}")
