"""Prompts: the zero-shot training prompt, the few-shot evaluation/sampling prompt, and chat-template variants.

Plain prompts (method.md's layout, sent as the official cDPO pipeline sends it: stripped of trailing whitespace):
    zero-shot GSM8K  "Question: {q}\nAnswer:"
    zero-shot MATH   "Problem: {q}\nSolution:"
    few-shot         the same layout, preceded by the standard exemplars (8 chain-of-thought exemplars of Wei et al.
                     for GSM8K, the 4 Minerva exemplars for MATH), each "Question: ...\nAnswer: ...\n\n". A few-shot
                     prompt therefore ends exactly like the zero-shot one, so a completion sampled with the few-shot
                     prompt is a well-formed response to the zero-shot training prompt, and the model's attempt to
                     start the next exemplar is cut by the stop sequence "\n\nQuestion:" / "\n\nProblem:".
The model writes the space after "Answer:" itself, as in every exemplar: with a byte-level BPE a word after a space
is one token (" There"), and a prompt ending in a lone space token would ask the model to continue from a split it
never saw. So responses start with that space (`response_text` gives a worked solution the same form).
`trailing_space=True` (config `model.prompt_trailing_space`) keeps the earlier form "...\nAnswer: " for comparison.
Chat prompts (instruct models): the tokenizer's chat template over user/assistant turns; few-shot exemplars become
earlier turns. The rendered string carries the template's special tokens (see adpo.data.tokenize).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adpo.data.exemplars import GSM8K_COT_EXEMPLARS, MINERVA_MATH_EXEMPLARS
from adpo.data.records import DATASETS, Problem

PROMPT_STYLES = ("zero_shot", "few_shot")
PROMPT_FORMATS = ("plain", "chat")

# (question label, answer label) of the plain layout.
_LABELS = {"gsm8k": ("Question", "Answer"), "math": ("Problem", "Solution")}
_EXEMPLARS = {"gsm8k": GSM8K_COT_EXEMPLARS, "math": MINERVA_MATH_EXEMPLARS}

# What a zero-shot chat prompt asks for, so that the answer comes in a form adpo.grading extracts.
DEFAULT_CHAT_INSTRUCTIONS = {
    "gsm8k": 'Solve the problem step by step, then give the final number as "The answer is N."',
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
}


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return dataset


def exemplars(dataset: str) -> tuple[tuple[str, str], ...]:
    """The standard few-shot exemplars of `dataset` as (question, answer) pairs."""
    return _EXEMPLARS[_check_dataset(dataset)]


def default_num_shots(dataset: str) -> int:
    """8 for GSM8K, 4 for MATH: all the standard exemplars."""
    return len(exemplars(dataset))


def _shots(dataset: str, num_shots: int | None) -> tuple[tuple[str, str], ...]:
    available = exemplars(dataset)
    if num_shots is None:
        return available
    if not 0 <= num_shots <= len(available):
        raise ValueError(f"num_shots for {dataset} must be between 0 and {len(available)}, got {num_shots}")
    return available[:num_shots]


def zero_shot_prompt(dataset: str, question: str, trailing_space: bool = False) -> str:
    """"Question: {q}\\nAnswer:" (GSM8K) or "Problem: {q}\\nSolution:" (MATH): the training prompt
    (trailing_space: the earlier "...\\nAnswer: ")."""
    q_label, a_label = _LABELS[_check_dataset(dataset)]
    return f"{q_label}: {question}\n{a_label}:" + (" " if trailing_space else "")


def few_shot_prompt(dataset: str, question: str, num_shots: int | None = None, trailing_space: bool = False) -> str:
    """The exemplars in the zero-shot layout, separated by blank lines, then the zero-shot prompt for `question`."""
    q_label, a_label = _LABELS[_check_dataset(dataset)]
    shots = "".join(f"{q_label}: {q}\n{a_label}: {a}\n\n" for q, a in _shots(dataset, num_shots))
    return shots + zero_shot_prompt(dataset, question, trailing_space)


def trailing_space_of(model_cfg: Any) -> bool:
    """A model config's `prompt_trailing_space` (false where a config predates the key)."""
    return bool(model_cfg.get("prompt_trailing_space", False))


def response_text(solution: str, trailing_space: bool = False) -> str:
    """A worked solution as the response to a plain prompt: " " + solution, the space the model writes after
    "Answer:" (trailing_space: the prompt has it already, so the solution as it is)."""
    solution = solution.lstrip()
    return solution if trailing_space else " " + solution


def chat_messages(dataset: str, question: str, style: str = "zero_shot", num_shots: int | None = None,
                  instruction: str | None = "default", system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation a chat prompt renders: optional system turn, exemplar turns (few-shot), the question.

    `instruction` is appended to the final user turn of a zero-shot prompt ("default": DEFAULT_CHAT_INSTRUCTIONS;
    None: none). Few-shot prompts teach the answer format through the exemplars instead.
    """
    _check_style(style)
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if style == "few_shot":
        for q, a in _shots(dataset, num_shots):
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        return messages
    if instruction == "default":
        instruction = DEFAULT_CHAT_INSTRUCTIONS[_check_dataset(dataset)]
    content = f"{question}\n\n{instruction}" if instruction else question
    messages.append({"role": "user", "content": content})
    return messages


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def build_prompt(problem: Problem, style: str = "zero_shot", prompt_format: str = "plain", tokenizer: Any = None,
                 num_shots: int | None = None, *, instruction: str | None = "default",
                 system_prompt: str | None = None, trailing_space: bool = False) -> str:
    """The prompt string for one problem.

    style: "zero_shot" (training) or "few_shot" (sampling and evaluation, method.md).
    prompt_format: "plain" (base models) or "chat" (instruct models; needs `tokenizer` with a chat template, and
        renders it with add_generation_prompt=True, tokenize=False).
    num_shots: how many of the standard exemplars a few-shot prompt uses (None: all, 8 for GSM8K, 4 for MATH).
    instruction / system_prompt: chat only, see chat_messages.
    trailing_space: plain only, the earlier form ending in "Answer: " (a chat prompt ends as its template does).
    """
    _check_style(style)
    if prompt_format == "plain":
        if style == "zero_shot":
            return zero_shot_prompt(problem.dataset, problem.question, trailing_space)
        return few_shot_prompt(problem.dataset, problem.question, num_shots, trailing_space)
    if prompt_format == "chat":
        if tokenizer is None:
            raise ValueError("prompt_format=chat needs the model's tokenizer (for its chat template)")
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise ValueError(f"tokenizer {name!r} has no chat template; use model.prompt_format=plain")
        messages = chat_messages(problem.dataset, problem.question, style, num_shots, instruction, system_prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")


def build_prompts(problems: Sequence[Problem], style: str = "zero_shot", prompt_format: str = "plain",
                  tokenizer: Any = None, num_shots: int | None = None, **kwargs: Any) -> list[str]:
    """build_prompt for each problem, in order."""
    return [build_prompt(p, style, prompt_format, tokenizer, num_shots, **kwargs) for p in problems]


def stop_sequences(dataset: str, prompt_format: str = "plain") -> list[str]:
    """Where generation stops: at the start of the next exemplar ("\\n\\nQuestion:" / "\\n\\nProblem:").

    Chat models end with their end-of-turn token; the same strings are returned for them as a guard against
    run-on answers that start a new problem (harmless otherwise).
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    q_label, _ = _LABELS[_check_dataset(dataset)]
    return [f"\n\n{q_label}:"]


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest occurrence of any stop string, and whether one occurred."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
