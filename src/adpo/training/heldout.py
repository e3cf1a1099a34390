"""Preference metrics on pairs the policy never trains on (TRL's `eval_rewards/*`): train.heldout_pairs of the pairs,
whole questions at a time, are set aside and scored every train.eval_every steps, logged as `eval/<metric>`.

The paper trains on every pair, so the default holds none out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.distributed as dist

from adpo.training.pairs_data import PairBatch
from adpo.training.step import MethodSpec, compute_loss


def heldout_mask(prompts: Sequence[str], count: int, seed: int) -> list[bool]:
    """Which pairs to hold out: whole questions (pairs with one prompt), in an order fixed by the seed, until at least
    `count` pairs are held out; True = held out. A question's pairs never fall on both sides, or the held-out
    metrics would partly measure memorised prompts."""
    if count < 0:
        raise ValueError(f"train.heldout_pairs must be >= 0, got {count}")
    if count == 0:
        return [False] * len(prompts)
    questions = list(dict.fromkeys(prompts))
    random.Random(f"heldout:{seed}").shuffle(questions)
    chosen: set[str] = set()
    size = 0
    sizes = {q: 0 for q in questions}
    for p in prompts:
        sizes[p] += 1
    for q in questions:
        if size >= count:
            break
        chosen.add(q)
        size += sizes[q]
    mask = [p in chosen for p in prompts]
    if all(mask):
        raise ValueError(f"train.heldout_pairs={count} would hold out every one of the {len(prompts)} pairs "
                         f"({len(questions)} questions); hold out fewer")
    return mask


def heldout_batches(num_pairs: int, micro_batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches of held-out pair indices. Every rank gets the same number of batches (the last may be
    empty), because under ZeRO-3 every forward gathers weights on all ranks together."""
    per_round = micro_batch_size * world
    rounds = -(-num_pairs // per_round)
    return [[i for i in range(r * per_round + rank * micro_batch_size, r * per_round + (rank + 1) * micro_batch_size)
             if i < num_pairs] for r in range(rounds)]


@torch.no_grad()
def evaluate_heldout(engine, batches: Sequence[PairBatch | None], method: MethodSpec, *, world: int, device,
                     logps_chunk_size: int | None, placeholder: PairBatch) -> dict[str, float]:
    """Mean of compute_loss's metrics over every held-out pair on every rank, as `eval/<metric>`. A None batch (this
    rank's share ran out) runs `placeholder` so that the ranks stay in step, and counts for nothing."""
    was_training = engine.training
    engine.eval()
    sums: dict[str, torch.Tensor] = {}
    pairs = torch.zeros((), dtype=torch.float64)
    for batch in batches:
        real = batch is not None
        _, metrics = compute_loss(engine, batch if real else placeholder, method, logps_chunk_size=logps_chunk_size)
        n = float(batch.num_pairs) if real else 0.0
        for name, value in metrics.items():
            sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64)) + value.double().cpu() * n
        pairs += n
    if was_training:
        engine.train()
    names = sorted(sums)
    stacked = torch.stack([sums[n] for n in names] + [pairs])
    if world > 1:
        stacked = stacked.to(device)
        dist.all_reduce(stacked)
    *totals, count = stacked.cpu().tolist()
    return {f"eval/{name}": total / max(count, 1e-12) for name, total in zip(names, totals)}
