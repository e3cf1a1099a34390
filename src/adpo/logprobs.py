"""Per-token log-probs of given labels under a causal LM without ever holding its [batch, length, vocab] logits.

At the paper's vocabularies (102k-262k) one micro-batch of 2 pairs x 1024 tokens has 0.5-1 G logits: several GB per
copy, and log-softmax, its gradient and the fp32 upcast make several copies. A label's log-prob needs only the
logsumexp over the vocabulary and one gathered logit, so every stage (policy in training, the reference cache, the
cDPO weights stage's two adapters, SFT) goes through here:

    hidden = final_hidden_states(model, input_ids, attention_mask)       # [B, L, H]; the model's own logits: 1 column
    head = OutputHead.of(model)                                          # hidden -> float32 logits, as the model does
    logps = label_logps(hidden[sel], labels[sel], head, chunk_size=256)  # [N], only the positions asked for

Positions are processed `chunk_size` at a time and each chunk's logits are recomputed in backward (a fused
linear + log-softmax autograd function), so only one chunk's logits exist at any moment, forward or backward.
chunk_size=None is the plain computation (all selected positions at once), kept for comparison and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DEFAULT_CHUNK_SIZE = 256


def unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside a DeepSpeed engine and/or a peft model (LoRA layers stay in place)."""
    while True:
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif type(model).__name__ == "DeepSpeedEngine" or (hasattr(model, "module") and hasattr(model, "optimizer")):
            model = model.module
        else:
            return model


@dataclass(frozen=True)
class OutputHead:
    """hidden [..., H] -> float32 logits [..., V] exactly as the causal LM's forward computes them."""

    projection: torch.nn.Module  # the output embeddings, always called as a module: ZeRO-3 gathers its weight on call
    softcap: float | None = None  # Gemma-2/3 text models: cap * tanh(logits / cap)

    @classmethod
    def of(cls, model: torch.nn.Module) -> OutputHead:
        lm = unwrap_causal_lm(model)
        projection = lm.get_output_embeddings()
        if projection is None:
            raise ValueError(f"{type(lm).__name__} has no output embeddings: not a causal LM")
        return cls(projection, getattr(lm.config, "final_logit_softcapping", None))

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return _capped(self.projection(hidden).float(), self.softcap)

    def chunked_logps(self, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """label_logps's chunked path: one call of the projection module whatever the number of chunks (under
        ZeRO-3 every rank must gather the weight the same number of times), inside which _ChunkedLabelLogps computes
        chunk after chunk, and again in backward."""
        projection = self.projection
        if type(projection) is not torch.nn.Linear:
            raise ValueError(f"log-probs in chunks need the output embeddings to be a torch.nn.Linear, got "
                             f"{type(projection).__name__} (an adapter on lm_head?): set the logps chunk size to null")

        def forward(h: torch.Tensor) -> torch.Tensor:
            return _ChunkedLabelLogps.apply(h, projection.weight, projection.bias, labels, chunk_size, self.softcap)

        own = projection.__dict__.get("forward")  # an instance-level forward someone installed (accelerate's hooks)
        projection.forward = forward  # the module's hooks (ZeRO-3's gather and release) run around it
        try:
            return projection(hidden)
        finally:
            if own is None:
                del projection.forward
            else:
                projection.forward = own


def _capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


class _ChunkedLabelLogps(torch.autograd.Function):
    """log softmax(cap(h W^T + b))[y] in chunks of rows; backward recomputes each chunk's logits.

    Precision follows the plain path: logits in the weight's dtype, upcast to float32 for the softmax; the logits'
    gradient cast back to the weight's dtype for the matmuls (the weight's gradient is summed over chunks in float32).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, softcap):
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk_size):
            z = _capped(torch.nn.functional.linear(hidden[s:s + chunk_size], weight, bias).float(), softcap)
            lse[s:s + chunk_size] = torch.logsumexp(z, dim=-1)
            out[s:s + chunk_size] = z.gather(-1, labels[s:s + chunk_size, None]).squeeze(-1) - lse[s:s + chunk_size]
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_size, ctx.softcap = chunk_size, softcap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        chunk_size, softcap = ctx.chunk_size, ctx.softcap
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_bias else None
        for s in range(0, hidden.shape[0], chunk_size):
            h, y, g = hidden[s:s + chunk_size], labels[s:s + chunk_size], grad_out[s:s + chunk_size].float()
            z = _capped(torch.nn.functional.linear(h, weight, bias).float(), softcap)
            # d/dz of (z_y - logsumexp z) is onehot(y) - softmax(z)
            grad_z = torch.exp(z - lse[s:s + chunk_size, None]).mul_(-g[:, None])
            grad_z.scatter_add_(1, y[:, None], g[:, None])
            if softcap is not None:  # z = cap * tanh(x / cap): dz/dx = 1 - (z / cap)^2
                grad_z.mul_(1.0 - (z / softcap) ** 2)
            del z
            grad_x = grad_z.to(weight.dtype)
            if want_hidden:
                grad_hidden[s:s + chunk_size] = grad_x @ weight
            if want_weight:
                grad_weight += (grad_x.t() @ h).float()
            if want_bias:
                grad_bias += grad_z.sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None)


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads, [B, L, H], from one call of the model itself.

    The call goes through whatever wraps the model (DeepSpeed engine, peft), so its hooks, adapters and checkpointing
    apply; `logits_to_keep=1` makes the head project only the last position. The decoder's output is taken by a
    forward hook.
    """
    decoder = unwrap_causal_lm(model).get_decoder()
    captured: list[torch.Tensor] = []

    def keep(_module, _args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = decoder.register_forward_hook(keep)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected one call of {type(decoder).__name__} per forward, saw {len(captured)}")
    return captured[0]


def _picked_logps(hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]):
    logits = head(hidden)
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def label_logps(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead, *,
                chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """log softmax(head(hidden))[label] for hidden [N, H] and labels [N] -> float32 [N], `chunk_size` rows at a time.

    Differentiable w.r.t. hidden (and the head's parameters when they require grad), with the gradients of the plain
    computation; a chunk's logits are recomputed in backward instead of being kept."""
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and labels [N], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if chunk_size is None:
        return _picked_logps(hidden, labels, head)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"logps chunk size must be a positive number of positions or null, got {chunk_size!r}")
    return head.chunked_logps(hidden, labels, chunk_size)


def contrastive_label_probs(hidden_pos: torch.Tensor, hidden_neg: torch.Tensor, labels: torch.Tensor,
                            head: Callable[[torch.Tensor], torch.Tensor], *, lam: float,
                            chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """cDPO's p_CE = softmax((1 + lam) z+ - lam z-)[label] for two models' hidden states [N, H] -> [N] (no grad).

    Both models' logits exist for one chunk of positions at a time."""
    n = hidden_pos.shape[0]
    step = max(n if chunk_size is None else chunk_size, 1)
    pieces = [hidden_pos.new_zeros(0, dtype=torch.float32)]
    with torch.no_grad():
        for s in range(0, n, step):
            z = (1.0 + lam) * head(hidden_pos[s:s + step]) - lam * head(hidden_neg[s:s + step])
            pieces.append(z.gather(-1, labels[s:s + step, None]).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.cat(pieces).exp().clamp_(0.0, 1.0)


def shifted_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  positions: torch.Tensor, *, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """log p(token j+1 | tokens <= j) where `positions` [B, L-1] is true, 0 elsewhere: float32 [B, L-1]."""
    hidden = final_hidden_states(model, input_ids, attention_mask)[:, :-1]
    flat = label_logps(hidden[positions], input_ids[:, 1:][positions], OutputHead.of(model), chunk_size=chunk_size)
    return torch.zeros(positions.shape, dtype=flat.dtype, device=flat.device).masked_scatter(positions, flat)


def completion_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor, *, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled tokens (label -100: not scored), transformers' causal-LM loss."""
    positions = labels[:, 1:] != -100
    return -shifted_logps(model, input_ids, attention_mask, positions, chunk_size=chunk_size)[positions].mean()
