"""Per-token implicit rewards of a trained policy on its pairs: r_t = beta * (log pi(y_t) - log pi_ref(y_t)).

The pairs are read, screened and tokenized exactly as the train stage does (adpo.training: the same records, the
same token ids, the same held-out split), so a position here is a position the loss saw. Log-probs come from the
training code's forward (adpo.training.logps) for the policy and for the reference, one model resident at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from adpo.data.tokenize import within_length_limits
from adpo.training.heldout import heldout_mask
from adpo.training.logps import batch_token_logps
from adpo.training.pairs_checks import checked_pairs
from adpo.training.pairs_data import PairRecord, TokenizedPair, iter_pair_rows, make_batch, read_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysedPair:
    record: PairRecord
    tokens: TokenizedPair
    heldout: bool  # set aside by train.heldout_pairs: never trained on
    question: str | None = None  # the pairs row's optional fields (the pairs stage writes them)
    problem_id: str | None = None


def training_pairs(pairs_file, tokenizer, *, tokenization: dict, length_policy: str, heldout_pairs: int,
                   seed: int) -> list[AnalysedPair]:
    """The pairs a train run with these settings saw (dropped ones left out), each marked held out or not."""
    records, pairs, _ = checked_pairs(pairs_file, read_pairs(pairs_file), tokenizer, **tokenization)
    extra = {where: row for where, row in iter_pair_rows(pairs_file)}
    if length_policy == "drop":
        keep = [within_length_limits(tokenizer, r.prompt, (r.chosen, r.rejected), **tokenization) for r in records]
        records = [r for r, k in zip(records, keep) if k]
        pairs = [p for p, k in zip(pairs, keep) if k]
    held = heldout_mask([r.prompt for r in records], heldout_pairs, seed) if records else []
    return [AnalysedPair(r, p, h, _optional_text(extra[r.where], "question"),
                         _optional_text(extra[r.where], "problem_id")) for r, p, h in zip(records, pairs, held)]


def _optional_text(row: dict, field: str) -> str | None:
    value = row.get(field)
    return None if value is None else str(value)


@torch.no_grad()
def response_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, pad_token_id: int, batch_size: int,
                   device: torch.device, chunk_size: int | None = 256,
                   on_batch: Callable[[int], None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """log p(y_t | prompt, y_<t) of every response token, (chosen, rejected) per pair, float32 on the CPU."""
    model.eval()
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        zeros = [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in chunk]
        batch = make_batch(chunk, zeros, pad_token_id).to(device)
        logps = batch_token_logps(model, batch, chunk_size=chunk_size).float().cpu()
        mask = batch.response_mask.cpu()
        rows = [logps[i][mask[i]] for i in range(logps.shape[0])]
        b = len(chunk)
        out.extend(zip(rows[:b], rows[b:]))
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def implicit_rewards(policy: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     reference: Sequence[tuple[torch.Tensor, torch.Tensor]], beta: float
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """beta * (policy - reference) log-probs, per pair (chosen, rejected)."""
    return [(beta * (pc - rc), beta * (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, reference)]
