"""How a (prompt, response) pair becomes token ids: the one definition that training, the reference-log-prob cache
and the cDPO weights stage share, so that per-token weights line up with the tokens the loss sees.

prompt ids   = tokenizer(prompt) with the tokenizer's special tokens (BOS) for plain prompts, none for chat prompts
               (a rendered chat template already carries them): the ids generation was given. Left-truncated to
               max_prompt_length.
response ids = the tokens generation produces for the response after those prompt ids: `prompt + response` tokenized
               together, from where the prompt's ids end, when the joint ids extend the prompt's (the tokenizer did
               not merge across the boundary, as the tokenizers of the paper's models do not when the prompt ends in
               "Answer:" and the response starts with " ": tests/test_token_boundary.py); where a token merges
               across the boundary, generation cannot have produced it (it starts a new token after the prompt's
               last), and the response is tokenized alone. Then + [eos]; right-truncated so prompt + response <=
               max_length
               (a truncated response loses its EOS, as it was cut before the model ended it). A prompt that leaves
               no room (max_prompt_length null, or not below max_length) still keeps one response token, so that the
               shapes hold; the train stage leaves such pairs out (adpo.training.pairs_checks). EncodedResponse
               records how many tokens each side lost, for those checks and the counts in the train manifest.
batch        = collate_responses: right-padded, so every row's tokens keep the positions they have alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    import torch

PROMPT_FORMATS = ("plain", "chat")


@dataclass(frozen=True)
class EncodedResponse:
    prompt_ids: list[int]
    response_ids: list[int]
    prompt_cut: int = 0  # tokens cut from the prompt's left by max_prompt_length
    response_cut: int = 0  # tokens cut from the response's right by max_length

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_format: str = "plain",
                  max_prompt_length: int | None = None) -> list[int]:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    ids = tokenizer(prompt, add_special_tokens=prompt_format == "plain")["input_ids"]
    return _cut_left(list(ids), max_prompt_length)


def _cut_left(ids: list[int], limit: int | None) -> list[int]:
    return ids if limit is None or len(ids) <= limit else ids[len(ids) - limit:]


def split_at_response(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str,
                      prompt_format: str = "plain") -> tuple[list[int], list[int]]:
    """(prompt ids, response ids without EOS): the prompt as generation encodes it, the response as generation
    continues it (see the module's docstring)."""
    prompt_ids = encode_prompt(tokenizer, prompt, prompt_format)
    joint = list(tokenizer(prompt + response, add_special_tokens=prompt_format == "plain")["input_ids"])
    if joint[:len(prompt_ids)] == prompt_ids:
        return prompt_ids, joint[len(prompt_ids):]
    return prompt_ids, list(tokenizer(response, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, *, prompt_format: str = "plain",
                max_prompt_length: int | None = None, max_length: int | None = None) -> EncodedResponse:
    whole_prompt, response_ids = split_at_response(tokenizer, prompt, response, prompt_format)
    prompt_ids = _cut_left(whole_prompt, max_prompt_length)
    if tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
    whole_response = len(response_ids)
    if max_length is not None:
        room = max(max_length - len(prompt_ids), 1)
        response_ids = response_ids[:room]
    return EncodedResponse(prompt_ids, response_ids, prompt_cut=len(whole_prompt) - len(prompt_ids),
                           response_cut=whole_response - len(response_ids))


LENGTH_POLICIES = ("truncate", "drop")  # train.length_policy: what happens to pairs over the limits below


def within_length_limits(tokenizer: PreTrainedTokenizerBase, prompt: str, responses: Sequence[str], *,
                         prompt_format: str = "plain", max_prompt_length: int | None = None,
                         max_length: int | None = None) -> bool:
    """Whether the official cDPO code keeps a pair (`len(question_ids) < 512 and len(question + response ids) < 1024`
    for both responses): prompt ids (with BOS) fewer than max_prompt_length, prompt + response ids (without the EOS)
    fewer than max_length. Under train.length_policy=drop training leaves the others out instead of truncating them."""
    for response in responses:
        prompt_ids, response_ids = split_at_response(tokenizer, prompt, response, prompt_format)
        if max_prompt_length is not None and len(prompt_ids) >= max_prompt_length:
            return False
        if max_length is not None and len(prompt_ids) + len(response_ids) >= max_length:
            return False
    return True


def collate_responses(encoded: Sequence[EncodedResponse], pad_id: int, *,
                      with_labels: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` [B, L]; with_labels also `labels`, the response tokens with -100
    on the prompt and the padding, so that a transformers model's own loss is on the response only."""
    import torch  # here, not at the top: prompt encoding (the generation backends' import) does not need torch

    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long) if with_labels else None
    for row, e in enumerate(encoded):
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        if labels is not None:
            labels[row, len(e.prompt_ids): len(ids)] = ids[len(e.prompt_ids):]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        batch["labels"] = labels
    return batch
