"""The labelled images of the refine stage, cached, with SimCLR's fine-tuning augmentation (crop + flip)."""

from __future__ import annotations

from pathlib import Path

import torch

from dataset.cache import ImageCache
from dataset.reader import Skipped
from handler.eval_preset import EvalPreset
from training.augment import random_resized_crop


class RefineImages(ImageCache):
    """Labelled images for fine-tuning: `__getitems__(indices)` -> (x float Nx3xSxS normalised, y: long N
    class indices).

    Augmentation: random resized crop + horizontal flip only (SimCLR's fine-tuning recipe)."""

    def __init__(
        self,
        paths: list[Path],
        labels: list[int] | torch.Tensor,
        preset: EvalPreset,
        min_scale: float,
        cache_mb: int,
        skipped: Skipped,
        threads: int = 4,
    ) -> None:
        super().__init__(paths, 2 * preset.input_size, cache_mb, skipped, threads, what="valid")
        self.labels = torch.as_tensor(labels)[self.kept]  # class indices N
        self.size = preset.input_size
        self.scale = (min_scale, 1.0)
        self.mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(preset.std).view(1, 3, 1, 1)

    def subset(self, indices: list[int]) -> RefineImages:
        """The same images and labels restricted to `indices` (no decoding)."""
        sub = super().subset(indices)
        sub.labels = self.labels[indices]
        return sub

    def _crop(self, image: torch.Tensor) -> torch.Tensor:
        crop = random_resized_crop(image, self.size, self.scale)
        return crop.flip(-1) if torch.rand(()) < 0.5 else crop

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self._crop(self.pixels(i)) for i in indices]).float().div_(255)
        return (x - self.mean) / self.std, self.labels[indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]
