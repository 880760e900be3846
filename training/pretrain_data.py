"""The unlabelled train set for SimSiam: each file decoded when first met and cached downscaled in memory the
loader workers share (dataset/shared_cache.py).

The DataLoader asks for whole batches (`__getitems__`), so the augmentation runs once per batch in the
loader worker (training/augment.py) rather than once per image. With `on_device` the workers only crop: the
batch is [crops of view 0, crops of view 1] in uint8 (a quarter of float32's bytes to transfer), and the model
finishes the views on its device (SimSiam.on_after_batch_transfer).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

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


def pretrain_loader(data: PretrainImages, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The pretraining DataLoader (training, and the benches that time or probe it): shuffled, full batches only."""
    workers = min(num_workers, os.cpu_count() or 1)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
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
