"""The unlabelled train set for SimSiam: decode each file once, keep a downscaled copy in memory.

Each image is decoded once at the start of the run (JPEGs at reduced DCT scale), downscaled so its
shorter side is `2 * input_size` and kept as uint8 pixels while the cache budget lasts; the rest are
decoded from disk on access. The factor 2 keeps the smallest crop (min_scale 0.2, i.e. 0.45 of the
side) at about native resolution. The scan also finds unreadable files before training starts.

The DataLoader asks for whole batches (`__getitems__`), so the augmentation runs once per batch in the
loader worker (training/augment.py) rather than once per image.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from handler.eval_preset import ImageDecodeError, decode_image
from training.augment import SimSiamAugment
from training.data import DatasetError, Skipped

log = logging.getLogger(__name__)


def _downscale(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    if min(w, h) <= side:
        return im
    s = side / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)


class PretrainImages(Dataset):
    """`dataset.__getitems__(indices)` -> [view0 Nx3xSxS, view1 Nx3xSxS]; `dataset[i]` -> the same for one image."""

    def __init__(
        self,
        paths: list[Path],
        input_size: int,
        augment: SimSiamAugment,
        cache_mb: int,
        skipped: Skipped,
        threads: int = 4,
    ) -> None:
        self.keep_side = 2 * input_size
        self.augment = augment
        self.items: list[torch.Tensor | Path] = []
        budget = cache_mb * 2**20
        self.cached_bytes = 0

        def load(p: Path) -> Image.Image | ImageDecodeError:
            try:
                return _downscale(decode_image(p, min_side=self.keep_side), self.keep_side)
            except ImageDecodeError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            # pool.map is lazy in order; chunking keeps at most ~threads*4 decoded images alive at once.
            for start in range(0, len(paths), 64):
                chunk = paths[start : start + 64]
                for p, r in zip(chunk, pool.map(load, chunk)):
                    if isinstance(r, ImageDecodeError):
                        skipped.add(str(p), str(r))
                        continue
                    pixels = _to_tensor(r)
                    if self.cached_bytes + pixels.nbytes <= budget:
                        self.items.append(pixels)
                        self.cached_bytes += pixels.nbytes
                    else:
                        self.items.append(p)
        if not self.items:
            raise DatasetError(f"none of the {len(paths)} train images could be read (see the warnings above)")
        n_cached = sum(isinstance(i, torch.Tensor) for i in self.items)
        log.info(
            "train images: %d readable, %d cached in memory (%.0f MiB of %d MiB budget)",
            len(self.items),
            n_cached,
            self.cached_bytes / 2**20,
            cache_mb,
        )

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, i: int) -> torch.Tensor:
        """uint8 3xHxW, shorter side at most 2 * input_size."""
        item = self.items[i]
        if isinstance(item, torch.Tensor):
            return item
        try:
            return _to_tensor(_downscale(decode_image(item, min_side=self.keep_side), self.keep_side))
        except ImageDecodeError:
            # Changed on disk since the scan: fall back to a cached neighbour rather than crash an epoch.
            log.warning("%s became unreadable during training; using another image", item)
            return self.pixels((i + 1) % len(self.items))

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        return self.augment.views([self.pixels(i) for i in indices])

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return [v[0] for v in self.__getitems__([i])]


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


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
