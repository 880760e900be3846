"""Pretraining images/second: the product's pipeline beside lightly's plain loop and the compute-only ceiling.

    .venv/bin/python -m bench.train_throughput --input_sizes 32 64 --steps 20

- lightly reference: the structure of lightly's examples/pytorch/simsiam.py (LightlyDataset + SimSiamTransform +
  DataLoader + a hand loop), on the same images, backbone, input size, batch size and loader workers.
- product: training.pretrain_data.PretrainImages + training.model.SimSiam on a Lightning Trainer, as client_train.py.
- ceiling: the same model's forward + backward + SGD step on random tensors already in memory.
Each figure is images/s (one image = its two views) over `--steps` steps after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.data import LightlyDataset
from lightly.transforms import SimSiamTransform
from torch.utils.data import DataLoader

from training.data import Skipped, read_unlabelled
from training.demo_data import make_demo_dataset
from training.model import SimSiam
from training.pretrain_data import PretrainImages, collate_views
from training.settings import Settings


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.t1 = time.perf_counter()
        self.steps = trainer.global_step - self.warmup


def _model(s: Settings) -> SimSiam:
    return SimSiam(s, steps_per_epoch=1000, global_batch=s.batch_size)


def sgd_step(model: SimSiam, opt: torch.optim.Optimizer, x0: torch.Tensor, x1: torch.Tensor) -> None:
    """One hand-written SimSiam step, as in lightly's example loop."""
    z0, p0 = model(x0)
    z1, p1 = model(x1)
    loss = 0.5 * (model.criterion(p0, z1.detach()) + model.criterion(p1, z0.detach()))
    opt.zero_grad()
    loss.backward()
    opt.step()


def ceiling(s: Settings, steps: int, warmup: int) -> float:
    model = _model(s).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x0 = torch.randn(s.batch_size, 3, s.input_size, s.input_size)
    x1 = torch.randn_like(x0)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        sgd_step(model, opt, x0, x1)
    return steps * s.batch_size / (time.perf_counter() - t0)


def lightly_reference(train_dir: Path, s: Settings, steps: int, warmup: int) -> float:
    model = _model(s).train()
    dataset = LightlyDataset(input_dir=str(train_dir), transform=SimSiamTransform(input_size=s.input_size))
    loader = DataLoader(
        dataset,
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=s.num_workers,
        persistent_workers=s.num_workers > 0,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.06)
    done = 0
    while done < warmup + steps:
        for (x0, x1), _, _ in loader:
            if done == warmup:
                t0 = time.perf_counter()
            sgd_step(model, opt, x0, x1)
            done += 1
            if done == warmup + steps:
                break
    return steps * s.batch_size / (time.perf_counter() - t0)


def product(dataset: Path, s: Settings, steps: int, warmup: int) -> float:
    transform = SimSiamTransform(
        input_size=s.input_size, min_scale=s.min_scale, gaussian_blur=0.0 if s.input_size < 64 else 0.5
    )
    data = PretrainImages(read_unlabelled(dataset), s.input_size, transform, s.cache_mb, Skipped())
    loader = DataLoader(
        data,
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=s.num_workers,
        persistent_workers=s.num_workers > 0,
        collate_fn=collate_views,
    )
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(_model(s), loader)
    return timer.steps * s.batch_size / (timer.t1 - timer.t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("/tmp/simsiam_bench_demo"))
    p.add_argument("--input_sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    if not (a.dataset / "train" / "images").is_dir():
        make_demo_dataset(a.dataset)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
        f"batch {a.batch_size}, {a.num_workers} loader workers, {a.steps} timed steps"
    )
    print(f"{'input':>6}{'lightly ref':>14}{'product':>10}{'ceiling':>10}{'prod/ref':>10}{'prod/ceil':>11}")
    for size in a.input_sizes:
        s = Settings(input_size=size, batch_size=a.batch_size, num_workers=a.num_workers)
        torch.manual_seed(0)
        c = ceiling(s, a.steps, a.warmup)
        r = lightly_reference(a.dataset / "train" / "images", s, a.steps, a.warmup)
        q = product(a.dataset, s, a.steps, a.warmup)
        print(f"{size:>6}{r:>14.1f}{q:>10.1f}{c:>10.1f}{q / r:>10.2f}{q / c:>11.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB (images/s; one image = two views)")


if __name__ == "__main__":
    main()
