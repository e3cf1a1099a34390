"""The prompt/response boundary: the tokens training sees for a sampled answer are the tokens generation produced.

Generation prompts end in "Answer:" (as the official cDPO pipeline sends them) and the model writes the space: with a
byte-level BPE " There" is one token. The training side (adpo.data.tokenize.encode_pair, shared by the reference cache
and the cDPO weights) must see the same ids, which these tests check against real generation with the HF backend on
a tiny model that has learnt its answers, and against the tokenizers of the paper's model families.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adpo.data.prompts import build_prompt, exemplars, response_text, stop_sequences
from adpo.data.records import Problem
from adpo.data.tokenize import encode_pair, encode_prompt, split_at_response

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "Tom has 3 + 4 = 7 apples. The answer is 7."),
    ("Sara reads 5 pages a day. How many pages does she read in 6 days?",
     "She reads 5 * 6 = 30 pages. The answer is 30."),
    ("There are 12 pens in a box. How many pens are in 2 boxes?", "There are 12 * 2 = 24 pens. The answer is 24."),
    ("Mia had 9 stickers and gave away 4. How many are left?", "Mia has 9 - 4 = 5 stickers left. The answer is 5."),
]
PROBLEMS = [Problem(id=f"q{i}", dataset="gsm8k", question=q, gold=a.rsplit(" ", 1)[-1].rstrip("."))
            for i, (q, a) in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def answering_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with the project's byte-level BPE, trained in seconds on the four answers in the project's own
    layout (prompt "...\\nAnswer:", response " <solution>"), so that greedy generation writes them."""
    import torch

    from adpo.data.tokenize import collate_responses
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("answering_model")
    prompts = [build_prompt(p) for p in PROBLEMS]
    responses = [response_text(a) for _, a in QUESTIONS]
    tokenizer = build_tokenizer([p + r for p, r in zip(prompts, responses)] * 4, out, vocab_size=320)
    model = build_tiny_llama(tokenizer, out, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    torch.manual_seed(0)
    batch = collate_responses([encode_pair(tokenizer, p, r) for p, r in zip(prompts, responses)],
                              tokenizer.pad_token_id, with_labels=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return out


def test_the_tokens_training_sees_are_the_tokens_generation_produced(answering_model):
    from adpo.generation import load_generator
    from adpo.training.pairs_data import PairRecord, tokenize_pairs

    generation = {"backend": "hf", "dtype": "float32", "batch_size": 8, "max_model_len": None, "device": "cpu",
                  "threads": None, "trust_remote_code": False, "prompt_format": "plain"}
    prompts = [build_prompt(p) for p in PROBLEMS]
    with load_generator(generation, answering_model) as generator:
        completions = [outs[0] for outs in generator.generate(prompts, max_tokens=40, stop=stop_sequences("gsm8k"))]
        prompt_ids = [generator.encode(p) for p in prompts]
        tokenizer = generator.tokenizer
    # the model learnt its answers: it writes the space itself, and ends with EOS
    assert [c.text for c in completions] == [response_text(a) for _, a in QUESTIONS]
    assert all(c.finish_reason == "stop" and c.token_ids[-1] == tokenizer.eos_token_id for c in completions)
    assert all(tokenizer.convert_ids_to_tokens(c.token_ids[0]).startswith("Ġ") for c in completions)  # " Tom", ...

    # the train stage's tokenization of pairs built from these answers (chosen and rejected both sampled)
    records = [PairRecord(id=p.id, prompt=prompt, chosen=c.text, rejected=other.text, where=f"pairs.jsonl:{i + 1}")
               for i, (p, prompt, c, other) in enumerate(zip(PROBLEMS, prompts, completions,
                                                             completions[1:] + completions[:1]))]
    encoded = tokenize_pairs(records, tokenizer, prompt_format="plain", max_prompt_length=256, max_length=512)
    for pair, c, other, ids in zip(encoded, completions, completions[1:] + completions[:1], prompt_ids):
        assert pair.prompt_ids == ids
        assert pair.chosen_ids == c.token_ids
        assert pair.rejected_ids == other.token_ids


def _paper_tokenizers():
    from adpo_data_prep import tiny_paper_models as tpm

    return {"llama3": tpm.llama3_tokenizer, "qwen3": tpm.qwen3_tokenizer, "deepseek": tpm.deepseek_tokenizer,
            "gemma3": tpm.gemma3_tokenizer}


@pytest.fixture(scope="module", params=sorted(_paper_tokenizers()))
def paper_tokenizer(request):
    """Tokenizers built with the pipelines (pre-tokenizer, normalizer, specials) of the paper's model families."""
    return _paper_tokenizers()[request.param]()


@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_with_the_papers_tokenizers_the_prompt_ids_are_a_prefix_of_the_joint_ids(paper_tokenizer, dataset):
    """Prompt "...Answer:" + response " <solution>": the joint tokenization extends the prompt's (no token merges
    across the boundary), so the response ids are the joint tail, and equal to the response tokenized alone."""
    for question, solution in exemplars(dataset):
        problem = Problem(id="x", dataset=dataset, question=question, gold="0")
        prompt, response = build_prompt(problem), response_text(solution)
        alone = encode_prompt(paper_tokenizer, prompt)
        joint = paper_tokenizer(prompt + response)["input_ids"]
        assert joint[:len(alone)] == alone
        prompt_ids, response_ids = split_at_response(paper_tokenizer, prompt, response)
        assert (prompt_ids, response_ids) == (alone, joint[len(alone):])
        assert response_ids == paper_tokenizer(response, add_special_tokens=False)["input_ids"]
        assert paper_tokenizer.decode(response_ids) == response


def test_a_prompt_ending_in_a_space_is_a_split_the_joint_text_never_has(paper_tokenizer):
    """The earlier form ("Answer: " then "Tom ...") leaves the space as the prompt's last token, where the joint text
    has " Tom": a model continuing that prompt was asked for a split it never saw. The boundary rule still gives
    generation's split (the prompt's ids, then the response tokenized alone), never the merged token."""
    problem = Problem(id="x", dataset="gsm8k", question=QUESTIONS[0][0], gold="7")
    prompt, response = build_prompt(problem, trailing_space=True), response_text(QUESTIONS[0][1], trailing_space=True)
    alone = encode_prompt(paper_tokenizer, prompt)
    joint = paper_tokenizer(prompt + response)["input_ids"]
    assert joint[:len(alone)] != alone  # the lone space token is not where the joint text puts the boundary
    assert paper_tokenizer.convert_ids_to_tokens(alone[-1]) in ("Ġ", "▁")
    prompt_ids, response_ids = split_at_response(paper_tokenizer, prompt, response)
    assert prompt_ids == alone
    assert response_ids == paper_tokenizer(response, add_special_tokens=False)["input_ids"]


def test_a_token_merged_across_the_boundary_goes_to_neither_side():
    """A tokenizer whose pre-tokenizer does not split at the boundary (here: none at all) may merge the prompt's last
    character with the response's first. Generation cannot produce that token (it starts a new one after the
    prompt's last), so the response is tokenized alone and the prompt keeps the ids generation was given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ["Answer:\nStep one.", "Answer:\nStep two.", "Answer:\n"] * 30
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    prompt, response = "Answer:", "\nStep two."
    alone = encode_prompt(tokenizer, prompt)
    joint = tokenizer(prompt + response)["input_ids"]
    assert joint[:len(alone)] != alone  # the merge happened: ":\n" or longer is one token
    encoded = encode_pair(tokenizer, prompt, response)
    assert encoded.prompt_ids == alone
    assert encoded.response_ids == tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(encoded.input_ids, skip_special_tokens=True) == prompt + response


def test_a_tokenizer_that_prefixes_a_space_is_split_in_context():
    """SentencePiece-style tokenizers that put "▁" before a text's first word (Llama-2, Mistral) would tokenize a
    response alone as if it started a text (here one written straight after the prompt, as a chat answer is after
    its template); in context its tokens are the joint tail, which the rule takes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    raw.train_from_iterator([f"Question: {q}\nAnswer: {a}" for q, a in QUESTIONS] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    prompt, response = build_prompt(PROBLEMS[0]), QUESTIONS[0][1]
    alone = tokenizer(response, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt + response)["input_ids"]
    prompt_ids, response_ids = split_at_response(tokenizer, prompt, response)
    assert prompt_ids == encode_prompt(tokenizer, prompt) == joint[:len(prompt_ids)]
    assert response_ids == joint[len(prompt_ids):] != alone  # alone, it gains a "▁" at the start
    assert tokenizer.decode(prompt_ids + response_ids) == prompt + response
