"""How far a policy has moved from its reference: a sampled estimate of KL(pi || pi_ref) on prompts.

Responses are drawn from the policy at temperature 1 over its whole distribution (top_p 1, no top-k), stopped as the
evaluation stops them (EOS, the dataset's stop string, the token budget: a rule that looks only at the tokens drawn so
far). For such a stopped process the KL of the response distributions is the expected sum of the per-token log-ratios
along a sampled response, so

    KL(pi || pi_ref) ~ mean over samples of  sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]

is unbiased; its standard error over the samples is reported beside it. Log-probs come from one forward pass of each
model on the sampled token ids (not on re-tokenised text), so both models score exactly the tokens that were drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from adpo.logprobs import shifted_logps


@dataclass(frozen=True)
class KLEstimate:
    kl: float  # nats per response
    sem: float  # standard error of the mean over the samples
    samples: int
    mean_tokens: float  # sampled response length

    def as_dict(self) -> dict[str, float]:
        return {"kl": self.kl, "kl_sem": self.sem, "kl_samples": self.samples, "kl_mean_tokens": self.mean_tokens}


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                   pad_token_id: int, batch_size: int, device: torch.device,
                   on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """log p(response | prompt) summed over the response's tokens, one float64 per (prompt ids, response ids)."""
    model.eval()
    sums = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        positions = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
        for row, (prompt, response) in enumerate(chunk):  # right padding: positions count from 0 in every row
            ids = list(prompt) + list(response)
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
            # position j predicts token j + 1: the response's tokens are predicted from len(prompt) - 1 on
            positions[row, len(prompt) - 1:len(ids) - 1] = True
        logps = shifted_logps(model, input_ids.to(device), attention_mask.to(device), positions.to(device))
        sums.append(logps.double().sum(-1).cpu())
        if on_batch is not None:
            on_batch(len(chunk))
    return torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64)


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor, lengths: Sequence[int]) -> KLEstimate:
    ratios = (policy_logps - reference_logps).double()
    n = int(ratios.numel())
    if n == 0:
        return KLEstimate(math.nan, math.nan, 0, math.nan)
    sem = float(ratios.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return KLEstimate(float(ratios.mean()), sem, n, float(sum(lengths) / n))


def sampled_kl(generator, prompts: Sequence[str], *, policy: torch.nn.Module, reference: torch.nn.Module,
               samples: int, max_tokens: int, stop: Sequence[str], seed: int, batch_size: int,
               device: torch.device) -> KLEstimate:
    """`samples` responses per prompt from `generator` (the policy, as the evaluation generates with it), scored by
    `policy` and `reference` (causal LMs on `device`)."""
    outputs = generator.generate(list(prompts), n=int(samples), temperature=1.0, top_p=1.0,
                                 max_tokens=int(max_tokens), stop=tuple(stop), seed=int(seed))
    sequences = [(generator.encode(prompt), completion.token_ids)
                 for prompt, completions in zip(prompts, outputs, strict=True) for completion in completions]
    sequences = [(p, r) for p, r in sequences if r]
    pad = generator.tokenizer.pad_token_id
    pad = pad if pad is not None else generator.tokenizer.eos_token_id
    kwargs = dict(pad_token_id=int(pad), batch_size=int(batch_size), device=device)
    return kl_estimate(sequence_logps(policy, sequences, **kwargs), sequence_logps(reference, sequences, **kwargs),
                       [len(r) for _, r in sequences])
