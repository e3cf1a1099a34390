"""The quickstart's synthetic task: templated multi-step arithmetic word problems in the GSM8K format.

Each problem is a short story ("Mia has 7 shells. She buys 3 bags with 4 shells in each. ...") whose worked
solution computes one step per line and ends in `#### N`, exactly as GSM8K solutions do, so the real prompts,
grading and evaluation code treat it as GSM8K. Everything is deterministic from (seed, split); the splits are
disjoint by construction (a problem belongs to the split its text hashes to), so test questions never leak into
training whatever sizes are asked for.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from adpo.data.records import Problem

SPLITS = ("train", "test")
# Share of all possible problems that belongs to the test split (by hash of the question text).
TEST_SHARE = 0.2

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Sam", "He"),
         ("Ivy", "She"), ("Max", "He"), ("Eva", "She"), ("Ben", "He"), ("Lily", "She"), ("Jack", "He")]
ITEMS = ["apples", "pens", "shells", "stickers", "cards", "marbles", "books", "coins", "eggs", "cookies"]
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets"]
FRIENDS = ["a friend", "{poss} sister", "{poss} brother", "a neighbor", "the teacher", "a classmate"]


@dataclass
class _State:
    """The running quantity while a story is being built, and the text produced so far."""

    name: str
    pronoun: str
    item: str
    value: int
    question: list[str]
    solution: list[str]


def _add(s: _State, r: random.Random) -> bool:
    b = r.randint(1, 9)
    s.question.append(f"{s.pronoun} finds {b} more {s.item}.")
    s.solution.append(f"Finds {b}: {s.value} + {b} = {s.value + b}.")
    s.value += b
    return True


def _subtract(s: _State, r: random.Random) -> bool:
    if s.value < 3:
        return False
    b = r.randint(1, min(s.value - 1, 9))
    friend = r.choice(FRIENDS).format(poss="her" if s.pronoun == "She" else "his")
    s.question.append(f"{s.pronoun} gives {b} {s.item} to {friend}.")
    s.solution.append(f"Gives {b}: {s.value} - {b} = {s.value - b}.")
    s.value -= b
    return True


def _buy_groups(s: _State, r: random.Random) -> bool:
    k, m = r.randint(2, 4), r.randint(2, 5)
    box = r.choice(CONTAINERS)
    s.question.append(f"{s.pronoun} buys {k} {box} with {m} {s.item} in each.")
    s.solution.append(f"Buys {k} * {m} = {k * m}, so {s.value} + {k * m} = {s.value + k * m}.")
    s.value += k * m
    return True


def _multiply(s: _State, r: random.Random) -> bool:
    if s.value > 30:
        return False
    k = r.randint(2, 3)
    word = {2: "doubles", 3: "triples"}[k]
    s.question.append(f"Then {s.pronoun.lower()} {word} the number of {s.item}.")
    s.solution.append(f"{word.capitalize()}: {s.value} * {k} = {s.value * k}.")
    s.value *= k
    return True


def _share(s: _State, r: random.Random) -> bool:
    divisors = [d for d in (2, 3, 4, 5) if s.value % d == 0 and s.value // d >= 1]
    if not divisors or s.value < 4:
        return False
    d = r.choice(divisors)
    s.question.append(f"{s.pronoun} splits the {s.item} into {d} equal groups and keeps one group.")
    s.solution.append(f"Keeps one group: {s.value} / {d} = {s.value // d}.")
    s.value //= d
    return True


# Small operands on purpose: a ~1M-parameter model trained for a few minutes gets single-digit operands mostly right
# and carries often wrong, which is what makes its sampled answers a mix of right and wrong.
STEPS: list[Callable[[_State, random.Random], bool]] = [_add, _subtract, _buy_groups, _multiply, _share]


def _story(r: random.Random, min_steps: int, max_steps: int) -> tuple[str, str, int]:
    name, pronoun = r.choice(NAMES)
    item = r.choice(ITEMS)
    start = r.randint(2, 20)
    s = _State(name, pronoun, item, start, [f"{name} has {start} {item}."], [])
    n_steps = r.randint(min_steps, max_steps)
    done = 0
    while done < n_steps:
        if r.choice(STEPS)(s, r):
            done += 1
    s.question.append(f"How many {item} does {name} have now?")
    s.solution.append(f"#### {s.value}")
    return " ".join(s.question), "\n".join(s.solution), s.value


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    return "test" if h < TEST_SHARE else "train"


def make_problems(n: int, seed: int = 0, split: str = "train", *, min_steps: int = 2,
                  max_steps: int = 3) -> list[Problem]:
    """`n` distinct problems of `split`, the same for the same arguments; train and test never share a question."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    r = random.Random(f"adpo-toy:{seed}:{split}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could only make {len(problems)} distinct {split} problems of {n} asked")
        question, solution, answer = _story(r, min_steps, max_steps)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        problems.append(Problem(id=f"toy-{split}-{len(problems)}", dataset="gsm8k", question=question,
                                gold=str(answer), solution=solution))
    return problems


def load_toy_problems(data_cfg, split: str) -> list[Problem]:
    """The prepare stage's hook for `source: toy` data configs (conf/data/toy.yaml): sizes per split, seed, steps."""
    def get(key, default=None):
        return data_cfg.get(key, default) if hasattr(data_cfg, "get") else getattr(data_cfg, key, default)

    sizes = get("splits") or {}
    if sizes.get(split) is None:
        raise ValueError(f"toy data config has no size for split {split!r} (splits: {dict(sizes)})")
    n = int(sizes[split])
    if get("limit") is not None:
        n = min(n, int(get("limit")))
    return make_problems(n, int(get("seed", 0)), split, min_steps=int(get("min_steps", 2)),
                         max_steps=int(get("max_steps", 3)))


# The question's sentences, read back by solve(): the opening, one per step function above, and the closing. They
# mirror the f-strings of _story and the step functions; a change there must be made here too (the round trip is
# tested on generated problems of every step count).
_OPENING = re.compile(r"(?P<name>\w+) has (?P<n>[0-9]+) (?P<item>\w+)\.")
_CLOSING = re.compile(r"How many (?P<item>\w+) does (?P<name>\w+) have now\?")
_ADD = re.compile(r"(?P<pronoun>He|She) finds (?P<b>[0-9]+) more (?P<item>\w+)\.")
_SUBTRACT = re.compile(r"(?P<pronoun>He|She) gives (?P<b>[0-9]+) (?P<item>\w+) to [^.]+\.")
_BUY_GROUPS = re.compile(r"(?P<pronoun>He|She) buys (?P<k>[0-9]+) \w+ with (?P<m>[0-9]+) (?P<item>\w+) in each\.")
_MULTIPLY = re.compile(r"Then (?P<pronoun>he|she) (?P<word>doubles|triples) the number of (?P<item>\w+)\.")
_SHARE = re.compile(r"(?P<pronoun>He|She) splits the (?P<item>\w+) into (?P<d>[0-9]+) equal groups"
                    r" and keeps one group\.")


def _solve_add(v: int, m: re.Match[str]) -> tuple[str, int]:
    b = int(m["b"])
    return f"Finds {b}: {v} + {b} = {v + b}.", v + b


def _solve_subtract(v: int, m: re.Match[str]) -> tuple[str, int]:
    b = int(m["b"])
    return f"Gives {b}: {v} - {b} = {v - b}.", v - b


def _solve_buy_groups(v: int, m: re.Match[str]) -> tuple[str, int]:
    k, n = int(m["k"]), int(m["m"])
    return f"Buys {k} * {n} = {k * n}, so {v} + {k * n} = {v + k * n}.", v + k * n


def _solve_multiply(v: int, m: re.Match[str]) -> tuple[str, int]:
    k = {"doubles": 2, "triples": 3}[m["word"]]
    return f"{m['word'].capitalize()}: {v} * {k} = {v * k}.", v * k


def _solve_share(v: int, m: re.Match[str]) -> tuple[str, int]:
    d = int(m["d"])
    if d == 0 or v % d:
        # Integer division would write a false equation; the generator only splits into groups that divide evenly.
        raise ValueError(f"cannot split {v} into {d} equal groups")
    return f"Keeps one group: {v} / {d} = {v // d}.", v // d


_SOLVERS: list[tuple[re.Pattern[str], Callable[[int, re.Match[str]], tuple[str, int]]]] = [
    (_ADD, _solve_add), (_SUBTRACT, _solve_subtract), (_BUY_GROUPS, _solve_buy_groups), (_MULTIPLY, _solve_multiply),
    (_SHARE, _solve_share)]


def _solve_step(sentence: str, value: int, item: str, pronoun: str | None) -> tuple[str, int, str]:
    """One step sentence -> (solution line, new value, pronoun); the item and pronoun must stay those of the story."""
    for pattern, step in _SOLVERS:
        m = pattern.fullmatch(sentence)
        if m is None:
            continue
        if m["item"] != item or (pronoun is not None and m["pronoun"].capitalize() != pronoun):
            raise ValueError(f"sentence {sentence!r} is about another item or person than the story ({item!r})")
        try:
            line, value = step(value, m)
        except ValueError as e:
            raise ValueError(f"sentence {sentence!r}: {e}") from None
        return line, value, m["pronoun"].capitalize()
    raise ValueError(f"sentence {sentence!r} follows none of the toy task's step templates")


def solve(question: str) -> str:
    """The worked solution of a toy question, rebuilt from its text alone (`solve(p.question) == p.solution`).

    Lets analyses that hold only a question and a model's answer (a pairs file) compare the answer with the correct
    one line by line. Raises ValueError naming the first sentence that does not follow the templates.
    """
    sentences = re.split(r"(?<=[.?]) ", question.strip())
    opening = _OPENING.fullmatch(sentences[0])
    if opening is None:
        raise ValueError(f"sentence {sentences[0]!r} is not a toy question's opening ('<Name> has <N> <items>.')")
    name, item, value = opening["name"], opening["item"], int(opening["n"])
    closing = _CLOSING.fullmatch(sentences[-1]) if len(sentences) > 1 else None
    if closing is None or (closing["item"], closing["name"]) != (item, name):
        raise ValueError(f"sentence {sentences[-1]!r} is not the closing 'How many {item} does {name} have now?'")
    lines: list[str] = []
    pronoun: str | None = None
    for sentence in sentences[1:-1]:
        line, value, pronoun = _solve_step(sentence, value, item, pronoun)
        lines.append(line)
    lines.append(f"#### {value}")
    return "\n".join(lines)
