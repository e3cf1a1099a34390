"""Is an extracted answer equal to the gold one? GSM8K: exact numeric equality. MATH: math-verify, gold first.

math-verify bounds its own parse/verify time with SIGALRM, which works only in a process's main thread; elsewhere
its timeouts are switched off here and the caller bounds time (adpo.grading.pool kills a stuck worker).
"""

from __future__ import annotations

import logging
import re
import threading

from adpo.grading.extract import _clean_numeric, _NUMBER, parse_number

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- GSM8K


def gsm8k_equal(extracted: str | None, gold: str) -> bool:
    """Exact numeric equality: "18" == "18.00" == "18.", "0.5" == ".5" == "1/2"."""
    if extracted is None:
        return False
    pred = parse_number(extracted)
    gold_value = parse_number(_clean_numeric(gold))
    if gold_value is None:
        numbers = _NUMBER.findall(_clean_numeric(gold))
        gold_value = parse_number(numbers[-1]) if len(numbers) == 1 else None
    return pred is not None and gold_value is not None and pred == gold_value


# ---------------------------------------------------------------- MATH

_SPACES = re.compile(r"\s+")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# Plain-word units after a number ("18 dollars"): dropped before comparing, as the Minerva normaliser does.
_UNIT_WORDS = re.compile(
    r"(?<=[\d}])\s*(?:\\\s)?(?:dollars?|cents?|degrees?|units?|inches|inch|feet|foot|ft|cm|km|meters?|mph|hours?|"
    r"minutes?|seconds?|days?|weeks?|years?|pounds?|square\s+(?:feet|units|inches|meters))\s*$",
    re.IGNORECASE,
)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
MAX_ANSWER_CHARS = 1000


def normalize_latex(answer: str) -> str:
    """A light string normal form of a LaTeX answer: for a fast exact match and for grouping equal answers."""
    s = answer.strip()
    s = _UNESCAPED_DOLLAR.sub("", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for token in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\displaystyle"):
        s = s.replace(token, "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "").replace("\\$", "")
    s = _TEXT_WRAP.sub(r"\1", s)
    s = _UNIT_WORDS.sub("", s)
    s = _SPACES.sub("", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s.rstrip(".")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _math_verify(gold: str, pred: str, timeout_s: int | None) -> bool:
    from math_verify import parse, verify

    timeout = timeout_s if _in_main_thread() else None
    gold_parsed = parse(f"${_UNESCAPED_DOLLAR.sub('', gold)}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${_UNESCAPED_DOLLAR.sub('', pred)}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def math_equal(extracted: str | None, gold: str, timeout_s: int | None = 5) -> bool:
    """Equal after light normalisation, else math-verify's verify(parse(gold), parse(pred)). Errors -> False."""
    if extracted is None or not gold:
        return False
    pred_norm, gold_norm = normalize_latex(extracted), normalize_latex(gold)
    if pred_norm and pred_norm == gold_norm:
        return True
    if len(extracted) > MAX_ANSWER_CHARS:  # no MATH answer is this long; spare math-verify the attempt
        return False
    stripped = _UNIT_WORDS.sub("", extracted.strip())
    try:
        return _math_verify(gold, stripped or extracted, timeout_s)
    except Exception as e:  # math-verify raises on some malformed LaTeX and on its timeout: an ungradable answer
        logger.debug("math-verify failed on gold=%r pred=%r: %s", gold, extracted, e)
        return False
