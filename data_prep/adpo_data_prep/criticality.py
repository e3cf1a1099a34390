"""cDPO critical-token estimation (method.md, "cDPO contrastive estimation").

With logits z+ of a model fine-tuned on correct answers and z- of one fine-tuned on wrong answers,
    p_CE(y_t) = softmax_v( (1 + lambda) z+_t - lambda z-_t )[y_t]
is high where the "good" model likes token y_t more than the "bad" one. A rejected token's weight is
a^l_t = 1 - p_CE(y^l_t) (critical tokens of a wrong answer weigh most); a chosen token's, optionally, p_CE(y^w_t).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adpo.data.tokenize import EncodedResponse, collate_responses
from adpo.logprobs import DEFAULT_CHUNK_SIZE, OutputHead, contrastive_label_probs, final_hidden_states
from adpo.losses import per_token_logps
from adpo.progress import Progress


def contrastive_token_probs(pos_logits: torch.Tensor, neg_logits: torch.Tensor, labels: torch.Tensor,
                            lam: float = 1.0) -> torch.Tensor:
    """p_CE of each label: logits [B, T, V] (the positions that predict `labels` [B, T]) -> probabilities [B, T]."""
    combined = (1.0 + lam) * pos_logits.float() - lam * neg_logits.float()
    return per_token_logps(combined, labels).exp().clamp_(0.0, 1.0)


def rejected_weights(p_ce: torch.Tensor) -> torch.Tensor:
    return 1.0 - p_ce


def chosen_weights(p_ce: torch.Tensor) -> torch.Tensor:
    return p_ce


@torch.no_grad()
def score_responses(model, encoded: Sequence[EncodedResponse], *, pad_id: int, positive: str = "positive",
                    negative: str = "negative", lam: float = 1.0, batch_size: int = 8,
                    device: torch.device | str = "cpu", progress: bool = False,
                    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                    progress_every: float | None = None) -> list[torch.Tensor]:
    """p_CE of every response token of every encoded (prompt, response), in input order.

    `model` is a peft model holding both adapters; each batch runs once under each, and the two models' logits exist
    only for `chunk_size` response positions at a time (adpo.logprobs). Responses are batched by length so that
    little is padded.
    """
    for e in encoded:
        if not e.prompt_ids:
            raise ValueError("a response needs at least one prompt token before it (the plain prompt's BOS)")
    model.eval()
    head = OutputHead.of(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list[torch.Tensor | None] = [None] * len(encoded)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    bar = Progress(len(encoded), "p_CE", "response", bar=progress, every_s=progress_every)
    for idx in batches:
        batch = {k: v.to(device) for k, v in collate_responses([encoded[i] for i in idx], pad_id).items()}
        # logits at position t predict token t + 1: the response's tokens are predicted from prompt_len - 1 on
        positions = torch.zeros_like(batch["input_ids"][:, 1:], dtype=torch.bool)
        for row, i in enumerate(idx):
            start = len(encoded[i].prompt_ids) - 1
            positions[row, start: start + len(encoded[i].response_ids)] = True
        hidden = {}
        for name in (positive, negative):
            model.set_adapter(name)
            hidden[name] = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])[:, :-1][positions]
        probs = contrastive_label_probs(hidden[positive], hidden[negative], batch["input_ids"][:, 1:][positions],
                                        head, lam=lam, chunk_size=chunk_size).cpu()
        for i, piece in zip(idx, probs.split([len(encoded[i].response_ids) for i in idx])):
            out[i] = piece
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]
