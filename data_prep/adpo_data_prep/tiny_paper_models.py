"""Tiny random stand-ins for the paper's four models, built offline, to rehearse the whole chain on CPUs.

    build_tiny_model("gemma3_12b", out_dir)          -> out_dir (weights, config, tokenizer, processor files)
    python -m adpo_data_prep.tiny_paper_models --arch qwen3_8b --out DIR
    python -m adpo_data_prep.tiny_paper_models --all --out DIR          (DIR/<arch>/ for each)

Each stand-in has its hub checkpoint's transformers class and the config features that change code paths: the
model_type and `architectures`, rope theta, the ratio of query to key/value heads, Qwen-3's q/k norms, Gemma-3's
sliding-window layer pattern, query_pre_attn_scalar, head size decoupled from the hidden size, unset soft-capping and
its vision tower, whether embeddings are tied, and a model vocabulary padded beyond the tokenizer's where the real one
is. Only the sizes are tiny (hidden 96-128, 2-6 layers, 0.6-1.2M parameters; attention heads of 32, a size vLLM-CPU
has kernels for). Weights are random from `seed`, then trained for a few seconds on built-in text (`warm_up`: the
exemplars' answer format, so that sampling them gives some right answers and so preference pairs); the same seed
writes the same files.

The tokenizers are BPEs trained in a second on built-in English and math text (the few-shot exemplars plus a
paragraph of prose), with the real tokenizer's pipeline (byte-level with Llama-3's or Qwen's split rule, digits one by
one for DeepSeek, Gemma's space-as-"▁" with byte fallback) and its special tokens at the places the real ones take
(specials after the BPE vocabulary for Llama-3, Qwen and DeepSeek; Gemma's <pad>/<eos>/<bos> as ids 0/1/2). Each is
saved under its hub tokenizer class, which in transformers 5 rebuilds the pipeline from the vocabulary for Gemma and
Qwen: training with the same pipeline is what makes the saved files load back unchanged.

Reference values are those of the hub config.json files of meta-llama/Meta-Llama-3-8B, google/gemma-3-12b-pt,
Qwen/Qwen3-8B-Base and deepseek-ai/deepseek-math-7b-base (see HUB_FEATURES).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

from adpo.data.exemplars import GSM8K_COT_EXEMPLARS, MINERVA_MATH_EXEMPLARS
from adpo.io import atomic_directory

ARCHITECTURES = ("llama3_8b", "gemma3_12b", "qwen3_8b", "deepseek_math_7b")

# The hub checkpoints' own values of the features the stand-ins copy (their config.json files; Gemma's text fields
# not in its config.json are transformers' Gemma3TextConfig defaults, which the hub file relies on).
HUB_FEATURES: dict[str, dict[str, Any]] = {
    "llama3_8b": {"hub_id": "meta-llama/Meta-Llama-3-8B", "model_type": "llama", "class": "LlamaForCausalLM",
                  "rope_theta": 500_000.0, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
                  "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "adds_bos": True},
    "gemma3_12b": {"hub_id": "google/gemma-3-12b-pt", "model_type": "gemma3",
                   "class": "Gemma3ForConditionalGeneration", "text_model_type": "gemma3_text",
                   "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling_factor": 8.0,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "hidden_size": 3840,
                   "query_pre_attn_scalar": 256, "sliding_window_pattern": 6, "final_logit_softcapping": None,
                   "attn_logit_softcapping": None, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                   "max_position_embeddings": 131_072, "mm_tokens_per_image": 256,
                   "vision_model_type": "siglip_vision_model", "vision_use_head": False,
                   "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "adds_bos": True},
    "qwen3_8b": {"hub_id": "Qwen/Qwen3-8B-Base", "model_type": "qwen3", "class": "Qwen3ForCausalLM",
                 "rope_theta": 1_000_000.0, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "max_position_embeddings": 32_768,
                 "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "adds_bos": False},
    "deepseek_math_7b": {"hub_id": "deepseek-ai/deepseek-math-7b-base", "model_type": "llama",
                         "class": "LlamaForCausalLM", "rope_theta": 10_000.0, "num_attention_heads": 32,
                         "num_key_value_heads": 32, "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
                         "max_position_embeddings": 4096, "bos_token": "<｜begin▁of▁sentence｜>",
                         "eos_token": "<｜end▁of▁sentence｜>", "adds_bos": True},
}

# Llama-3's split rule (tiktoken cl100k-like: numbers in groups of up to three digits).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen's (numbers one digit at a time) is the one transformers' Qwen2Tokenizer rebuilds its pipeline with.
QWEN_SPLIT = QWEN2_PRETOKENIZE_REGEX

TARGET_VOCAB = 1024
# Steps of training on built-in text after the random init (see warm_up).
WARM_UP_STEPS = 60
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
    "{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PROSE = """\
Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did
Natalia sell altogether in April and May? In May she sold 48 / 2 = 24 clips, so altogether she sold 48 + 24 = 72.
Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?
Betty is saving money for a new wallet which costs $100. She has only half of the money she needs, and her parents
give her $15 while her grandparents give her twice as much. The total cost is 100 dollars, the price per item is
3 dollars, each box holds 12 pens, a week has 7 days, and there are 60 minutes in an hour and 24 hours in a day.
The train travels 120 miles in 2 hours, so its speed is 60 miles per hour. A rectangle with length 8 and width 5 has
area 40 and perimeter 26. If x + 3 = 10, then x = 7. The percentage of students who passed is 75 percent.
Let $f(x) = 3x^2 - 5x + 2$. Find $f(2)$. We have $f(2) = 12 - 10 + 2 = 4$, so the answer is $\\boxed{4}$.
Compute $\\sqrt{144} + \\frac{3}{4} \\cdot 8$. Since $\\sqrt{144} = 12$ and $\\frac{3}{4} \\cdot 8 = 6$, the sum
is $18$. The probability that a fair die shows an even number is $\\frac{1}{2}$. Solve for $y$: $2y - 7 = 11$.
The sum of the interior angles of a triangle is $180^\\circ$. The equation $x^2 - 5x + 6 = 0$ has roots $x = 2$
and $x = 3$. Simplify $\\left(\\frac{a}{b}\\right)^{2} \\times \\pi r^2 \\le \\infty$. Final Answer: The final
answer is $\\frac{7}{2}$. I hope it is correct. The answer is 42. #### 42
John buys 3 apples and 5 oranges at the store. Each apple costs $2 and each orange costs $1, so he pays 3 * 2 + 5 = 11
dollars in total. Mary has twice as many books as Tom, and together they have 36 books, so Tom has 12 books and Mary
has 24. A farmer sells eggs every day for 4 weeks; how much money does he make if he sells 10 eggs a day at $3 each?
The students in the class each read 5 pages per hour. After 3 hours, how many pages are left of a 40 page book?
Let $n$ be a positive integer such that $n^2 + n = 30$. What is the value of $n$? The greatest common divisor of
$12$ and $18$ is $6$, and their least common multiple is $36$. The remainder when $17$ is divided by $5$ is $2$.
"""


def training_text() -> list[str]:
    """The exemplars as the plain prompts show them, and the prose: what GSM8K and MATH prompts are made of."""
    texts = [f"Question: {q}\nAnswer: {a}\n\n" for q, a in GSM8K_COT_EXEMPLARS]
    texts += [f"Problem:\n{q}\n\nSolution:\n{a}\n\n" for q, a in MINERVA_MATH_EXEMPLARS]
    return texts + PROSE.splitlines(keepends=True)


# ---------------------------------------------------------------- tokenizers


def _train_bpe(pipeline: Tokenizer, *, vocab_size: int, alphabet: list[str]) -> tuple[dict[str, int], list]:
    """(vocab, merges) of a BPE trained on training_text() through `pipeline`'s normalizer and pre-tokenizer."""
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    pipeline.train_from_iterator(training_text(), trainer=trainer)
    model = json.loads(pipeline.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _with_leading(tokens: list[str], vocab: dict[str, int]) -> dict[str, int]:
    """`tokens` as ids 0.. and the trained vocabulary after them, in its own order."""
    ordered = tokens + [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in tokens]
    return {token: index for index, token in enumerate(ordered)}


def _byte_level_pipeline(split: str | None) -> Tokenizer:
    """Byte-level BPE splitting words by the regex `split`; without one, digits one by one, then GPT-2's rule
    (DeepSeek's layout)."""
    tokenizer = Tokenizer(models.BPE())
    if split:
        steps = [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    else:
        steps = [pre_tokenizers.Digits(individual_digits=True),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return tokenizer


def _byte_level_tokenizer(split: str | None, *, specials: list[str], bos: str, eos: str):
    """A byte-level BPE with `specials` after its vocabulary (as Llama-3's and DeepSeek's are), `bos` prepended to
    every text; no pad token (neither hub tokenizer has one)."""
    from transformers import PreTrainedTokenizerFast

    pipeline = _byte_level_pipeline(split)
    vocab, merges = _train_bpe(pipeline, vocab_size=TARGET_VOCAB, alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pipeline.pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos)


def llama3_tokenizer():
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    return _byte_level_tokenizer(LLAMA3_SPLIT, specials=specials, bos="<|begin_of_text|>", eos="<|end_of_text|>")


def deepseek_tokenizer():
    specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]
    return _byte_level_tokenizer(None, specials=specials, bos="<｜begin▁of▁sentence｜>",
                                 eos="<｜end▁of▁sentence｜>")


def qwen3_tokenizer():
    """Qwen2Tokenizer (the class Qwen3's hub files name) rebuilt from a vocabulary trained through its own pipeline:
    no BOS, <|endoftext|> as EOS and pad, the ChatML tokens after it."""
    from transformers import AddedToken, Qwen2Tokenizer

    pipeline = _byte_level_pipeline(QWEN_SPLIT)
    pipeline.normalizer = normalizers.NFC()
    vocab, merges = _train_bpe(pipeline, vocab_size=TARGET_VOCAB, alphabet=pre_tokenizers.ByteLevel.alphabet())
    vocab = {**vocab, "<|endoftext|>": len(vocab)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"extra_special_tokens": [
        AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                                              "<|object_ref_end|>")]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


GEMMA_LEADING = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                      "image_token": "<image_soft_token>"}


def gemma3_tokenizer():
    """GemmaTokenizer (spaces as "▁", byte fallback) with Gemma's specials at ids 0-4, the turn markers, the 256
    byte tokens, the trained vocabulary, then the image tokens (<image_soft_token> last, as on the hub)."""
    from transformers import AddedToken, GemmaTokenizer

    # Trained on words that start with "▁", as SentencePiece trains: GemmaTokenizer applies the merges to the whole
    # text (it never splits), and merges that never cross a word start tokenize it the same way.
    pipeline = Tokenizer(models.BPE(byte_fallback=True))
    pipeline.normalizer = normalizers.Replace(" ", "▁")
    pipeline.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    chars = sorted({c for text in training_text() for c in text.replace(" ", "▁")})
    vocab, merges = _train_bpe(pipeline, vocab_size=TARGET_VOCAB, alphabet=chars)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    vocab = _with_leading(GEMMA_LEADING + byte_tokens, vocab)
    for token in GEMMA_IMAGE_TOKENS.values():
        vocab[token] = len(vocab)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True,
                               extra_special_tokens=dict(GEMMA_IMAGE_TOKENS))
    tokenizer.add_special_tokens({"extra_special_tokens": [AddedToken(t, special=True) for t in GEMMA_LEADING[5:]]},
                                 replace_extra_special_tokens=False)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------- model configs


def padded_vocab(tokenizer, multiple: int = 64) -> int:
    """The tokenizer's size rounded up, as Gemma's, Qwen's and DeepSeek's embeddings are larger than their tokenizers
    (Llama-3's are exactly its size)."""
    return -(-len(tokenizer) // multiple) * multiple


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"{token!r} is not in the tokenizer")
    return token_id


def llama3_config(tokenizer):
    """Meta-Llama-3-8B: GQA with 4 query heads per key/value head, rope theta 500k, untied embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=448, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, hidden_act="silu", max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500_000.0, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, architectures=["LlamaForCausalLM"],
    )


def deepseek_config(tokenizer):
    """deepseek-math-7b-base: a Llama with multi-head attention (as many key/value heads as query heads), rope theta
    10k, 4096 positions, untied embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=padded_vocab(tokenizer), hidden_size=128, intermediate_size=344, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, hidden_act="silu", max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_theta=10_000.0, attention_bias=False, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, architectures=["LlamaForCausalLM"],
    )


def qwen3_config(tokenizer):
    """Qwen3-8B-Base: q/k RMS norms (in the architecture), GQA 4:1, rope theta 1M, no sliding window, untied
    embeddings, <|endoftext|> as both BOS and EOS ids."""
    from transformers import Qwen3Config

    endoftext = _token_id(tokenizer, "<|endoftext|>")
    return Qwen3Config(
        vocab_size=padded_vocab(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, hidden_act="silu", max_position_embeddings=32_768,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, use_sliding_window=False, sliding_window=None,
        max_window_layers=2, attention_bias=False, tie_word_embeddings=False, bos_token_id=endoftext,
        eos_token_id=endoftext, architectures=["Qwen3ForCausalLM"],
    )


GEMMA_IMAGE_SIZE = 56
GEMMA_TOKENS_PER_IMAGE = 4


def gemma3_config(tokenizer):
    """gemma-3-12b-pt: the multimodal Gemma3Config with a SigLIP vision tower. Text: 5 sliding-window layers to 1
    global, head size independent of the hidden size (4 x 32 = 128 over a hidden size of 96, as 16 x 256 over
    3840), query_pre_attn_scalar equal to the head size, rope theta 1M global / 10k local with linear scaling 8
    on the global layers, no soft-capping, tied embeddings, EOS <eos> or <end_of_turn>."""
    from transformers import Gemma3Config

    ids = {name: _token_id(tokenizer, token) for name, token in GEMMA_IMAGE_TOKENS.items()}
    text = dict(
        vocab_size=padded_vocab(tokenizer), hidden_size=96, intermediate_size=384, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072, rms_norm_eps=1e-6,
        # The hub's window is 1024 positions; 64 makes a two-shot prompt already reach past it.
        sliding_window=64, sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0}, final_logit_softcapping=None,
        attn_logit_softcapping=None, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        # The hub config's [1, 106]: <eos>, then <end_of_turn>.
        eos_token_id=[tokenizer.eos_token_id, _token_id(tokenizer, "<end_of_turn>")],
    )
    # 4x4 patches pooled 2x2 into 4 soft tokens (the hub's: 64x64 patches pooled 4x4 into 256).
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=GEMMA_IMAGE_SIZE, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=GEMMA_TOKENS_PER_IMAGE,
        boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=text["eos_token_id"], tie_word_embeddings=True,
        architectures=["Gemma3ForConditionalGeneration"],
    )


def gemma3_processor(tokenizer):
    """Gemma3Processor: SigLIP's preprocessing (mean/std 0.5, bilinear) at the tiny tower's image size, with
    <start_of_image> expanded to its soft tokens."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    image_processor = Gemma3ImageProcessorPil(
        size={"height": GEMMA_IMAGE_SIZE, "width": GEMMA_IMAGE_SIZE}, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], resample=2, do_pan_and_scan=None)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                           image_seq_length=GEMMA_TOKENS_PER_IMAGE, chat_template=tokenizer.chat_template)


@dataclass(frozen=True)
class Recipe:
    tokenizer: Callable[[], Any]
    config: Callable[[Any], Any]
    model_class: str
    # The class the hub's tokenizer_config.json names (transformers 5 would write its own class name).
    tokenizer_class: str
    processor: Callable[[Any], Any] | None = None


RECIPES = {
    "llama3_8b": Recipe(llama3_tokenizer, llama3_config, "LlamaForCausalLM", "PreTrainedTokenizerFast"),
    "gemma3_12b": Recipe(gemma3_tokenizer, gemma3_config, "Gemma3ForConditionalGeneration", "GemmaTokenizer",
                         gemma3_processor),
    "qwen3_8b": Recipe(qwen3_tokenizer, qwen3_config, "Qwen3ForCausalLM", "Qwen2Tokenizer"),
    # The hub names LlamaTokenizerFast over a byte-level tokenizer.json, which transformers 5's AutoTokenizer
    # rebuilds with SentencePiece's pipeline (spaces lost: huggingface/transformers#48206); kept, so that the
    # stand-in meets what the real checkpoint meets. adpo.models.load_tokenizer loads it as written.
    "deepseek_math_7b": Recipe(deepseek_tokenizer, deepseek_config, "LlamaForCausalLM", "LlamaTokenizerFast"),
}


def _generation_config(config):
    from transformers import GenerationConfig

    text = config.get_text_config()
    return GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                            pad_token_id=getattr(text, "pad_token_id", None))


def _name_tokenizer_class(model_dir: Path, name: str) -> None:
    path = Path(model_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = name
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def warm_up(model, tokenizer, steps: int, seed: int, batch_size: int = 8, max_tokens: int = 256) -> None:
    """`steps` of next-token training on training_text() (a few seconds). A purely random model almost never writes
    a number that grades right, so the chain sampled from it may find no preference pair (DeepSeek's digit-by-digit
    tokens: 0 right of 1024 samples); warmed up, it writes the exemplars' "The answer is N." and some answers are
    right on any CPU. No EOS is trained: greedy answers still run to their token budget."""
    texts = training_text()
    encoded = [tokenizer(t)["input_ids"][:max_tokens] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        rows = [encoded[i] for i in torch.randint(len(encoded), (batch_size,), generator=generator).tolist()]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def build_tiny_model(arch: str, out_dir: Path, seed: int = 0, warm_up_steps: int = WARM_UP_STEPS) -> Path:
    """Write the tiny `arch` (one of ARCHITECTURES) to out_dir: weights (random from `seed`, then `warm_up_steps` of
    training on built-in text), config, generation config, tokenizer and, for Gemma-3, its processor files.
    Replaces out_dir whole; returns it."""
    import transformers

    if arch not in RECIPES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    recipe = RECIPES[arch]
    tokenizer = recipe.tokenizer()
    config = recipe.config(tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, recipe.model_class)(config).to(torch.float32)
    if warm_up_steps:
        warm_up(model, tokenizer, warm_up_steps, seed)
    model.generation_config = _generation_config(config)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _name_tokenizer_class(tmp, recipe.tokenizer_class)
        if recipe.processor is not None:
            processor = recipe.processor(tokenizer)
            processor.save_pretrained(str(tmp))
            # The hub's layout: the image processor in preprocessor_config.json as well (transformers 5 nests it in
            # processor_config.json; code written for the hub's files looks for it there).
            processor.image_processor.save_pretrained(str(tmp))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", choices=ARCHITECTURES)
    which.add_argument("--all", action="store_true", help="every architecture, into OUT/<arch>/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-up-steps", type=int, default=WARM_UP_STEPS,
                        help="steps of training on built-in text after the random init (0: purely random)")
    args = parser.parse_args(argv)
    if args.all:
        for arch in ARCHITECTURES:
            print(build_tiny_model(arch, args.out / arch, args.seed, args.warm_up_steps))
    else:
        print(build_tiny_model(args.arch, args.out, args.seed, args.warm_up_steps))


if __name__ == "__main__":
    main()
