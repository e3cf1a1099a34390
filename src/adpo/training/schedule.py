"""Which pairs each rank sees at each step: a function of (seed, step) only, so a resumed run sees exactly the data
an uninterrupted one would, and a run on N ranks with accumulation A sees the same global batches as one on N*A/k
ranks with accumulation k."""

from __future__ import annotations

import torch


class DataSchedule:
    def __init__(self, num_pairs: int, *, micro_batch_size: int, accumulation: int, world_size: int, seed: int):
        self.num_pairs = num_pairs
        self.micro = micro_batch_size
        self.accumulation = accumulation
        self.world = world_size
        self.seed = seed
        self.global_batch = micro_batch_size * accumulation * world_size
        # Each epoch is a fresh permutation; the incomplete last global batch is dropped.
        self.steps_per_epoch = num_pairs // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num_pairs} pairs are fewer than one global batch of {self.global_batch} "
                             f"(micro_batch_size {micro_batch_size} x accumulation {accumulation} x {world_size} ranks)")
        self._perms: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_pairs, generator=g).tolist()}
        return self._perms[epoch]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Pair indices of each micro-batch that `rank` runs at optimizer step `step` (0-based)."""
        perm = self.permutation(self.epoch_of(step))
        start = (step % self.steps_per_epoch) * self.global_batch
        out = []
        for j in range(self.accumulation):
            chunk = start + (j * self.world + rank) * self.micro
            out.append(perm[chunk : chunk + self.micro])
        return out
