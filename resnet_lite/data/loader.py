"""A loader that keeps a whole split on the training device and hands out batches of it, sharded over processes.

    loader = DeviceLoader(ds.train, 128, device="cuda", rank=rank, world_size=world, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...         # uint8 N x 3 x H x W and int64 N, already on the device
"""
import math

import numpy as np
import torch

from ..errors import UserError
from .sources import Split

__all__ = ["DeviceLoader"]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


class DeviceLoader:
    """Batches of a split that lives on `device`; `batch_size` is global (all ranks together).

    Train: each epoch one permutation from a CPU generator seeded by (seed, epoch), the same on every rank;
    global batch k is cut into world_size equal contiguous parts and rank r takes part r, so ranks see disjoint
    images and the same number of steps, ceil(N / batch_size) (floor with drop_last); the final partial batch
    drops its last (size mod world_size) images, and is skipped when smaller than world_size.
    Eval (train=False): no shuffle; rank r iterates its contiguous shard (shard sizes differ by at most 1) in
    batches of ceil(batch_size / world_size), so the ranks together see every image exactly once. Ranks can
    then differ by one batch: reduce eval metrics once at the end, not per batch.
    """

    def __init__(self, split: Split, batch_size: int, *, device="cpu", train: bool = True,
                 rank: int = 0, world_size: int = 1, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if train and batch_size % world_size:
            raise UserError(f"batch size {batch_size} does not split over {world_size} processes; "
                            f"use a multiple of {world_size}")
        self.images = split.images.to(device)  # the one host-to-device copy, uint8
        self.labels = split.labels.to(device)
        self.batch_size, self.train, self.rank, self.world_size = batch_size, train, rank, world_size
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.local_batch_size = batch_size // world_size if train else math.ceil(batch_size / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batch_sizes(self) -> list[int]:
        n, b, w = len(self.labels), self.batch_size, self.world_size
        if self.train:
            sizes = [b // w] * (n // b)
            if not self.drop_last and n % b >= w:
                sizes.append(n % b // w)
            return sizes
        lo, hi = self._shard()
        return [min(self.local_batch_size, hi - s) for s in range(lo, hi, self.local_batch_size)]

    def _shard(self) -> tuple[int, int]:
        n, w, r = len(self.labels), self.world_size, self.rank
        return r * n // w, (r + 1) * n // w

    def __len__(self) -> int:
        return len(self._batch_sizes())

    @property
    def num_samples(self) -> int:
        return sum(self._batch_sizes())

    def local_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (CPU int64)."""
        if not self.train:
            return torch.arange(*self._shard())
        n, b, w, r = len(self.labels), self.batch_size, self.world_size, self.rank
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(n, generator=g)
        full = n // b
        parts = [perm[: full * b].view(full, w, b // w)[:, r].reshape(-1)]
        sizes = self._batch_sizes()
        if len(sizes) > full:
            parts.append(perm[full * b + r * sizes[-1] : full * b + (r + 1) * sizes[-1]])
        return torch.cat(parts)

    def __iter__(self):
        if not self.train:
            lo, _ = self._shard()
            for size in self._batch_sizes():
                yield self.images[lo : lo + size], self.labels[lo : lo + size]
                lo += size
            return
        # one host-to-device copy of the epoch's indices; per-batch slicing and gathers then stay on the device
        index = self.local_indices().to(self.images.device, non_blocking=True)
        start = 0
        for size in self._batch_sizes():
            idx = index[start : start + size]
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
            start += size
