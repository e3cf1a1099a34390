"""Zero-shot training prompts, the standard few-shot evaluation prompts, chat templates and stop sequences."""

from __future__ import annotations

import pytest

from adpo.data.prompts import (
    build_prompt,
    build_prompts,
    chat_messages,
    default_num_shots,
    exemplars,
    few_shot_prompt,
    response_text,
    stop_sequences,
)
from adpo.data.records import Problem
from adpo.grading import extract_answer

GSM = Problem(id="g1", dataset="gsm8k", question="Tom has 3 apples and buys 4 more. How many?", gold="7")
MATH = Problem(id="m1", dataset="math", question="What is $1+1$?", gold="2")


def test_zero_shot_prompts_are_the_papers():
    # as the official cDPO pipeline sends them (its sampling strips the prompt): the model writes the space
    assert build_prompt(GSM) == "Question: Tom has 3 apples and buys 4 more. How many?\nAnswer:"
    assert build_prompt(MATH) == "Problem: What is $1+1$?\nSolution:"
    # the earlier form, kept for comparison (model.prompt_trailing_space=true)
    assert build_prompt(GSM, trailing_space=True) == "Question: Tom has 3 apples and buys 4 more. How many?\nAnswer: "
    assert build_prompt(MATH, style="few_shot", trailing_space=True).endswith("\nSolution: ")


@pytest.mark.parametrize("problem", [GSM, MATH], ids=["gsm8k", "math"])
@pytest.mark.parametrize("style", ["zero_shot", "few_shot"])
@pytest.mark.parametrize("num_shots", [None, 0, 1])
def test_no_generation_prompt_ends_in_whitespace(problem, style, num_shots):
    prompt = build_prompt(problem, style=style, num_shots=num_shots)
    assert prompt == prompt.rstrip() and prompt.endswith(("\nAnswer:", "\nSolution:"))
    # every exemplar has the space the model is left to write: "Answer: <solution>"
    label = "Answer:" if problem.dataset == "gsm8k" else "Solution:"
    assert prompt.count(f"\n{label}") == prompt.count(f"\n{label} ") + 1


def test_a_worked_solution_is_the_response_the_model_writes():
    assert response_text("Tom has 7. #### 7") == " Tom has 7. #### 7"
    assert response_text("  Tom has 7.") == " Tom has 7."
    assert response_text("Tom has 7.", trailing_space=True) == "Tom has 7."
    # prompt + response is the exemplars' layout either way
    exemplar = few_shot_prompt("gsm8k", "Q?", num_shots=1).split("\n\n")[0]
    q, a = exemplars("gsm8k")[0]
    assert exemplar == build_prompt(Problem(id="x", dataset="gsm8k", question=q, gold="6")) + response_text(a)
    assert exemplar == build_prompt(Problem(id="x", dataset="gsm8k", question=q, gold="6"), trailing_space=True) \
        + response_text(a, trailing_space=True)


def test_gsm8k_few_shot_is_the_8_cot_exemplars_of_wei_et_al():
    prompt = build_prompt(GSM, style="few_shot")
    assert default_num_shots("gsm8k") == 8
    assert prompt.startswith("Question: There are 15 trees in the grove.")
    # a few-shot prompt ends exactly as the zero-shot one: sampled answers are responses to the training prompt
    assert prompt.endswith(build_prompt(GSM))
    # the stop sequence separates exemplars: the model starting a 10th question stops there
    stop = stop_sequences("gsm8k")
    assert stop == ["\n\nQuestion:"]
    blocks = prompt.split(stop[0])
    assert len(blocks) == 9
    answers = [extract_answer("gsm8k", block) for block in blocks[:-1]]
    assert answers == ["6", "5", "39", "8", "9", "29", "33", "8"]
    assert all(block.rstrip().endswith(f"The answer is {a}.") for block, a in zip(blocks, answers))


def test_math_few_shot_is_the_minerva_prompt():
    prompt = build_prompt(MATH, style="few_shot")
    assert default_num_shots("math") == 4
    assert prompt.startswith("Problem: Find the domain of the expression")
    assert prompt.endswith(build_prompt(MATH))
    assert stop_sequences("math") == ["\n\nProblem:"]
    blocks = prompt.split("\n\nProblem:")
    assert len(blocks) == 5
    finals = [extract_answer("math", block) for block in blocks[:-1]]
    assert finals == ["[2,5)", "24", "16", "-\\frac{2}{3}"]
    for block, final in zip(blocks[:-1], finals):
        assert block.endswith(f"Final Answer: The final answer is ${final}$. I hope it is correct.")
    # the exemplars' own \boxed answers agree with their "Final Answer" lines
    for q, a in exemplars("math"):
        assert extract_answer("math", a.split("Final Answer")[0]) == extract_answer("math", a)


def test_num_shots_takes_the_first_exemplars():
    assert few_shot_prompt("gsm8k", "Q?", num_shots=0) == "Question: Q?\nAnswer:"
    two = build_prompt(GSM, style="few_shot", num_shots=2)
    assert two.count("Question:") == 3 and "Leah had 32 chocolates" not in two
    with pytest.raises(ValueError, match="num_shots"):
        build_prompt(MATH, style="few_shot", num_shots=5)


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="style"):
        build_prompt(GSM, style="three_shot")
    with pytest.raises(ValueError, match="prompt_format"):
        build_prompt(GSM, prompt_format="xml")
    with pytest.raises(ValueError, match="tokenizer"):
        build_prompt(GSM, prompt_format="chat")
    with pytest.raises(ValueError, match="dataset"):
        stop_sequences("mmlu")


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture()
def chat_tokenizer(tmp_path):
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    from tests.conftest import SAMPLE_TEXT

    tokenizer = build_tokenizer(SAMPLE_TEXT, tmp_path, vocab_size=300)  # a real tokenizer; only its template is used
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_chat_prompts_use_the_tokenizers_template(chat_tokenizer):
    zero = build_prompt(MATH, prompt_format="chat", tokenizer=chat_tokenizer)
    assert zero.startswith(chat_tokenizer.bos_token or "")
    assert "<|user|>\nWhat is $1+1$?\n\nPlease reason step by step" in zero
    assert zero.endswith("<|assistant|>\n")
    few = build_prompt(GSM, style="few_shot", prompt_format="chat", tokenizer=chat_tokenizer, num_shots=3)
    assert few.count("<|user|>") == 4 and few.count("<|assistant|>") == 4  # 3 exemplar turns + the open one
    assert "The answer is 39.<|end|>" in few
    plain_question = build_prompt(GSM, prompt_format="chat", tokenizer=chat_tokenizer, instruction=None,
                                  system_prompt="Be brief.")
    assert "<|system|>\nBe brief.<|end|>" in plain_question and "step by step" not in plain_question


def test_chat_without_a_template_is_an_error(chat_tokenizer):
    tokenizer = chat_tokenizer
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(GSM, prompt_format="chat", tokenizer=tokenizer)


def test_chat_messages_and_batch_builder():
    messages = chat_messages("gsm8k", "Q?", style="few_shot", num_shots=1)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert build_prompts([GSM, MATH]) == [build_prompt(GSM), build_prompt(MATH)]
