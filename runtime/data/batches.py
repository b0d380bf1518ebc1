"""Batches: a split held in memory as uint8 tensors, as shuffled, sharded, augmented float batches."""
from __future__ import annotations

import hashlib
import struct

import torch
import torch.nn.functional as F

from netspec.data_spec import Augment

def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by a stable hash of `parts`."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def augment_batch(x: torch.Tensor, augment: Augment, gen: torch.Generator) -> torch.Tensor:
    """Pad + random crop and random horizontal flip of a uint8 (B, C, H, W) batch, on its device.

    The random draws (B-sized) come from the CPU generator `gen`, so results do not depend on the device."""
    b, _, h, w = x.shape
    dev = x.device
    p = augment.crop_pad
    if p:
        dy, dx = torch.randint(0, 2 * p + 1, (2, b), generator=gen).to(dev)
        windows = F.pad(x, (p, p, p, p)).unfold(2, h, 1).unfold(3, w, 1)  # B, C, 2p+1, 2p+1, H, W (a view)
        x = windows[torch.arange(b, device=dev), :, dy, dx]
    if augment.flip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def normalisation(mean: list[float], std: list[float], channels: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) that turn uint8 pixels into (x / 255 - mean) / std with one multiply-add, per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels) or (std_t <= 0).any():
        raise ValueError(f"mean and std need 1 or {channels} values, std > 0")
    return ((1.0 / (255.0 * std_t)).reshape(1, -1, 1, 1).to(device),
            (-mean_t / std_t).reshape(1, -1, 1, 1).to(device))


def shard_size(n: int, rank: int, world_size: int, drop_last: bool) -> int:
    """How many of an epoch's n examples a rank sees (equal on every rank with drop_last; else the remainder
    goes to the lower ranks)."""
    base, rem = divmod(n, world_size)
    return base if drop_last else base + (rank < rem)


def batch_count(size: int, batch_size: int, drop_last: bool) -> int:
    return size // batch_size if drop_last else -(-size // batch_size)


class Batches:
    """One epoch of a split as (float32 normalised images, int64 labels) batches on `device`.

    Training (`train=True`): the order is a permutation seeded by (seed, epoch), the same on
    every rank; each rank takes every world_size-th example of it, and with `drop_last` every rank has
    the same number of batches. Augmentation runs on the device, seeded by (seed, epoch, rank,
    batch index). Test: the data in order, no augmentation, shards as even as possible (the
    remainder goes to the lower ranks). `batch_size` is per rank.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool,
                 mean: list[float], std: list[float], augment: Augment | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None):
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4 or y.shape != x_uint8.shape[:1]:
            raise ValueError("Batches wants uint8 images (N, C, H, W) and N labels")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of {world_size}")
        channels = x_uint8.shape[1]
        self.x, self.y = x_uint8, y.to(torch.int64)
        self.batch_size, self.train = batch_size, train
        self.augment = augment if train and augment and (augment.crop_pad or augment.flip) else None
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.epoch, self.skip = 0, 0
        self._scale, self._shift = normalisation(mean, std, channels, self.device)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses, and how many of its first
        batches to leave out (resuming mid-epoch: the rest are the same batches an uninterrupted run sees)."""
        self.epoch, self.skip = epoch, skip

    def _shard_size(self) -> int:
        return shard_size(len(self.y), self.rank, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return batch_count(self._shard_size(), self.batch_size, self.drop_last)

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=_generator(self.seed, self.epoch)) if self.train else torch.arange(n)
        # every world_size-th example: together the ranks' b-th batches are the single-process run's b-th
        # batch of world_size × batch_size examples, so DDP and one process see the same data step for step
        mine = order[self.rank::self.world_size][: self._shard_size()].to(self.x.device)
        for b in range(self.skip if self.train else 0, len(self)):
            idx = mine[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.x.index_select(0, idx).to(self.device, non_blocking=True)
            y = self.y.index_select(0, idx.to(self.y.device)).to(self.device, non_blocking=True)
            if self.augment:
                x = augment_batch(x, self.augment, _generator(self.seed, self.epoch, self.rank, b))
            yield x.to(torch.float32).mul_(self._scale).add_(self._shift), y
