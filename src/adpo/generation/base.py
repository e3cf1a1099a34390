"""What every generation backend shares: the Completion record, argument checks, prompt encoding, stop strings.

Prompts are tokenized here, once, with the project's own rule (`adpo.data.tokenize.encode_prompt`), and the backends
receive token ids: vLLM and transformers then see exactly the same input, and it is the input training sees.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from adpo.data.prompts import truncate_at_stop
from adpo.data.tokenize import encode_prompt

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class Completion:
    """One generated continuation. `text` excludes the stop string and special tokens (as vLLM returns it);
    `token_ids` are the generated ids, up to and including the EOS or the token that completed a stop string."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": EOS or a stop string; "length": the token budget ran out

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Request:
    """A checked generate() call, as the backends receive it."""

    prompt_ids: list[list[int]]
    budgets: list[int]  # new tokens allowed per prompt: max_tokens, less where the context would overflow
    n: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Generator(ABC):
    """prompts -> n completions each. Subclasses set `tokenizer`, `max_model_len` and implement `_generate`."""

    backend: str = ""

    def __init__(self, model_path: str, tokenizer, max_model_len: int, prompt_format: str = "plain") -> None:
        self.model_path = str(model_path)
        self.tokenizer = tokenizer
        self.max_model_len = int(max_model_len)
        self.prompt_format = prompt_format
        self._warned_truncation = False

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 512,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order. temperature 0 is greedy (then the n completions are equal);
        otherwise sampling is seeded: the same call gives the same completions on the same backend."""
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts, not a single string")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not prompts:
            return []
        prompt_ids = [self.encode(p) for p in prompts]
        budgets = [min(int(max_tokens), self.max_model_len - len(ids)) for ids in prompt_ids]
        request = Request(prompt_ids, budgets, int(n), float(temperature), float(top_p),
                          tuple(s for s in stop if s), int(seed))
        return self._generate(request)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt; a prompt that leaves no room to generate is cut from the left (with a warning)."""
        ids = encode_prompt(self.tokenizer, prompt, self.prompt_format)
        room = self.max_model_len - 1
        if len(ids) > room:
            if not self._warned_truncation:
                log.warning("a prompt of %d tokens exceeds max_model_len - 1 = %d; keeping its last %d tokens "
                            "(raise generation.max_model_len, or use fewer shots)", len(ids), room, room)
                self._warned_truncation = True
            ids = ids[len(ids) - room:]
        return ids

    @abstractmethod
    def _generate(self, request: Request) -> list[list[Completion]]: ...

    def completion(self, token_ids: list[int], finish_reason: str, ended_on_token: bool,
                   stop: Sequence[str]) -> Completion:
        """A Completion whose text is a function of its token ids, the same in every backend: the decoded ids
        without special tokens, without the final EOS (or stop token id) when `ended_on_token`, cut before the first
        stop string. (vLLM's own incremental text differs only in dropping a trailing incomplete UTF-8 character.)"""
        text_ids = token_ids[:-1] if ended_on_token else token_ids
        text, _ = truncate_at_stop(self.tokenizer.decode(text_ids, skip_special_tokens=True), stop)
        return Completion(text=text, token_ids=list(token_ids), finish_reason=finish_reason)

    def close(self) -> None:
        """Release the model (the process may go on to other work)."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path!r}, max_model_len={self.max_model_len})"
