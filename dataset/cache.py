"""Decode each image once and keep a downscaled uint8 copy in memory, within a budget.

Used for the unlabelled train images (SimSiam pretraining) and the labelled `valid` images (the refine stage):
each file is decoded once at the start (JPEGs at reduced DCT scale), its shorter side downscaled to `keep_side`
and kept as uint8 pixels while `cache_mb` lasts; the rest are decoded from disk on access. The scan also finds
unreadable files before any training step.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import numpy as np
import torch
from PIL import Image

from dataset.reader import DatasetError, Skipped
from handler.eval_preset import ImageDecodeError, decode_image

log = logging.getLogger(__name__)


def downscale(im: Image.Image, side: int) -> Image.Image:
    """The image with its shorter side at most `side` (bilinear)."""
    w, h = im.size
    if min(w, h) <= side:
        return im
    s = side / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 3xHxW."""
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class ImageCache:
    """`cache.pixels(i)` -> uint8 3xHxW of the i-th *readable* path (shorter side <= keep_side);
    `cache.kept[i]` is its index in the `paths` given, `cache.paths[i]` its file."""

    def __init__(
        self, paths: list[Path], keep_side: int, cache_mb: int, skipped: Skipped, threads: int = 4, what: str = "train"
    ) -> None:
        self.keep_side = keep_side
        self.items: list[torch.Tensor | Path] = []
        self.kept: list[int] = []
        budget = cache_mb * 2**20
        self.cached_bytes = 0

        def load(p: Path) -> Image.Image | ImageDecodeError:
            try:
                return downscale(decode_image(p, min_side=keep_side), keep_side)
            except ImageDecodeError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            # pool.map is lazy in order; chunking keeps at most ~threads*4 decoded images alive at once.
            for start in range(0, len(paths), 64):
                chunk = paths[start : start + 64]
                for j, (p, r) in enumerate(zip(chunk, pool.map(load, chunk))):
                    if isinstance(r, ImageDecodeError):
                        skipped.add(str(p), str(r))
                        continue
                    self.kept.append(start + j)
                    pixels = to_uint8_tensor(r)
                    if self.cached_bytes + pixels.nbytes <= budget:
                        self.items.append(pixels)
                        self.cached_bytes += pixels.nbytes
                    else:
                        self.items.append(p)
        self.paths = [paths[i] for i in self.kept]
        if not self.items:
            raise DatasetError(f"none of the {len(paths)} {what} images could be read (see the warnings above)")
        log.info(
            "%s images: %d readable, %d cached in memory (%.0f MiB of %d MiB budget)",
            what,
            len(self.items),
            sum(isinstance(i, torch.Tensor) for i in self.items),
            self.cached_bytes / 2**20,
            cache_mb,
        )

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: list[int]) -> Self:
        """The same cache restricted to `indices` (into the readable images): shares the pixels, decodes nothing."""
        sub = copy.copy(self)
        sub.items = [self.items[i] for i in indices]
        sub.kept = [self.kept[i] for i in indices]
        sub.paths = [self.paths[i] for i in indices]
        sub.cached_bytes = sum(item.nbytes for item in sub.items if isinstance(item, torch.Tensor))
        return sub

    def pixels(self, i: int) -> torch.Tensor:
        """uint8 3xHxW, shorter side at most keep_side."""
        item = self.items[i]
        if isinstance(item, torch.Tensor):
            return item
        try:
            return to_uint8_tensor(downscale(decode_image(item, min_side=self.keep_side), self.keep_side))
        except ImageDecodeError:
            # Changed on disk since the scan: fall back to a neighbour rather than crash an epoch.
            log.warning("%s became unreadable during training; using another image", item)
            return self.pixels((i + 1) % len(self.items))
