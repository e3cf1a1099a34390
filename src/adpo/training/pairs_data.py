"""Preference pairs for training: read and validate pairs.jsonl (also the weights stage's reader), tokenise with the
shared contract, collate batches.

A batch stacks the chosen rows over the rejected rows ([2B, L], right-padded) so that the policy needs one forward
per micro-batch, as in the DPO reference code. Per-token tensors that the loss needs (mask, reference log-probs,
weights) are laid out in the "shifted" frame [2B, L-1], where column j holds the log-prob of token j+1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from adpo.data.tokenize import EncodedResponse, collate_responses, encode_pair
from adpo.io import DataError, iter_jsonl, require_field
from adpo.models import VOCABULARY_ID, load_tokenizer, vocabulary_id

PAIRS_FILE = "pairs.jsonl"


@dataclass(frozen=True)
class PairRecord:
    id: str
    prompt: str
    chosen: str
    rejected: str
    where: str  # "file:line", for errors found after reading (weights that do not line up with the tokens)
    chosen_weights: list[float] | None = None
    rejected_weights: list[float] | None = None
    weights_tokenizer: str | None = None


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_weights: list[float] | None = None
    rejected_weights: list[float] | None = None
    cut: tuple[int, int, int] = (0, 0, 0)  # tokens truncation removed from the prompt, chosen, rejected

    @property
    def num_tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def _weights(obj: dict, field: str, where: str) -> list[float]:
    values = require_field(obj, field, list, where)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise DataError(f"{where}: field '{field}'[{i}] must be a number in [0, 1], got {v!r}")
    return [float(v) for v in values]


def iter_pair_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", row) for each line of a pairs.jsonl file, whole (a stage that adds fields writes them back);
    a line without its id, prompt, chosen and rejected, or a file without pairs, raises DataError naming them."""
    count = 0
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_field(obj, "id", (str, int), where)
        for name in ("prompt", "chosen", "rejected"):
            require_field(obj, name, str, where, non_empty=True)
        count += 1
        yield where, obj
    if not count:
        raise DataError(f"{path}: no pairs in the file")


def read_pairs(path: str | Path, *, use_weights: bool = False) -> list[PairRecord]:
    """Pairs from a pairs.jsonl file (iter_pair_rows).

    With use_weights, every row must carry `rejected_weights` (and may carry `chosen_weights`), as the weights stage
    writes them.
    """
    pairs = []
    for where, obj in iter_pair_rows(path):
        record = PairRecord(id=str(obj["id"]), prompt=obj["prompt"], chosen=obj["chosen"], rejected=obj["rejected"],
                            where=where)
        if use_weights:
            if obj.get("rejected_weights") is None:
                raise DataError(
                    f"{where}: missing field 'rejected_weights': this method trains on per-token weights; "
                    "run the weights stage and point input_dir at its output"
                )
            chosen_w = _weights(obj, "chosen_weights", where) if obj.get("chosen_weights") is not None else None
            tok = obj.get("weights_tokenizer")
            record = PairRecord(**{**record.__dict__, "rejected_weights": _weights(obj, "rejected_weights", where),
                                   "chosen_weights": chosen_w, "weights_tokenizer": None if tok is None else str(tok)})
        pairs.append(record)
    return pairs


def tokenize_pairs(records: Sequence[PairRecord], tokenizer: PreTrainedTokenizerBase, *, prompt_format: str = "plain",
                   max_prompt_length: int | None = None, max_length: int | None = None) -> list[TokenizedPair]:
    """encode_pair on both responses; weights must have exactly one value per response token.

    The prompt is used as written in the pairs file: the pairs stage already rendered it (plain, or through the chat
    template), and the weights stage encodes the same text.
    """
    out = []
    for rec in records:
        prompt = rec.prompt
        kwargs = dict(prompt_format=prompt_format, max_prompt_length=max_prompt_length, max_length=max_length)
        chosen = encode_pair(tokenizer, prompt, rec.chosen, **kwargs)
        rejected = encode_pair(tokenizer, prompt, rec.rejected, **kwargs)
        if not chosen.prompt_ids:
            # The first response token needs a position before it to be predicted from.
            raise DataError(f"{rec.where}: field 'prompt' encodes to no tokens")
        for field, weights, ids in (("chosen_weights", rec.chosen_weights, chosen.response_ids),
                                    ("rejected_weights", rec.rejected_weights, rejected.response_ids)):
            if weights is not None and len(weights) != len(ids):
                raise DataError(
                    f"{rec.where}: field '{field}' has {len(weights)} values but the response has {len(ids)} tokens "
                    f"(prompt_format={prompt_format}, max_prompt_length={max_prompt_length}, max_length={max_length}): "
                    "the weights were computed with another tokenizer or other tokenisation settings"
                )
        out.append(TokenizedPair(chosen.prompt_ids, chosen.response_ids, rejected.response_ids,
                                 rec.chosen_weights, rec.rejected_weights,
                                 cut=(chosen.prompt_cut, chosen.response_cut, rejected.response_cut)))
    return out


@dataclass
class PairBatch:
    """One micro-batch: rows [0, B) are the chosen responses, rows [B, 2B) the rejected ones."""

    input_ids: torch.Tensor  # [2B, L]
    attention_mask: torch.Tensor  # [2B, L]
    response_mask: torch.Tensor  # [2B, L-1] bool: column j is True where token j+1 is a response token
    reference_logps: torch.Tensor  # [2B, L-1] float32, zero outside the response
    weights: torch.Tensor | None  # [2B, L-1] float32 (1 where no weight was given), or None

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device) -> PairBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return PairBatch(*(move(t) for t in (self.input_ids, self.attention_mask, self.response_mask,
                                             self.reference_logps, self.weights)))


EOS_WEIGHT_LONGEST = "longest"


def check_eos_weight(value: float | str | None) -> float | str | None:
    """None, a weight in [0, 1], or "longest" (method.eos_weight); anything else raises ValueError naming the key."""
    if value is None or value == EOS_WEIGHT_LONGEST:
        return value
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"method.eos_weight must be null, a number in [0, 1] or {EOS_WEIGHT_LONGEST!r}, got {value!r}")
    return weight


def make_batch(pairs: Sequence[TokenizedPair], reference: Sequence[tuple[torch.Tensor, torch.Tensor]],
               pad_token_id: int, *, use_weights: bool = False, eos_weight: float | str | None = None,
               eos_token_id: int | None = None) -> PairBatch:
    """Collate pairs and their reference log-probs ((chosen, rejected) per pair, one value per response token).

    eos_weight replaces the weight of a weighted response's final EOS token (method.eos_weight): None keeps the
    weights stage's value; a number is the official cDPO code's layout (`1 - (ce_prob + [0])` gives the EOS 1);
    "longest" is that code's Qwen branch, where the weights are padded to the batch's longest row before a column of
    ones is appended, so the EOS weighs 1 on the micro-batch's longest rows and 0 on the others.
    """
    rows = [(p.prompt_ids, p.chosen_ids, ref[0], p.chosen_weights) for p, ref in zip(pairs, reference)]
    rows += [(p.prompt_ids, p.rejected_ids, ref[1], p.rejected_weights) for p, ref in zip(pairs, reference)]
    padded = collate_responses([EncodedResponse(prompt, resp) for prompt, resp, _, _ in rows], pad_token_id)
    n, width = padded["input_ids"].shape
    response_mask = torch.zeros((n, width - 1), dtype=torch.bool)
    reference_logps = torch.zeros((n, width - 1), dtype=torch.float32)
    weights = torch.ones((n, width - 1), dtype=torch.float32) if use_weights else None
    for i, (prompt, resp, ref, w) in enumerate(rows):
        p, r = len(prompt), len(resp)
        if ref.numel() != r:
            raise ValueError(f"reference log-probs have {ref.numel()} values for a response of {r} tokens")
        # Token p+t is predicted by the logits at position p+t-1.
        response_mask[i, p - 1 : p - 1 + r] = True
        reference_logps[i, p - 1 : p - 1 + r] = ref
        if weights is not None and w is not None:
            weights[i, p - 1 : p - 1 + r] = torch.tensor(w, dtype=torch.float32)
            if eos_weight is not None and r and eos_token_id is not None and resp[-1] == eos_token_id:
                value = float(p + r == width) if eos_weight == EOS_WEIGHT_LONGEST else float(eos_weight)
                weights[i, p - 2 + r] = value
    return PairBatch(padded["input_ids"], padded["attention_mask"], response_mask, reference_logps, weights)


def check_weights_tokenizer(records: Sequence[PairRecord], tokenizer: PreTrainedTokenizerBase, model_name: str) -> None:
    """Refuse weights computed with a tokenizer whose vocabulary differs from the policy's (they would not line up)."""
    seen: dict[str, bool] = {}
    for rec in records:
        name = rec.weights_tokenizer
        if name is None or name == model_name or name in seen:
            continue
        if name.startswith(VOCABULARY_ID):  # what the weights stage writes: the vocabulary's digest
            if name != vocabulary_id(tokenizer):
                raise DataError(f"{rec.where}: field 'weights_tokenizer' is {name!r}, but the policy's tokenizer "
                                f"({model_name!r}) has vocabulary {vocabulary_id(tokenizer)}: recompute the weights "
                                "with this model")
            seen[name] = True
            continue
        if Path(name).resolve() == Path(model_name).resolve():
            seen[name] = True
            continue
        try:
            other = load_tokenizer(name)
        except Exception:  # not reachable here (hub id offline, moved directory): the length check still guards
            seen[name] = True
            continue
        seen[name] = other.get_vocab() == tokenizer.get_vocab()
        if not seen[name]:
            raise DataError(f"{rec.where}: field 'weights_tokenizer' is {name!r}, whose vocabulary differs from the "
                            f"policy's tokenizer ({model_name!r}): recompute the weights with this model")
