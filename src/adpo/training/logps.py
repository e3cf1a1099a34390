"""Per-token log-probs of a batch of (prompt, response) rows under a causal LM: one forward for chosen + rejected."""

from __future__ import annotations

import torch

from adpo.losses import per_token_logps
from adpo.training.pairs_data import PairBatch


def batch_token_logps(model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
    """log p(token j+1 | tokens <= j) for every row, [2B, L-1] float32; zero outside the response."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logps = per_token_logps(logits[:, :-1], batch.input_ids[:, 1:])
    return torch.where(batch.response_mask, logps, torch.zeros_like(logps))
