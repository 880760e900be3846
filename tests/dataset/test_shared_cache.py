"""dataset/shared_cache.py: nothing decoded at start; each image decoded once, in whichever loader worker meets it,
and seen by every process; the budget holds; an unreadable file is skipped without breaking the epoch."""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dataset.reader import Skipped, read_unlabelled
from dataset.shared_cache import CACHED, ON_DISK, UNREADABLE, UNSEEN, SharedImageCache


class Pixels(Dataset):
    def __init__(self, cache: SharedImageCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> int:
        return int(self.cache.pixels(i).sum())


def epochs(cache: SharedImageCache, n: int, workers: int = 2) -> list[list[int]]:
    loader = DataLoader(Pixels(cache), batch_size=4, num_workers=workers, persistent_workers=True)
    return [sorted(int(v) for batch in loader for v in batch) for _ in range(n)]


def test_start_up_decodes_nothing(tmp_path: Path) -> None:
    bogus = [tmp_path / f"{i}.jpg" for i in range(100_000)]  # not even there: only the list is read
    t0 = time.monotonic()
    cache = SharedImageCache(bogus, 64, cache_mb=512)
    assert time.monotonic() - t0 < 2.0
    assert len(cache) == 100_000 and cache.decoded == 0 and cache.cached_bytes == 0


def test_workers_share_what_they_decode(tiny_dataset: Path) -> None:
    paths = read_unlabelled(tiny_dataset)
    cache = SharedImageCache(paths, 48, cache_mb=64)
    first, second = epochs(cache, 2)
    assert first == second  # the same pixels from the cache as from the files
    # Decoded in two worker processes, visible here: every image cached once, in one arena.
    assert (cache.state == CACHED).all()
    assert cache.cached_bytes == sum(int(cache.shape[i].prod()) * 3 for i in range(len(cache)))
    ends = sorted((int(cache.offset[i]), int(cache.offset[i] + 3 * cache.shape[i].prod())) for i in range(len(cache)))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))  # no two images share bytes


def test_the_budget_holds_and_the_rest_is_read_from_disk(tiny_dataset: Path) -> None:
    paths = read_unlabelled(tiny_dataset)
    one = SharedImageCache(paths, 48, cache_mb=64)
    one.pixels(0)
    budget_mb = 1
    cache = SharedImageCache(paths * 40, 48, cache_mb=budget_mb)  # more images than 1 MiB holds
    epochs(cache, 1)
    assert cache.cached_bytes <= budget_mb * 2**20
    assert (cache.state == CACHED).any() and (cache.state == ON_DISK).any() and not (cache.state == UNSEEN).any()


def test_an_unreadable_file_is_skipped_without_breaking_the_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "train"
    shutil.copytree(tiny_dataset / "train" / "images", folder)
    bad = folder / "broken.jpg"
    bad.write_bytes(b"not an image")
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    cache = SharedImageCache(paths, 48, cache_mb=64)
    [sums] = epochs(cache, 1)
    assert len(sums) == len(paths)  # a stand-in filled the broken one's place
    assert cache.state[paths.index(bad)] == UNREADABLE and bad not in cache.paths
    skipped = Skipped()
    cache.report_skipped(skipped)
    assert [p for p, _ in skipped.items] == [str(bad)] and skipped.items[0][1]


def test_a_pickled_train_set_starts_with_an_empty_cache_of_its_own(tiny_dataset: Path) -> None:
    """A spawned process gets the train set pickled: no copy of the arena, a fresh cache."""
    import pickle

    cache = SharedImageCache(read_unlabelled(tiny_dataset), 48, cache_mb=64)
    first = cache.pixels(0).clone()
    blob = pickle.dumps(cache)
    assert len(blob) < 64 * 1024  # the file list, not the 64 MiB arena
    copy = pickle.loads(blob)
    assert copy.decoded == 0 and cache.decoded == 1
    assert torch.equal(copy.pixels(0), first) and copy.decoded == 1
