"""A synthetic preference workload whose token counts are exact: a word-level tokenizer (one token per word), random
tiny Llamas, and pairs.jsonl of random words, laid out as the train stage reads them (model directories with their
tokenizer, input_dir/pairs.jsonl).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class Workload:
    vocab_size: int  # including the special tokens
    hidden: int
    layers: int
    heads: int
    prompt_words: tuple[int, int]  # range per prompt; the tokenizer adds BOS
    response_words: tuple[int, int]  # range per response; encode_pair adds EOS

    @property
    def words(self) -> list[str]:
        return [f"w{i}" for i in range(self.vocab_size - len(SPECIAL_TOKENS))]


def word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # A BOS on plain prompts, as Llama tokenizers add it.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_models(workload: Workload, dirs_and_seeds: dict[Path, int]):
    """A random Llama of the workload's shape in each directory (weights from its seed), with the tokenizer beside it;
    returns the tokenizer."""
    from adpo_data_prep.toy.model import build_tiny_llama

    tokenizer = word_tokenizer(workload.words)
    for path, seed in dirs_and_seeds.items():
        tokenizer.save_pretrained(str(path))
        build_tiny_llama(tokenizer, path, hidden_size=workload.hidden, num_layers=workload.layers,
                         num_heads=workload.heads, seed=seed)
    return tokenizer


def write_pairs(workload: Workload, path: Path, num_pairs: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = workload.words

    def sentence(lo_hi: tuple[int, int]) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(*lo_hi)))

    rows = [{"id": f"p{i}", "prompt": sentence(workload.prompt_words) + " ",
             "chosen": sentence(workload.response_words), "rejected": sentence(workload.response_words)}
            for i in range(num_pairs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
