"""DPO, ADPO, cDPO and cADPO as one pure function of per-token log-ratios (see docs/method.md).

    DPO      L = -log s( b * (sum_t d^w_t - sum_t d^l_t) )
    ADPO     L = -sum_i log s( b * (S^w(i) - S^l(i)) ),  S(i) = sum of (a_t *) d_t over segment i

DPO is ADPO with one segment; cDPO/cADPO are DPO/ADPO with token weights a_t. No model, no I/O, no Python loop
over tokens or segments: the same code path serves every method, so a granularity costs one scatter_add.

What is applied to each paired segment's log-ratio margin h_i = S^w(i) - S^l(i) is a named segment loss
(`method.segment_loss`, default "sigmoid": -log s(b * h_i)); a new objective at every granularity is one function
registered here with @segment_loss("name") and a method config that names it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from adpo.segments import Granularity, parse_granularity, response_positions, segment_counts, segment_ids, segment_sums

LENGTH_MODES = ("max", "min")
# A beta-scaled margin past which a log-sigmoid has nearly stopped learning: its slope s(-3) = 0.047 < 0.05. The
# `*/saturated` metrics count pairs (DPO's sequence margin) and paired segments (each segment's margin) past it.
SATURATED_MARGIN = 3.0
REDUCTIONS = ("sum", "mean", "grid")

SegmentLoss = Callable[[torch.Tensor, float], torch.Tensor]
SEGMENT_LOSSES: dict[str, SegmentLoss] = {}


def segment_loss(name: str) -> Callable[[SegmentLoss], SegmentLoss]:
    """Register fn(h, beta) -> elementwise loss of the log-ratio margins h (any shape) under `name`."""

    def register(fn: SegmentLoss) -> SegmentLoss:
        if name in SEGMENT_LOSSES:
            raise ValueError(f"segment loss {name!r} is registered twice")
        SEGMENT_LOSSES[name] = fn
        return fn

    return register


def get_segment_loss(name: str) -> SegmentLoss:
    try:
        return SEGMENT_LOSSES[name]
    except KeyError:
        raise ValueError(f"method.segment_loss: unknown segment loss {name!r}; known: {sorted(SEGMENT_LOSSES)}") \
            from None


@segment_loss("sigmoid")
def sigmoid_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """The Bradley-Terry log-likelihood of DPO and ADPO: -log s(b * h)."""
    return -F.logsigmoid(beta * h)


def per_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label_t) for logits [B, T, V] and labels [B, T], without materialising a [B, T, V] log-softmax."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _truncate_to_shared_length(mask_w: torch.Tensor, mask_l: torch.Tensor):
    pos_w, len_w = response_positions(mask_w)
    pos_l, len_l = response_positions(mask_l)
    shared = torch.minimum(len_w, len_l).unsqueeze(-1)
    return (pos_w >= 0) & (pos_w < shared), (pos_l >= 0) & (pos_l < shared)


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float,
    granularity: str | Granularity = "sequence",
    chosen_weights: torch.Tensor | None = None,
    rejected_weights: torch.Tensor | None = None,
    length_mode: str = "max",
    reduction: str = "sum",
    segment_loss: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair preference loss [B] and per-pair metrics (each [B], detached).

    chosen_logratios/rejected_logratios: d_t = log pi(y_t) - log pi_ref(y_t), shapes [B, Tw] and [B, Tl]; the two
    widths may differ. Masks mark response tokens (contiguous, right-padded or at any offset). Weights, when given,
    multiply d_t before segments are summed. length_mode "max" pairs max(n_w, n_l) segments, the shorter response
    contributing S = 0; "min" truncates both responses to their shared length first. reduction "sum" adds the
    segment losses (the paper), "mean" divides by the number of paired segments, "grid" (token granularity only) is
    the official cDPO code's `losses.mean()` over its padded position grid: every one of the G = max(Tw, Tl) columns
    the log-ratios come in is a term, those outside both responses with margin 0, and the sum is divided by G (so
    the batch mean of these losses is that code's loss, for the prompt + response layout it pads to the longest row).
    segment_loss names the function applied to each paired segment's margin (SEGMENT_LOSSES).
    """
    if length_mode not in LENGTH_MODES:
        raise ValueError(f"length_mode must be one of {LENGTH_MODES}, got {length_mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    link = get_segment_loss(segment_loss)
    gran = parse_granularity(granularity)
    if reduction == "grid" and not (gran.kind == "token" or (gran.kind == "static" and gran.size == 1)):
        raise ValueError(f"reduction 'grid' (the official cDPO code's per-position mean) needs token granularity, "
                         f"got {gran}")
    mask_w, mask_l = chosen_mask.bool(), rejected_mask.bool()
    if length_mode == "min":
        mask_w, mask_l = _truncate_to_shared_length(mask_w, mask_l)

    zero_w, zero_l = torch.zeros_like(chosen_logratios), torch.zeros_like(rejected_logratios)
    d_w = torch.where(mask_w, chosen_logratios, zero_w)
    d_l = torch.where(mask_l, rejected_logratios, zero_l)
    weighted_w = d_w if chosen_weights is None else d_w * chosen_weights.to(d_w.dtype)
    weighted_l = d_l if rejected_weights is None else d_l * rejected_weights.to(d_l.dtype)

    len_w, len_l = mask_w.sum(-1), mask_l.sum(-1)
    num_cols = max(gran.num_segments_bound(d_w.shape[-1]), gran.num_segments_bound(d_l.shape[-1]))
    seg_w = segment_sums(weighted_w, segment_ids(mask_w, gran, len_w), num_cols)
    seg_l = segment_sums(weighted_l, segment_ids(mask_l, gran, len_l), num_cols)

    paired = torch.maximum(segment_counts(len_w, gran), segment_counts(len_l, gran))
    valid = torch.arange(num_cols, device=paired.device).unsqueeze(0) < paired.unsqueeze(-1)
    margins = seg_w - seg_l
    segment_losses = torch.where(valid, link(margins, beta), torch.zeros_like(margins))
    loss = segment_losses.sum(-1)
    if reduction == "mean":
        loss = loss / paired.clamp(min=1).to(loss.dtype)
    elif reduction == "grid":
        grid = max(d_w.shape[-1], d_l.shape[-1])
        # Columns outside both responses: margin 0, a constant (log 2 for the sigmoid) without gradient.
        outside = (grid - paired).to(loss.dtype)
        loss = (loss + outside * link(torch.zeros((), dtype=loss.dtype, device=loss.device), beta)) / grid

    with torch.no_grad():
        reward_w = beta * d_w.sum(-1)
        reward_l = beta * d_l.sum(-1)
        wins = ((seg_w > seg_l) & valid).sum(-1).to(loss.dtype)
        saturated = ((beta * margins > SATURATED_MARGIN) & valid).sum(-1).to(loss.dtype)
        metrics = {
            "rewards/chosen": reward_w,
            "rewards/rejected": reward_l,
            "rewards/margins": reward_w - reward_l,
            "rewards/accuracies": (reward_w > reward_l).to(loss.dtype),
            "rewards/saturated": (reward_w - reward_l > SATURATED_MARGIN).to(loss.dtype),
            "segments/win_fraction": wins / paired.clamp(min=1).to(loss.dtype),
            "segments/per_pair": paired.to(loss.dtype),
            "segments/saturated": saturated / paired.clamp(min=1).to(loss.dtype),
        }
    return loss, metrics
