"""Granularity: how a response is cut into the segments that ADPO compares position by position.

A granularity string is one of
    "sequence"     one segment per response (DPO)
    "token"        one segment per token (ADPO token level)
    "static:K"     windows of K tokens; ceil(T/K) segments
    "adaptive:M"   M near-equal contiguous segments (first T mod M get one token more, as torch.tensor_split)

Everything here is vectorised over the batch: segment ids come from the token's position inside its response,
never from a Python loop over tokens or segments, and no shape depends on the data (no host sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("sequence", "token", "static", "adaptive")


@dataclass(frozen=True)
class Granularity:
    kind: str
    size: int = 1  # window K for "static", segment count M for "adaptive"

    def __str__(self) -> str:
        return self.kind if self.kind in ("sequence", "token") else f"{self.kind}:{self.size}"

    def num_segments_bound(self, width: int) -> int:
        """Static upper bound on segments per response for tensors `width` tokens wide."""
        if self.kind == "sequence":
            return 1
        if self.kind == "adaptive":
            return self.size
        window = 1 if self.kind == "token" else self.size
        return max(1, math.ceil(width / window))


def parse_granularity(spec: str | Granularity) -> Granularity:
    if isinstance(spec, Granularity):
        return spec
    text = str(spec).strip().lower()
    if text in ("sequence", "token"):
        return Granularity(text)
    kind, sep, size = text.partition(":")
    if kind in ("static", "adaptive") and sep and size.isdigit() and int(size) >= 1:
        return Granularity(kind, int(size))
    raise ValueError(
        f"granularity {spec!r} is not one of 'sequence', 'token', 'static:K' or 'adaptive:M' (K, M >= 1)"
    )


def response_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each token inside its response (0-based; -1 outside) and the response lengths.

    The mask may be right-padded or start at any offset (prompt tokens masked out); it must be contiguous.
    """
    mask = mask.bool()
    positions = torch.cumsum(mask.long(), dim=-1) - 1
    return torch.where(mask, positions, torch.full_like(positions, -1)), mask.sum(-1)


def segment_ids(mask: torch.Tensor, granularity: Granularity, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Segment index of each response token ([B, T]); -1 for tokens outside the response.

    `lengths` overrides the response length used by the adaptive split (the `min` length mode truncates).
    """
    positions, natural_lengths = response_positions(mask)
    lengths = natural_lengths if lengths is None else lengths
    inside = positions >= 0
    if granularity.kind == "sequence":
        ids = torch.zeros_like(positions)
    elif granularity.kind == "token":
        ids = positions
    elif granularity.kind == "static":
        ids = torch.div(positions, granularity.size, rounding_mode="floor")
    else:
        m = granularity.size
        length = lengths.unsqueeze(-1)
        short = torch.div(length, m, rounding_mode="floor")  # tokens in a short segment
        extra = length - short * m  # the first `extra` segments hold short + 1 tokens
        head = extra * (short + 1)  # tokens covered by the long segments
        in_head = torch.div(positions, short + 1, rounding_mode="floor")
        in_tail = extra + torch.div(positions - head, short.clamp(min=1), rounding_mode="floor")
        ids = torch.where(positions < head, in_head, in_tail)
    return torch.where(inside, ids, torch.full_like(ids, -1))


def segment_counts(lengths: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Number of segments of responses with these lengths (adaptive: always M, some may be empty)."""
    if granularity.kind == "sequence":
        return torch.ones_like(lengths)
    if granularity.kind == "adaptive":
        return torch.full_like(lengths, granularity.size)
    window = 1 if granularity.kind == "token" else granularity.size
    return torch.div(lengths + window - 1, window, rounding_mode="floor")


def segment_sums(values: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum `values` [B, T] into `num_segments` columns by segment id; ids of -1 are dropped."""
    # Column `num_segments` is a bin for dropped tokens, sliced off afterwards.
    safe = torch.where(ids >= 0, ids, torch.full_like(ids, num_segments)).clamp(max=num_segments)
    out = values.new_zeros(values.shape[0], num_segments + 1)
    out = out.scatter_add(1, safe, values)
    return out[:, :num_segments]
