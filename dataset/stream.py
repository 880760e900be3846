"""The unlabelled train images streamed from LitData shards (dataset/shards.py): a local folder or s3://.

LitData's StreamingDataset gives each rank and each loader worker its own chunks (so under DDP every rank reads
its share, the same number of batches each; `RankShareShuffle` keeps a rank's share the same every epoch),
downloads remote chunks ahead of use into a local cache of bounded size, and shuffles chunks and the samples
within them. Each image is decoded as it is met (JPEGs at reduced DCT scale); training/pretrain_data.py
augments each batch at once in the loader worker, as with a folder. Nothing is decoded before the first
step, and memory does not grow with the number of images.

Mid-epoch resume: StreamingDataLoader's state (the samples each worker has yielded this epoch) goes into every
checkpoint through `StreamState`, a callback, and is loaded back before the loader is iterated again: Lightning
does not restore it on its own (Lightning-AI/litData#775). tests/dataset/test_stream.py proves that a run
interrupted in the middle of an epoch and resumed sees each image of that epoch once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from functools import lru_cache
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from filelock import FileLock
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming import Cache
from litdata.streaming.downloader import S3Downloader, register_downloader
from litdata.streaming.item_loader import Interval
from litdata.streaming.shuffle import FullShuffle, Shuffle
from litdata.utilities.env import _DistributedEnv
from litdata.utilities.shuffle import _associate_chunks_and_intervals_to_workers

from dataset.cache import downscale, to_uint8_tensor
from dataset.reader import Skipped
from dataset.shards import read_index, read_manifest, storage_options
from dataset.shared_cache import UNREADABLE, SharedPixels
from handler.eval_preset import ImageDecodeError, decode_image

log = logging.getLogger(__name__)

CACHE_ENV = "SIMSIAM_SHARD_CACHE"  # where remote chunks are downloaded ahead of use (LitData bounds its size)


class StreamedImages(StreamingDataset):
    """`dataset[i]` -> uint8 3xHxW (shorter side at most `keep_side`), or None for an image that fails to decode
    (the batch goes on without it)."""

    def __init__(self, url: str, keep_side: int, cache_mb: int, seed: int) -> None:
        self.url = url.rstrip("/")
        self.index = read_index(self.url)  # a missing or foreign location fails here, before any training
        plain_http_s3(self.url)
        super().__init__(
            self.url,
            cache_dir=os.environ.get(CACHE_ENV) or None,  # remote chunks; None: LitData's ~/.lightning/chunks
            shuffle=True,
            drop_last=True,
            seed=seed,
            storage_options=storage_options(),
        )
        self.keep_side = keep_side
        # Decoded once, then kept within cache_mb in memory the (forked) loader workers share, by sample index:
        # epochs after the first decode only what did not fit, as with a folder.
        self.pixel_cache = SharedPixels(self.images, cache_mb)

    def _create_shuffler(self, cache: Cache) -> Shuffle:
        shuffler = super()._create_shuffler(cache)  # a resumed stream's seed and drop_last come from its state
        if type(shuffler) is FullShuffle:  # not WindowShuffle (parallel file systems), whose chunks stay put already
            return RankShareShuffle(cache, shuffler.seed, shuffler.drop_last, item_window=shuffler.item_window)
        return shuffler

    def __setstate__(self, state: dict) -> None:  # in a (spawned) loader worker
        self.__dict__.update(state)
        plain_http_s3(self.url)

    def __getitem__(self, index: Any) -> torch.Tensor | None:
        sample = super().__getitem__(index)  # read even when cached: LitData tracks what each chunk has served
        i = getattr(index, "index", index)  # the sample's index in the whole set (LitData passes a ChunkedIndex)
        if (pixels := self.pixel_cache.cached(i)) is not None or self.pixel_cache.state[i] == UNREADABLE:
            return pixels
        try:
            image = decode_image(bytes(sample["image"]), min_side=self.keep_side)
        except ImageDecodeError as e:
            self.pixel_cache.state[i] = UNREADABLE
            log.warning("skipping unreadable image %s in %s: %s", sample["name"], self.url, e)
            return None
        pixels = to_uint8_tensor(downscale(image, self.keep_side))
        self.pixel_cache.keep(i, pixels)
        return pixels

    @property
    def images(self) -> int:
        """All images in the shards (len() is this rank's share)."""
        return sum(c["chunk_size"] for c in self.index["chunks"])

    def fingerprint(self) -> str:
        """What identifies these shards for resume: their count and LitData's index of chunks."""
        digest = hashlib.sha256(json.dumps(self.index["chunks"], sort_keys=True).encode()).hexdigest()
        return f"{self.images} images in {len(self.index['chunks'])} shard(s), index sha256 {digest[:16]}"

    def report_skipped(self, skipped: Skipped) -> None:
        """The files `python -m dataset.shards` left out as unreadable, for model_info.json."""
        for item in read_manifest(self.url).get("left_out", []):
            skipped.items.append((item["path"], item["reason"]))


class RankShareShuffle(FullShuffle):
    """Each rank keeps the pieces of chunks the first epoch dealt it, and every epoch shuffles them among its own
    loader workers (and the samples within each, as FullShuffle does).

    FullShuffle deals the chunks out to the ranks again every epoch (on one node), so under DDP each rank meets,
    downloads, decodes and caches nearly every image within a few epochs. With its share fixed a rank decodes and
    caches 1/world of the images, and its chunks stay in its download cache. Every rank keeps the same number of
    samples, so the ranks make the same number of steps.
    """

    @lru_cache(maxsize=10)  # noqa: B019 -- as FullShuffle's: one shuffler per dataset, asked every batch
    def get_chunks_and_intervals_per_workers(
        self, distributed_env: _DistributedEnv, num_workers: int, batch_size: int, current_epoch: int
    ) -> Any:
        chunk_intervals = self.cache.get_chunk_intervals()
        if distributed_env.world_size == 1:
            return self._global_assign(distributed_env, chunk_intervals, num_workers, batch_size, current_epoch)
        dealt, dealt_intervals = self._global_assign(distributed_env, chunk_intervals, num_workers, batch_size, 1)
        one_rank = _DistributedEnv(1, 0, 1)
        workers_chunks: list[list[int]] = []
        workers_intervals: list[list[Any]] = []
        for rank in range(distributed_env.world_size):
            workers = range(rank * num_workers, (rank + 1) * num_workers)
            pieces = _merge_pieces([(c, list(iv)) for w in workers for c, iv in zip(dealt[w], dealt_intervals[w])])
            order = np.random.RandomState([self.seed, current_epoch, rank]).permutation(len(pieces))
            chunks, intervals = _associate_chunks_and_intervals_to_workers(
                one_rank,
                [pieces[i][0] for i in order],
                [Interval(*pieces[i][1]) for i in order],
                self.drop_last,
                num_workers,
                batch_size,
            )
            workers_chunks += chunks
            workers_intervals += intervals
        return workers_chunks, workers_intervals


def _merge_pieces(pieces: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    """A chunk split between two loader workers of one rank, as one piece again."""
    merged: list[tuple[int, list[int]]] = []
    for chunk, interval in pieces:
        if merged and merged[-1][0] == chunk and merged[-1][1][2] == interval[1]:
            merged[-1][1][2] = interval[2]
        else:
            merged.append((chunk, list(interval)))
    return merged


class Boto3S3Downloader(S3Downloader):
    """LitData's S3 downloader with every chunk fetched by boto3. LitData fetches chunks with obstore, whose
    client it configures for https only: an S3-compatible store at an http:// endpoint (MinIO without TLS inside
    a cluster, a local test server) would fail every download."""

    def download_file(self, remote_filepath: str, local_filepath: str) -> None:
        if os.path.exists(local_filepath):
            return
        bucket, _, key = remote_filepath.removeprefix("s3://").partition("/")
        os.makedirs(os.path.dirname(local_filepath) or ".", exist_ok=True)
        with FileLock(local_filepath + ".lock"):  # one process downloads, the others wait for its file
            if os.path.exists(local_filepath):
                return
            tmp_path = self._temp_download_path(local_filepath)
            self._client.client.download_file(bucket, key, tmp_path)
            self._publish_file(tmp_path, local_filepath)

    async def adownload_file(self, remote_filepath: str, local_filepath: str) -> None:
        await asyncio.to_thread(self.download_file, remote_filepath, local_filepath)

    async def adownload_bytes(self, remote_filepath: str, offset: int, length: int, local_chunkpath: str) -> bytes:
        return await asyncio.to_thread(self.download_bytes, remote_filepath, offset, length, local_chunkpath)


def plain_http_s3(url: str) -> None:
    """With an http:// endpoint, s3:// goes through Boto3S3Downloader (in this process: each worker calls it)."""
    if url.startswith("s3://") and storage_options().get("endpoint_url", "").startswith("http://"):
        register_downloader("s3://", Boto3S3Downloader, overwrite=True)
        os.environ["LITDATA_ASYNC_CHUNK_PREFETCH"] = "0"  # its asynchronous prefetch is obstore's too


class StreamLoader(StreamingDataLoader):
    """StreamingDataLoader whose state counts the batches the model has trained on this epoch (Lightning's
    progress), which is where a resume must continue. LitData counts the batches it has handed out: the same
    number here, but one more whenever the loop fetches a batch ahead of its step (Lightning does so for loaders
    without a length), and that batch would be skipped on resume. `trainer` is set by StreamState; without it
    (outside training) the state is LitData's own."""

    trainer: pl.Trainer | None = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.trainer is None or not isinstance(self.dataset, StreamingDataset):
            return state
        trained = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not 0 < trained < len(self) or trained * self.batch_size == state["num_samples_yielded"]:
            return state  # before the first step, at the epoch's end, or nothing fetched ahead
        samples = trained * self.batch_size
        state["num_samples_yielded"] = samples
        state["latest_worker_idx"] = (trained - 1) % max(1, self.num_workers)  # batches go round the workers
        state["dataset"] = self.dataset.state_dict(samples, self.num_workers, self.batch_size)
        return state


class StreamState(pl.Callback):
    """The stream's position in each checkpoint, put back on resume. Lightning saves a stateful loader's state
    too, but does not always load it back (Lightning-AI/litData#775); loading the same state twice is harmless."""

    def __init__(self, loader: StreamLoader) -> None:
        self.loader = loader

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.loader.trainer = trainer
        # LitData reads the world (size, rank) when the dataset is made, before Lightning has started the process
        # group here: read it again now, so that each rank streams its own share.
        self.loader.dataset.distributed_env = _DistributedEnv.detect()

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict["loader"]
        self.loader.load_state_dict(state)
        log.info(
            "resuming the train stream in epoch %s after %s images",
            state["current_epoch"],
            state["num_samples_yielded"],
        )
