"""How a (prompt, response) pair becomes token ids: the one definition that training, the reference-log-prob cache
and the cDPO weights stage share, so that per-token weights line up with the tokens the loss sees.

prompt ids   = tokenizer(prompt) with the tokenizer's special tokens (BOS) for plain prompts, none for chat prompts
               (a rendered chat template already carries them); left-truncated to max_prompt_length.
response ids = tokenizer(response, no special tokens) + [eos]; right-truncated so prompt + response <= max_length
               (a truncated response loses its EOS, as it was cut before the model ended it).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

PROMPT_FORMATS = ("plain", "chat")


@dataclass(frozen=True)
class EncodedResponse:
    prompt_ids: list[int]
    response_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_format: str = "plain",
                  max_prompt_length: int | None = None) -> list[int]:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    ids = tokenizer(prompt, add_special_tokens=prompt_format == "plain")["input_ids"]
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[len(ids) - max_prompt_length:]
    return list(ids)


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, *, prompt_format: str = "plain",
                max_prompt_length: int | None = None, max_length: int | None = None) -> EncodedResponse:
    prompt_ids = encode_prompt(tokenizer, prompt, prompt_format, max_prompt_length)
    response_ids = encode_response(tokenizer, response)
    if max_length is not None:
        room = max(max_length - len(prompt_ids), 1)
        response_ids = response_ids[:room]
    return EncodedResponse(prompt_ids, response_ids)
