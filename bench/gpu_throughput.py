"""Pretraining images/second on one device: augmentation on the device vs in the loader workers vs the compute
ceiling, side by side (scripts/gpu_check.sh runs it on a GPU; it runs on a CPU too, for its test).

    .venv/bin/python -m bench.gpu_throughput --device cuda --backbones resnet18 resnet50 --input_size 224 \
        --batch_size 256

- device aug: the product's path on a GPU (augment_on auto): loader workers decode (once, into the cache) and crop
  uint8; colour, grey and blur run on the device after the transfer (SimSiam.on_after_batch_transfer).
- worker aug: augment_on "workers": the workers also jitter, grey and blur, and send float32 views.
- ceiling: the same model's forward + backward + SGD step on random views already on the device, in the same
  precision and layout: what "data loading fully hidden" reaches.
- device aug, no cache (resnet18 only, --no_cache_row): cache_mb 0, every crop decoded from its file again, as
  a run over more images than the cache holds.
One image = its two views. Timing: synchronised at the first timed step and after the last one.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from dataset.demo import make_demo_dataset
from dataset.reader import Skipped, read_unlabelled
from jobs.device import auto_precision, autocast, resolve_device
from training.augment import augment_for, augments_on_device
from training.model import SimSiam
from training.pretrain_data import PretrainImages, pretrain_loader
from training.settings import Settings
from training.train import device_args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Seconds from the start of step `warmup` to the end of the last step, the device synchronised at both."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.t0, self.seconds, self.steps = warmup, device, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.steps = trainer.global_step - self.warmup


@dataclass
class Measured:
    images_per_s: float
    cache_s: float  # seconds to decode and cache the train images
    cached_mib: float  # what the cache holds


def pipeline(dataset: Path, s: Settings, device: torch.device, precision: str, steps: int, warmup: int) -> Measured:
    """The product's loader and model on a Lightning Trainer (augment_on "device" or "workers", as in `s`)."""
    t = time.perf_counter()
    on_device = augments_on_device(s, device)
    data = PretrainImages(
        read_unlabelled(dataset),
        s.input_size,
        augment_for(s),
        s.cache_mb,
        Skipped(),
        threads=s.num_workers or 1,
        on_device=on_device,
    )
    cache_s = time.perf_counter() - t
    loader = pretrain_loader(data, s.batch_size, s.num_workers, pin_memory=device.type == "cuda")
    timer = StepTimer(warmup, device)
    trainer = pl.Trainer(
        # client_train.py's accelerator, devices, cuDNN autotuning (training/train.py), with this row's precision
        **{**device_args(s, device), "precision": precision},
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(SimSiam(s, steps_per_epoch=1000), loader)
    return Measured(timer.steps * s.batch_size / timer.seconds, cache_s, data.cached_bytes / 2**20)


def ceiling(s: Settings, device: torch.device, precision: str, steps: int, warmup: int) -> float:
    """The model alone: fixed random views on the device, the product's optimiser, precision and layout."""
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as client_train.py
    model = SimSiam(s, steps_per_epoch=1000).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x0 = torch.randn(s.batch_size, 3, s.input_size, s.input_size, device=device)
    x1 = torch.randn_like(x0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        with autocast(precision, device):
            loss, _, _ = model.loss(x0, x1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    _sync(device)
    return steps * s.batch_size / (time.perf_counter() - t0)


def make_dataset(root: Path, images: int, input_size: int) -> Path:
    """Demo images at 2-3x the crop side (photos are larger than the crop), made once."""
    per_class = max(1, images // 6)
    if not (root / "train" / "images").is_dir():
        make_demo_dataset(
            root,
            train_per_class=per_class,
            valid_per_class=2,
            test_per_class=1,
            min_side=2 * input_size,
            max_side=3 * input_size,
        )
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--images", type=int, default=1536, help="train images made for the run")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no_cache_row", action="store_true", help="skip the uncached row")
    p.add_argument("--dataset", type=Path, default=None, help="default: a demo set made under the temp folder")
    a = p.parse_args()
    device = resolve_device(a.device)
    precision = auto_precision(device)
    dataset = a.dataset or Path(tempfile.gettempdir()) / f"simsiam_gpu_bench_{a.input_size}_{a.images}"
    make_dataset(dataset, a.images, a.input_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(
        f"{name}, torch {torch.__version__}, {os.cpu_count()} CPUs, {a.num_workers} loader workers, precision "
        f"{precision}, {a.input_size} px, batch {a.batch_size}, {a.steps} timed steps after {a.warmup}; images/s "
        "(1 image = 2 views)"
    )
    head = ["backbone", "device aug", "worker aug", "ceiling", "dev/ceil", "work/ceil", "dev/work", "no cache"]
    print("".join(f"{h:>12}" for h in head))
    for i, backbone in enumerate(a.backbones):
        s = Settings(
            backbone=backbone,
            input_size=a.input_size,
            batch_size=a.batch_size,
            num_workers=a.num_workers,
            augment_on="device",
            cache_mb=8192,
        )
        torch.manual_seed(0)
        c = ceiling(s, device, precision, a.steps, a.warmup)
        measured = pipeline(dataset, s, device, precision, a.steps, a.warmup)
        dev, cache_s = measured.images_per_s, measured.cache_s
        work = pipeline(
            dataset, Settings(**{**s.to_dict(), "augment_on": "workers"}), device, precision, a.steps, a.warmup
        ).images_per_s
        uncached = "-"
        if i == 0 and not a.no_cache_row:
            raw = pipeline(dataset, Settings(**{**s.to_dict(), "cache_mb": 0}), device, precision, a.steps, a.warmup)
            uncached = f"{raw.images_per_s:.0f}"
        row = [backbone, f"{dev:.0f}", f"{work:.0f}", f"{c:.0f}", f"{dev / c:.2f}", f"{work / c:.2f}"]
        row += [f"{dev / work:.2f}", uncached]
        print("".join(f"{v:>12}" for v in row), flush=True)
    print(f"decode + cache of {a.images} images: {cache_s:.1f} s with {a.num_workers} threads")


if __name__ == "__main__":
    main()
