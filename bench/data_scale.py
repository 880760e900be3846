"""Training data at scale: time to the first SimSiam step, peak memory and steady images/s against the number of
train images, for the product's train set (decoded when first met, cached in memory the loader workers share)
beside the eager cache it replaced (every image decoded before the first step), and beside the same images as
LitData shards (`--modes shards`, made once beforehand, streamed and decoded each time they are met).

    .venv/bin/python -m bench.data_scale --counts 2520 25200 --epochs 2 --modes shared eager shards

The images are 640x480 JPEGs (photo-like noise); beyond `--unique` of them, hard links. Each run is a fresh
process (peak RSS is its own): the train set is built, a DataLoader with 2 workers and a resnet18 SimSiam step
(64 px, batch 64, bf16 where the CPU has it) run for `--epochs` epochs capped at `--steps` steps each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_images(root: Path, count: int, unique: int) -> Path:
    from bench.serve_bench import jpeg

    folder = root / f"train{count}" / "images"
    if folder.is_dir() and len(os.listdir(folder)) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    originals = root / "originals"
    originals.mkdir(exist_ok=True)
    for i in range(min(unique, count)):
        src = originals / f"{i:06d}.jpg"
        if not src.exists():
            src.write_bytes(jpeg(640, 480, seed=i))
    for i in range(count):
        dst = folder / f"{i:07d}.jpg"
        if not dst.exists():
            os.link(originals / f"{i % unique:06d}.jpg", dst)
    return folder


def make_shards(folder: Path) -> None:
    """The images of `folder` as LitData shards beside it (once; not part of a run's start-up, as for a user)."""
    from dataset.reader import list_images
    from dataset.shards import write_shards

    out = folder.parent / "shards"
    if not (out / "index.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        write_shards(list_images(folder), folder.parent, str(out))


def run_one(folder: Path, mode: str, epochs: int, steps: int, cache_mb: int) -> dict:
    """In this process: build the train set, then train; the figures as a dict."""
    t0 = time.monotonic()
    import torch

    from dataset.cache import ImageCache
    from dataset.reader import Skipped, list_images
    from dataset.stream import StreamedImages
    from jobs.device import autocast, resolve_precision
    from training.augment import augment_for
    from training.model import SimSiam
    from training.pretrain_data import PretrainImages, pretrain_loader, stream_loader
    from training.settings import build_settings

    s = build_settings({"input_size": 64, "batch_size": 64, "num_workers": 2, "cache_mb": cache_mb})
    if mode == "shards":  # streamed from LitData shards made beforehand (make_shards), as a job with train_shards
        data = StreamedImages(str(folder.parent / "shards"), 2 * s.input_size, s.cache_mb, s.seed)
        loader = stream_loader(data, s.batch_size, s.num_workers, augment_for(s), False, pin_memory=False)
    else:
        paths = list_images(folder)
        data = PretrainImages(paths, s.input_size, augment_for(s), s.cache_mb, Skipped())
        if mode == "eager":  # the previous train set: every image decoded, and cached within cache_mb, up front
            eager = ImageCache(paths, 2 * s.input_size, s.cache_mb, Skipped(), threads=min(8, os.cpu_count() or 1))
            data.pixels = eager.pixels  # type: ignore[method-assign]
        loader = pretrain_loader(data, s.batch_size, s.num_workers)
    model = SimSiam(s, steps_per_epoch=len(loader), global_batch=s.batch_size)
    opt = model.configure_optimizers()
    precision = resolve_precision("auto", torch.device("cpu"))
    first_step = None
    rates = []
    for _ in range(epochs):
        n, te = 0, time.monotonic()
        for k, (x0, x1) in enumerate(loader):
            with autocast(precision, torch.device("cpu")):
                loss = model.loss(x0, x1)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += x0.shape[0]
            if first_step is None:
                first_step = time.monotonic() - t0
            if k + 1 >= steps:
                break
        rates.append(n / (time.monotonic() - te))
    return {
        "first_step_s": first_step,
        "images_per_s": rates,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[2520, 25200])
    p.add_argument("--modes", nargs="+", default=["shared", "eager", "shards"])
    p.add_argument("--unique", type=int, default=2520)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="steps per epoch at most (default 40)")
    p.add_argument("--cache_mb", type=int, default=2048)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "simsiam_data_scale")
    p.add_argument("--one", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)  # a child run
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(Path(a.one[0]), a.one[1], a.epochs, a.steps, a.cache_mb)))
        return
    print(f"{'images':>8} {'train set':>10} {'first step s':>13} {'epoch 1 img/s':>14} {'epoch 2+ img/s':>15} "
          f"{'peak RSS MiB':>13} {'workers RSS':>12}")  # fmt: skip
    for count in a.counts:
        folder = make_images(a.root, count, a.unique)
        if "shards" in a.modes:
            make_shards(folder)
        for mode in a.modes:
            cmd = [sys.executable, "-m", "bench.data_scale", "--one", str(folder), mode]
            cmd += ["--epochs", str(a.epochs), "--steps", str(a.steps), "--cache_mb", str(a.cache_mb)]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            later = sum(r["images_per_s"][1:]) / max(1, len(r["images_per_s"]) - 1)
            print(
                f"{count:>8} {mode:>10} {r['first_step_s']:>13.1f} {r['images_per_s'][0]:>14.1f} {later:>15.1f} "
                f"{r['peak_rss_mib']:>13.0f} {r['children_peak_rss_mib']:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
