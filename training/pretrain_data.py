"""The unlabelled train set for SimSiam: decode each file once, keep a downscaled copy in memory.

Each image is decoded once at the start of the run (JPEGs at reduced DCT scale), downscaled so its
shorter side is `2 * input_size` and kept as uint8 pixels while the cache budget lasts; the rest are
decoded from disk on access. The factor 2 keeps the smallest crop (min_scale 0.2, i.e. 0.45 of the
side) at about native resolution. The scan also finds unreadable files before training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from handler.eval_preset import ImageDecodeError, decode_image
from training.data import DatasetError, Skipped

log = logging.getLogger(__name__)


def _downscale(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    if min(w, h) <= side:
        return im
    s = side / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)


class PretrainImages(Dataset):
    """`dataset[i]` -> `transform(PIL image)`, e.g. lightly's SimSiamTransform -> [view0, view1]."""

    def __init__(
        self,
        paths: list[Path],
        input_size: int,
        transform: Callable[[Image.Image], object],
        cache_mb: int,
        skipped: Skipped,
        threads: int = 4,
    ) -> None:
        self.keep_side = 2 * input_size
        self.transform = transform
        self.items: list[np.ndarray | Path] = []
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
                    pixels = np.asarray(r, dtype=np.uint8)
                    if self.cached_bytes + pixels.nbytes <= budget:
                        self.items.append(pixels)
                        self.cached_bytes += pixels.nbytes
                    else:
                        self.items.append(p)
        if not self.items:
            raise DatasetError(f"none of the {len(paths)} train images could be read (see the warnings above)")
        n_cached = sum(isinstance(i, np.ndarray) for i in self.items)
        log.info(
            "train images: %d readable, %d cached in memory (%.0f MiB of %d MiB budget)",
            len(self.items),
            n_cached,
            self.cached_bytes / 2**20,
            cache_mb,
        )

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        item = self.items[i]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item)
        try:
            return _downscale(decode_image(item, min_side=self.keep_side), self.keep_side)
        except ImageDecodeError:
            # Changed on disk since the scan: fall back to a cached neighbour rather than crash an epoch.
            log.warning("%s became unreadable during training; using another image", item)
            return self.image((i + 1) % len(self.items))

    def __getitem__(self, i: int):
        return self.transform(self.image(i))


def collate_views(batch: list) -> list[torch.Tensor]:
    """[[v0, v1], ...] -> [V0 (Nx3xHxW), V1 (Nx3xHxW)]."""
    return [torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])]
