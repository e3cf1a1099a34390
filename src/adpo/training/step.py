"""One training step of this project, importable on its own (benchmarks, other trainers).

    method = MethodSpec.from_cfg(cfg.method)
    batch = make_batch(tokenized_pairs, reference_logps, tokenizer.pad_token_id, use_weights=method.use_weights)
    metrics = train_step(engine, [batch.to(device)], method)   # one optimizer step over the micro-batches

compute_loss is the whole objective: one forward over chosen + rejected, per-token log-ratios against the cached
reference, and adpo.losses.preference_loss with the method's beta, granularity, length mode, reduction and segment loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from adpo.logprobs import DEFAULT_CHUNK_SIZE
from adpo.losses import preference_loss
from adpo.training.logps import batch_token_logps
from adpo.training.pairs_data import PairBatch, check_eos_weight

METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/saturated",
    "logps/chosen",
    "logps/rejected",
    "segments/win_fraction",
    "segments/per_pair",
    "segments/saturated",
)


@dataclass(frozen=True)
class MethodSpec:
    beta: float = 0.1
    granularity: str = "sequence"
    length_mode: str = "max"
    reduction: str = "sum"
    use_weights: bool = False
    segment_loss: str = "sigmoid"
    eos_weight: float | str | None = None  # make_batch's rule for a weighted response's EOS token

    @classmethod
    def from_cfg(cls, method: Mapping) -> MethodSpec:
        spec = cls(beta=float(method["beta"]), granularity=str(method["granularity"]),
                   length_mode=str(method.get("length_mode", "max")), reduction=str(method.get("reduction", "sum")),
                   use_weights=bool(method.get("use_weights", False)),
                   segment_loss=str(method.get("segment_loss", "sigmoid")),
                   eos_weight=check_eos_weight(method.get("eos_weight")))
        # Fail at start-up, not at the first step: a loss call on an empty batch checks every option together.
        empty, no = torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool)
        preference_loss(empty, empty, no, no, beta=spec.beta, granularity=spec.granularity,
                        length_mode=spec.length_mode, reduction=spec.reduction, segment_loss=spec.segment_loss)
        return spec


def compute_loss(model, batch: PairBatch, method: MethodSpec, *, logps_chunk_size: int | None = DEFAULT_CHUNK_SIZE
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean preference loss over the batch's pairs and the batch means of the dashboard metrics (detached).

    The policy's log-probs are computed `logps_chunk_size` response positions at a time (adpo.logprobs)."""
    logps = batch_token_logps(model, batch, chunk_size=logps_chunk_size)
    ratios = logps - batch.reference_logps.to(logps.dtype)
    b = batch.num_pairs
    mask = batch.response_mask
    weights = batch.weights
    losses, metrics = preference_loss(
        ratios[:b], ratios[b:], mask[:b], mask[b:],
        beta=method.beta,
        granularity=method.granularity,
        chosen_weights=None if weights is None else weights[:b],
        rejected_weights=None if weights is None else weights[b:],
        length_mode=method.length_mode,
        reduction=method.reduction,
        segment_loss=method.segment_loss,
    )
    loss = losses.mean()
    with torch.no_grad():
        summed = logps.detach().sum(-1)
        out = {"loss": loss.detach(), "logps/chosen": summed[:b].mean(), "logps/rejected": summed[b:].mean()}
        out.update({name: value.mean() for name, value in metrics.items()})
    return loss, out


def train_step(engine, micro_batches: Sequence[PairBatch], method: MethodSpec, *,
               logps_chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> dict[str, torch.Tensor]:
    """Forward/backward over the micro-batches of one optimizer step (len == the engine's gradient accumulation
    steps); returns this rank's metrics averaged over them (plus "tokens": non-padding tokens seen)."""
    if len(micro_batches) != engine.gradient_accumulation_steps():
        raise ValueError(f"got {len(micro_batches)} micro-batches for {engine.gradient_accumulation_steps()} "
                         "gradient accumulation steps")
    engine.train()
    totals: dict[str, torch.Tensor] = {}
    tokens = 0
    for batch in micro_batches:
        loss, metrics = compute_loss(engine, batch, method, logps_chunk_size=logps_chunk_size)
        engine.backward(loss)  # DeepSpeed divides by the accumulation steps
        engine.step()  # steps the optimizer and schedule only at the accumulation boundary
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0) + value.float()
        tokens += int(batch.attention_mask.sum())
    out = {name: value / len(micro_batches) for name, value in totals.items()}
    out["tokens"] = torch.tensor(float(tokens), device=out["loss"].device)
    return out
