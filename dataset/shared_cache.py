"""The train images for pretraining: decoded when first met, kept downscaled in memory shared by every loader
worker, within `cache_mb`.

Start-up reads only the file list, so the first training step comes as soon after start with a million images as
with a thousand. The first epoch decodes each image once (JPEGs at reduced DCT scale), in whichever DataLoader
worker meets it, and puts its downscaled pixels in an arena of anonymous shared memory (`mmap`, created before the
workers fork: one copy for all of them, not one per worker, and not bound by /dev/shm's size). Later epochs read
the pixels back; images beyond `cache_mb` are decoded from disk each time they are met. Under DDP each process
reads only the images its sampler gives it, so each decodes and caches its own share.

An unreadable file is found when first met: it is marked, another image stands in for it in that batch (an epoch
never breaks), and `report_skipped` lists it with its reason at the end, for model_info.json.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
from pathlib import Path

import numpy as np
import torch

from dataset.cache import downscale, to_uint8_tensor
from dataset.reader import DatasetError, Skipped, readable
from handler.eval_preset import ImageDecodeError, decode_image

log = logging.getLogger(__name__)

# An image's state, shared by all workers. WRITING: a worker is copying its pixels in (others read the file).
UNSEEN, CACHED, ON_DISK, UNREADABLE, WRITING = 0, 1, 2, 3, 4
CHECK_UNMET = 10_000  # at the end, files no step met are checked for readability up to this many


def shared_array(n: int, dtype: np.dtype | type) -> np.ndarray:
    """A zeroed numpy array in anonymous shared memory: a forked worker's writes are seen by every process."""
    size = max(1, n * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_SHARED), dtype=dtype, count=n)


class SharedPixels:
    """Decoded images by index, in one arena of anonymous shared memory that forked loader workers share: `keep`
    copies an image in while the arena lasts, `cached` gives it back (a view, no copy) or None."""

    def __init__(self, n: int, cache_mb: int) -> None:
        self.n = n
        self.capacity = cache_mb * 2**20
        self._allocate()

    # Shared memory is inherited through fork (Lightning's ddp launcher, the DataLoader's workers on Linux). A
    # process that gets the train set pickled instead (a spawn start method) starts with an
    # empty cache of its own: a copy of the arena in the pickle would cost cache_mb per process for nothing.
    _SHARED = ("state", "offset", "shape", "used", "arena", "lock")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._SHARED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._allocate()

    def _allocate(self) -> None:
        n = self.n
        self.state = shared_array(n, np.uint8)
        self.offset = shared_array(n, np.int64)
        self.shape = shared_array(2 * n, np.int32).reshape(n, 2)
        self.used = shared_array(1, np.int64)  # bytes of the arena handed out
        # Pages are only backed once written: an arena bigger than the images costs nothing.
        self.arena = shared_array(self.capacity, np.uint8)
        self.lock = multiprocessing.get_context("fork").Lock()

    def cached(self, i: int) -> torch.Tensor | None:
        if self.state[i] != CACHED:
            return None
        h, w = self.shape[i]
        start = self.offset[i]
        return torch.from_numpy(self.arena[start : start + 3 * h * w]).view(3, h, w)

    def keep(self, i: int, pixels: torch.Tensor) -> None:
        n = pixels.numel()
        with self.lock:
            if self.state[i] != UNSEEN:  # another worker got there first
                return
            start = int(self.used[0])
            if start + n > self.capacity:
                self.state[i] = ON_DISK
                return
            self.used[0] = start + n
            self.state[i] = WRITING  # no second worker takes a slot for it meanwhile
        self.arena[start : start + n] = pixels.reshape(-1).numpy()
        self.offset[i] = start
        self.shape[i] = pixels.shape[1:]
        self.state[i] = CACHED  # last: a reader that sees CACHED finds the pixels, offset and shape in place

    @property
    def decoded(self) -> int:
        """Images this process's loader has met so far (cached, on disk or unreadable)."""
        return int(np.count_nonzero(self.state != UNSEEN))

    @property
    def cached_bytes(self) -> int:
        return int(self.used[0])


class SharedImageCache(SharedPixels):
    """`cache.pixels(i)` -> uint8 3xHxW of the i-th path (shorter side <= keep_side); an unreadable file gives
    another image's pixels. `len(cache)` is the number of files listed."""

    def __init__(self, paths: list[Path], keep_side: int, cache_mb: int, what: str = "train") -> None:
        if not paths:
            raise DatasetError(f"no {what} images")
        self.paths_listed = list(paths)
        self.keep_side = keep_side
        self.what = what
        super().__init__(len(paths), cache_mb)
        log.info(
            "%s images: %d files; each decoded when first met and kept in %d MiB of memory shared by the loader "
            "workers",
            what,
            len(paths),
            cache_mb,
        )

    def __len__(self) -> int:
        return len(self.paths_listed)

    def pixels(self, i: int) -> torch.Tensor:
        """uint8 3xHxW, shorter side at most keep_side."""
        for _ in range(len(self)):
            state = self.state[i]
            if (pixels := self.cached(i)) is not None:
                return pixels
            if state != UNREADABLE:
                try:
                    image = downscale(decode_image(self.paths_listed[i], min_side=self.keep_side), self.keep_side)
                except ImageDecodeError as e:
                    if self.state[i] != UNREADABLE:
                        self.state[i] = UNREADABLE
                        log.warning("skipping unreadable image %s: %s", self.paths_listed[i], e)
                else:
                    pixels = to_uint8_tensor(image)
                    if state == UNSEEN:
                        self.keep(i, pixels)
                    return pixels
            i = (i + 1) % len(self)  # another image stands in; the epoch goes on
        raise DatasetError(f"none of the {len(self)} {self.what} images could be read (see the warnings above)")

    @property
    def kept(self) -> list[int]:
        """Indices of the files not known to be unreadable."""
        return np.flatnonzero(self.state != UNREADABLE).tolist()

    @property
    def paths(self) -> list[Path]:
        return [self.paths_listed[i] for i in self.kept]

    def report_skipped(self, skipped: Skipped, threads: int = 4) -> None:
        """Add the files found unreadable (in any worker) to `skipped`, each with its reason. Files no step met
        (a last partial batch, a run stopped by its time budget) are checked here when there are at most
        CHECK_UNMET of them, so a short run lists what a full one would; more are left unchecked, and said so."""
        unmet = np.flatnonzero(self.state == UNSEEN)
        if 0 < len(unmet) <= CHECK_UNMET:
            ok = readable([self.paths_listed[i] for i in unmet], self.keep_side, skipped, threads)
            for i, good in zip(unmet, ok):
                if not good:
                    self.state[i] = UNREADABLE
        elif len(unmet):
            log.info("%d train images were never met by a step and were not checked", len(unmet))
            unmet = np.array([], dtype=np.int64)
        checked = set(unmet.tolist())
        for i in np.flatnonzero(self.state == UNREADABLE):
            if i in checked:
                continue  # readable() has listed it with its reason
            path = self.paths_listed[i]
            try:
                decode_image(path, min_side=self.keep_side)
                reason = "could not be read during training"
            except ImageDecodeError as e:
                reason = str(e)
            skipped.items.append((str(path), reason))
