"""A dataset's unlabelled train images as LitData shards, for datasets kept in object storage or too many files
for one disk's directory walk:

    python -m dataset.shards DATASET OUT          # OUT: a local folder, or s3://bucket/prefix

Each sample is one train image's file as it is (its bytes: no re-encoding, so no quality is lost and one set of
shards serves any input_size) and its path relative to DATASET. Every image is decoded once here: an unreadable
file is left out and listed (stdout and OUT's `simsiam_shards.json`), so training never meets it. Training then
reads the shards with `advance_settings train_shards=OUT` (dataset/stream.py); valid/ and test/ stay folders.

An s3:// OUT or train_shards uses the usual AWS settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)
and AWS_ENDPOINT_URL for an S3-compatible store other than AWS (MinIO, Ceph, a local test server); remote chunks
are downloaded ahead of use into LitData's local cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from dataset.reader import DatasetError, Skipped, read_unlabelled, readable

log = logging.getLogger(__name__)

MANIFEST = "simsiam_shards.json"  # beside LitData's index.json: what the shards hold and what was left out
CHUNK_BYTES = "64MB"  # LitData's chunk size: large enough for object storage, small enough to start quickly


def storage_options() -> dict:
    """What LitData passes to its S3 client: the endpoint of an S3-compatible store, if one is set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


class ImageSample:
    """LitData's `fn`: an image's file as it is, named by its path relative to the dataset."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, path: str) -> dict:
        return {"name": os.path.relpath(path, self.root), "image": Path(path).read_bytes()}


def optimize_train(dataset: Path, out: str, workers: int | None = None) -> dict:
    """Write DATASET/train's readable images as shards at `out`; returns the manifest (also written to `out`).
    An s3:// `out` is written to a local temporary folder first (TMPDIR), then uploaded with boto3, which speaks
    to any S3-compatible endpoint, http:// ones included (LitData's own uploader accepts https only)."""
    if out.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="simsiam-shards-") as local:
            manifest = optimize_train(dataset, local, workers)
            upload(Path(local), out)
        return manifest
    return write_shards(read_unlabelled(dataset), dataset, out, workers)


def write_shards(paths: list[Path], root: Path, out: str, workers: int | None = None) -> dict:
    """`paths` (images under `root`) as shards in the local folder `out`; the manifest."""
    from litdata import optimize

    if Path(out).exists() and any(Path(out).iterdir()):
        raise DatasetError(f"{out} is not empty; shards go to a new folder (remove it or choose another)")
    workers = workers or min(8, os.cpu_count() or 1)
    t0 = time.monotonic()
    skipped = Skipped()
    # Each image decoded once here (at reduced DCT scale: a truncated file still fails): training never meets an
    # unreadable one, and the manifest says which were left out and why.
    keep = [p for p, ok in zip(paths, readable(paths, 32, skipped, threads=workers)) if ok]
    if len(keep) < 2:
        raise DatasetError(f"{root / 'train'} has {len(keep)} readable image(s); pretraining needs at least 2")
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        optimize(
            fn=ImageSample(root),
            inputs=[str(p) for p in keep],
            output_dir=out,
            chunk_bytes=CHUNK_BYTES,
            num_workers=workers,
            verbose=False,
        )
    finally:  # optimize() sets the process-wide start method to spawn; the training loaders rely on fork
        multiprocessing.set_start_method(start_method, force=True)
    index = read_index(out)
    manifest = {
        "source": str((root / "train").resolve()),
        "images": sum(c["chunk_size"] for c in index["chunks"]),
        "chunks": len(index["chunks"]),
        "seconds": round(time.monotonic() - t0, 1),
        "left_out": [{"path": path, "reason": reason} for path, reason in skipped.items],
    }
    Path(out, MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def upload(local: Path, url: str) -> None:
    """Every file of `local` to s3://bucket/prefix/, index.json last: a reader never sees an index whose chunks
    are not all there yet."""
    bucket, prefix = _bucket_key(url.rstrip("/"))
    s3 = _s3()
    files = sorted(local.iterdir(), key=lambda f: f.name == "index.json")
    for f in files:
        s3.upload_file(str(f), bucket, f"{prefix}/{f.name}" if prefix else f.name)


def read_index(url: str) -> dict:
    """LitData's index.json of a shard location (local or s3://); DatasetError naming the fix if it is not there."""
    index = _read_json(url, "index.json")
    if index is None:
        raise DatasetError(f"train_shards {url} has no index.json: make shards with python -m dataset.shards")
    return index


def read_manifest(url: str) -> dict:
    """What `dataset.shards` wrote beside the index ({} for shards LitData made directly)."""
    return _read_json(url, MANIFEST) or {}


def _read_json(url: str, name: str) -> dict | None:
    """The JSON file `name` of a shard location; None where it does not exist."""
    url = url.rstrip("/")
    if not url.startswith("s3://"):
        path = Path(url) / name
        return json.loads(path.read_text()) if path.is_file() else None
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(f"{url}/{name}")
    try:
        return json.loads(_s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise DatasetError(f"{url}/{name}: {e}; check the URL, the AWS credentials and AWS_ENDPOINT_URL") from e
    except BotoCoreError as e:  # no credentials, an endpoint that does not answer
        raise DatasetError(f"{url}/{name}: {e}; check the AWS credentials and AWS_ENDPOINT_URL") from e


def _bucket_key(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def _s3():
    import boto3

    return boto3.client("s3", **storage_options())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=Path, help="dataset root holding train/images")
    p.add_argument("out", help="a new local folder, or s3://bucket/prefix")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs, at most 8)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        manifest = optimize_train(args.dataset, args.out, args.workers)
    except DatasetError as e:
        log.error("%s", e)
        return 2
    print(
        f"{manifest['images']} images in {manifest['chunks']} shard(s) at {args.out} ({manifest['seconds']} s); "
        f"{len(manifest['left_out'])} unreadable left out. Train with advance_settings train_shards={args.out!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
