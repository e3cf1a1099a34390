"""Per-token log-probs of a batch of (prompt, response) rows under a causal LM: one forward for chosen + rejected."""

from __future__ import annotations

import torch

from adpo.logprobs import DEFAULT_CHUNK_SIZE, shifted_logps
from adpo.training.pairs_data import PairBatch


def batch_token_logps(model: torch.nn.Module, batch: PairBatch, *,
                      chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """log p(token j+1 | tokens <= j) for every row, [2B, L-1] float32; zero outside the response.

    Logits exist only for the response positions, `chunk_size` of them at a time (adpo.logprobs)."""
    return shifted_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask, chunk_size=chunk_size)
