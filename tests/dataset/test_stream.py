"""Train images as LitData shards: the shards command, a job trained from them (no train/ folder), the exact
mid-epoch resume, and shards in S3 served over HTTP by a local S3-compatible server (moto)."""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_SETTINGS, run_train
from litdata import StreamingDataset
from litdata.streaming.shuffle import FullShuffle
from litdata.utilities.env import _DistributedEnv, _WorkerEnv

from dataset.reader import DatasetError, list_images
from dataset.shards import MANIFEST
from dataset.shards import main as shards_main
from dataset.stream import RankShareShuffle, StreamedImages, StreamLoader
from training.settings import build_settings
from training.train import TrainJob, run


def _job(dataset: Path, runs: Path, **overrides) -> TrainJob:
    return TrainJob(dataset, torch.device("cpu"), "tiny", build_settings({**TINY_SETTINGS, **overrides}), runs)


@pytest.fixture(scope="module")
def sharded(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny dataset with one train file cut short, its shards, and a dataset folder without train/."""
    root = tmp_path_factory.mktemp("sharded")
    shutil.copytree(tiny_dataset, root / "full")
    images = list_images(root / "full" / "train" / "images")
    bad = images[0]
    bad.write_bytes(bad.read_bytes()[:60])
    out = root / "shards"
    assert shards_main([str(root / "full"), str(out), "--workers", "1"]) == 0
    labelled = root / "labelled"  # valid/ and test/ only: the train images come from the shards
    for split in ("valid", "test"):
        shutil.copytree(root / "full" / split, labelled / split)
    names = sorted(str(p.relative_to(root / "full")) for p in images[1:])
    return {"out": out, "bad": bad, "names": names, "labelled": labelled}


def test_shards_hold_every_readable_image_and_name_the_unreadable_one(sharded):
    manifest = json.loads((sharded["out"] / MANIFEST).read_text())
    assert manifest["images"] == len(sharded["names"]) == 17
    assert [x["path"] for x in manifest["left_out"]] == [str(sharded["bad"])], manifest
    stream = StreamingDataset(str(sharded["out"]))
    assert sorted(stream[i]["name"] for i in range(len(stream))) == sharded["names"]
    assert shards_main([str(sharded["labelled"]), str(sharded["out"])]) == 2  # no train/: a clear exit 2


def test_a_job_trains_from_shards_and_records_them(sharded, tmp_path):
    trial = run(_job(sharded["labelled"], tmp_path / "runs", train_shards=str(sharded["out"]), batch_size=4))
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["train_source"] == str(sharded["out"])
    assert info["pretraining"]["train_images"] == 17 and info["pretraining"]["steps"] == 4  # 17 // 4
    assert str(sharded["bad"]) in [s["path"] for s in info["skipped"]]


def test_a_run_interrupted_mid_epoch_resumes_where_it_stopped(sharded, tmp_path, monkeypatch):
    """Epoch 2 of 2 fails at its 3rd step with a checkpoint after every step: the resumed run trains the rest of
    that epoch, so every image of it is trained on exactly once (neither the failed step's batch is skipped, nor
    the epoch started over)."""
    from training.model import SimSiam

    seen: list[str] = []  # every image the loader handed out, in order (num_workers 0: in this process)
    real_get = StreamingDataset.__getitem__

    def recording_get(self, index):
        sample = real_get(self, index)
        seen.append(sample["name"])
        return sample

    monkeypatch.setattr(StreamingDataset, "__getitem__", recording_get)
    real_step = SimSiam.training_step

    def failing_step(self, batch, batch_idx):
        if self.global_step == 6:  # 4 steps per epoch: epoch 2's third step
            raise RuntimeError("node lost (standing in)")
        return real_step(self, batch, batch_idx)

    settings = {"train_shards": str(sharded["out"]), "batch_size": 4, "epochs": 2, "checkpoint_interval_s": 1e-6}
    runs = tmp_path / "runs"
    monkeypatch.setattr(SimSiam, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="node lost"):
        run(_job(sharded["labelled"], runs, **settings))
    first = list(seen)
    monkeypatch.setattr(SimSiam, "training_step", real_step)
    seen.clear()
    trial = run(_job(sharded["labelled"], runs, resume="last", **settings))
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["steps"] == 8 and info["pretraining"]["steps_this_run"] == 2

    epoch2_trained = first[16 : 16 + 2 * 4]  # epoch 1 is 4 batches of 4; epoch 2 trained 2 before the failure
    epoch2_rest = seen[: 2 * 4]  # the resumed run's first 2 batches finish epoch 2
    epoch2 = epoch2_trained + epoch2_rest
    assert len(set(epoch2)) == 16 and set(epoch2) <= set(sharded["names"]), Counter(epoch2).most_common(3)
    assert len(first) > 16 + 2 * 4  # the failed step's batch had been handed out: the resumed run trained it


def test_the_stream_resumes_exactly_with_loader_workers(sharded):
    """The same bookkeeping with 2 loader workers (batches go round the workers), and a batch fetched ahead of
    the training step: a loader stopped after t trained batches and a new loader from its state give the epoch's
    images once. (LitData's own count would skip the batch fetched ahead.)"""

    progress = SimpleNamespace(processed=0)  # what StreamLoader reads of Lightning's trainer
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    progress.current = progress

    def loader() -> StreamLoader:
        data = _Names(str(sharded["out"]), shuffle=True, drop_last=True, seed=3)
        return StreamLoader(data, batch_size=2, num_workers=2, collate_fn=list)

    for trained in (1, 2):  # the last trained batch came from worker 0, then from worker 1
        first = loader()
        first.trainer = trainer
        it = iter(first)
        batches = [next(it) for _ in range(trained + 1)]  # one fetched ahead, as Lightning does
        progress.processed = trained
        state = first.state_dict()
        del it
        second = loader()
        second.load_state_dict(state)
        rest = list(second)
        names = [n for b in batches[:trained] + rest for n in b]
        assert len(names) == len(first) * 2 == len(set(names)), (trained, Counter(names).most_common(2))


class _Names(StreamingDataset):  # module level: LitData's loader workers are spawned, so it must pickle
    def __getitem__(self, index):
        return super().__getitem__(index)["name"]


@pytest.fixture(scope="module")
def small_chunks(sharded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same train images in many small chunks (one or two images each), as a large set has many."""
    import dataset.shards

    out = tmp_path_factory.mktemp("small-chunks") / "shards"
    size, dataset.shards.CHUNK_BYTES = dataset.shards.CHUNK_BYTES, "3kB"
    try:
        assert shards_main([str(sharded["labelled"].parent / "full"), str(out), "--workers", "1"]) == 0
    finally:
        dataset.shards.CHUNK_BYTES = size
    assert json.loads((out / MANIFEST).read_text())["chunks"] >= 6
    return out


def _met_by_rank(shuffler, world: int, workers: int, batch: int, epoch: int) -> list[set[int]]:
    _, intervals = shuffler.get_chunks_and_intervals_per_workers(_DistributedEnv(world, 0, 1), workers, batch, epoch)
    per_worker = [{i for iv in ivs for i in range(iv[1], iv[2])} for ivs in intervals]
    return [set().union(*per_worker[r * workers : (r + 1) * workers]) for r in range(world)]


def test_each_rank_streams_the_same_share_every_epoch(small_chunks):
    """RankShareShuffle: each rank's samples are the same set in every epoch, disjoint from the other rank's, of
    equal size, in chunks shuffled anew; LitData's FullShuffle it replaces deals them out again each epoch."""
    data = StreamedImages(str(small_chunks), keep_side=32, cache_mb=0, seed=5)
    cache = data._create_cache(worker_env=_WorkerEnv.detect())
    shuffler = data._create_shuffler(cache)
    assert isinstance(shuffler, RankShareShuffle)
    shares = [_met_by_rank(shuffler, 2, 2, 2, epoch) for epoch in range(1, 6)]
    assert all(share == shares[0] for share in shares)
    assert len(shares[0][0]) == len(shares[0][1]) == 8 and not shares[0][0] & shares[0][1]  # 17 -> 8 + 8
    assert len({tuple(shuffler.get_chunks_and_intervals_per_workers(_DistributedEnv(2, 0, 1), 2, 2, e)[0][0])
                for e in range(1, 6)}) > 1  # fmt: skip
    full = FullShuffle(cache, 5, True)
    assert len({frozenset(_met_by_rank(full, 2, 2, 2, epoch)[0]) for epoch in range(1, 6)}) > 1


def test_two_ddp_processes_stream_each_their_share(small_chunks, sharded, tmp_path):
    """Lightning's launcher, 2 CPU processes, 5 epochs: each rank decodes its own half of the shards, not more."""
    settings = {
        **TINY_SETTINGS,
        "strategy": "ddp",
        "devices": 2,
        "batch_size": 4,
        "epochs": 5,
        "train_shards": str(small_chunks),
    }
    proc = run_train(sharded["labelled"], tmp_path, trial_name="ddp", settings=settings, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    decoded = sorted(re.findall(r"rank (\d): (\d+) of 17 train images decoded", proc.stderr))
    assert [r for r, _ in decoded] == ["0", "1"], proc.stderr[-3000:]
    assert all(int(n) == 8 for _, n in decoded), decoded  # 17 images: 8 each, full batches only


@pytest.fixture
def s3(monkeypatch, tmp_path) -> str:
    """A local S3-compatible server (moto, over HTTP on loopback) with an empty bucket; its endpoint in env."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SIMSIAM_SHARD_CACHE": str(tmp_path / "chunk-cache"),
    }.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="images")
    yield "s3://images"
    server.stop()


def test_shards_in_s3_over_http(sharded, s3, tmp_path):
    """dataset.shards writes straight to s3://, and a job streams its train images from there."""
    full = sharded["labelled"].parent / "full"
    url = f"{s3}/demo/train-shards"
    assert shards_main([str(full), url, "--workers", "1"]) == 0
    trial = run(_job(sharded["labelled"], tmp_path / "runs", train_shards=url, batch_size=4, num_workers=2))
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["train_source"] == url and info["pretraining"]["train_images"] == 17
    assert str(sharded["bad"]) in [s["path"] for s in info["skipped"]]  # the manifest, read from S3
    # A location without shards is named, with the fix, before any training; no model folder is left.
    for wrong, words in [(f"{s3}/nothing-here", "make shards"), ("s3://no-such-bucket/x", "check the URL")]:
        with pytest.raises(DatasetError, match=words):
            run(_job(sharded["labelled"], tmp_path / "runs2", train_shards=wrong))
    assert not list((tmp_path / "runs2").glob("models/*")) and not (tmp_path / "runs2" / "metric").exists()
