"""The unlabelled train set for SimSiam: each file decoded when first met and cached downscaled in memory the
loader workers share (dataset/shared_cache.py).

The DataLoader asks for whole batches (`__getitems__`), so the augmentation runs once per batch in the
loader worker (training/augment.py) rather than once per image. With `on_device` the workers only crop: the
batch is [crops of view 0, crops of view 1] in uint8 (a quarter of float32's bytes to transfer), and the model
finishes the views on its device (SimSiam.on_after_batch_transfer).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from dataset.reader import DatasetError, Skipped
from dataset.shared_cache import SharedImageCache
from dataset.stream import StreamedImages, StreamLoader
from training.augment import SimSiamAugment


class PretrainImages(SharedImageCache):
    """`dataset.__getitems__(indices)` -> [view0 Nx3xSxS, view1 Nx3xSxS] (float32, or uint8 crops with
    `on_device`); `dataset[i]` -> the same for one image.

    Kept at a shorter side of `2 * input_size`: the smallest crop (min_scale 0.2, i.e. 0.45 of the side) stays at
    about native resolution.
    """

    def __init__(
        self,
        paths: list[Path],
        input_size: int,
        augment: SimSiamAugment,
        cache_mb: int,
        skipped: Skipped,
        threads: int = 4,  # unused: images are decoded in the loader workers as they are met
        on_device: bool = False,
    ) -> None:
        super().__init__(paths, 2 * input_size, cache_mb, what="train")
        self.augment = augment
        self.on_device = on_device

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        images = [self.pixels(i) for i in indices]
        if self.on_device:
            return list(self.augment.crops(images).chunk(2))
        return self.augment.views(images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return [v[0] for v in self.__getitems__([i])]


def collate_views(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The batch is already [view0, view1] (built by `__getitems__`); the DataLoader needs a collate_fn anyway."""
    return batch


class RankShare(Sampler[int]):
    """This rank's fixed share of the train set, in a new order every epoch.

    Lightning's DistributedSampler deals the whole shuffled set out again every epoch, so under DDP every rank
    meets nearly every image within a few epochs and decodes and caches all of them: a node holds devices x the
    cache and does devices x the decoding. Here the set is dealt out once (a seeded permutation, so each share
    mixes the classes) and each rank shuffles only its own share: it decodes and caches 1/world of the images.
    Equal shares (the remainder is left out, as drop_last does), so every rank makes the same number of steps.
    The rank is read when iterating, inside the training process.
    """

    def __init__(self, n: int, world: int, seed: int) -> None:
        self.n, self.world, self.seed = n, world, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.world

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at the start of every epoch
        self.epoch = epoch

    def indices(self, rank: int) -> torch.Tensor:
        dealt = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        share = dealt[rank :: self.world][: len(self)]
        order = torch.randperm(len(share), generator=torch.Generator().manual_seed(self.seed + 1 + self.epoch))
        return share[order]

    def __iter__(self) -> Iterator[int]:
        rank = 0
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            if dist.get_world_size() != self.world:
                raise RuntimeError(f"{dist.get_world_size()} training processes; the sampler was made for {self.world}")
        return iter(self.indices(rank).tolist())


def pretrain_loader(
    data: PretrainImages, batch_size: int, num_workers: int, pin_memory: bool = False, world: int = 1, seed: int = 0
) -> DataLoader:
    """The pretraining DataLoader (training, and the benches that time or probe it): this rank's share, shuffled,
    full batches only."""
    workers = min(num_workers, os.cpu_count() or 1)
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=RankShare(len(data), world, seed),
        drop_last=True,  # a last batch of 1 would break BatchNorm; batch <= len(data) keeps >= 1 step
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        collate_fn=collate_views,
    )


class BatchViews:
    """collate_fn of a streamed train set: the batch's decoded images -> [view0, view1] (or uint8 crops with
    `on_device`), in the loader worker; an image that failed to decode (None) is left out of its batch."""

    def __init__(self, augment: SimSiamAugment, on_device: bool) -> None:
        self.augment = augment
        self.on_device = on_device

    def __call__(self, images: list[torch.Tensor | None]) -> list[torch.Tensor]:
        images = [im for im in images if im is not None]
        if len(images) < 2:
            raise DatasetError("a whole batch of the train shards failed to decode; remake them with dataset.shards")
        if self.on_device:
            return list(self.augment.crops(images).chunk(2))
        return self.augment.views(images)


def stream_loader(
    data: StreamedImages, batch_size: int, num_workers: int, augment: SimSiamAugment, on_device: bool, pin_memory: bool
) -> StreamLoader:
    """The pretraining loader of a streamed train set (LitData shards): LitData shuffles and splits the chunks
    over ranks and workers; full batches only."""
    workers = min(num_workers, os.cpu_count() or 1)
    return StreamLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=BatchViews(augment, on_device),
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
