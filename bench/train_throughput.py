"""Pretraining images/second: the product's pipeline beside lightly's plain loop and the compute-only ceiling.

    .venv/bin/python -m bench.train_throughput --input_sizes 32 64 --steps 20

- lightly reference: the structure of lightly's examples/pytorch/simsiam.py (LightlyDataset + SimSiamTransform +
  DataLoader + a hand loop, fp32, default memory format), on the same images, backbone, heads, input size, batch
  size and loader workers.
- product: training.pretrain_data.PretrainImages (batched augmentation) + training.model.SimSiam (channels_last) on
  a Lightning Trainer with the precision client_train.py picks here (bf16 autocast on a CPU with bf16 units).
- product fp32: the same with precision 32-true, to show what the data pipeline and layout give alone.
- ceilings: the same model's forward + backward + SGD step on random tensors already in memory, in the product's
  precision and layout (what "data loading fully hidden" reaches), and in fp32.
Each figure is images/s (one image = its two views) over `--steps` steps after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch
from lightly.data import LightlyDataset
from lightly.transforms import SimSiamTransform
from torch import nn
from torch.utils.data import DataLoader

from bench.gpu_throughput import pipeline
from dataset.demo import make_demo_dataset
from jobs.device import auto_precision
from training.model import SimSiam
from training.settings import Settings


def _model(s: Settings) -> SimSiam:
    return SimSiam(s, steps_per_epoch=1000, global_batch=s.batch_size)


class PlainSimSiam(nn.Module):
    """lightly's example model: the same backbone and heads, default memory format, a plain forward."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        product = _model(s)
        self.backbone = product.backbone.to(memory_format=torch.contiguous_format)
        self.projection_head, self.prediction_head = product.projection_head, product.prediction_head
        self.criterion = product.criterion

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection_head(self.backbone(x))
        return z, self.prediction_head(z)


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x0: torch.Tensor, x1: torch.Tensor) -> None:
    """One hand-written SimSiam step, as in lightly's example loop."""
    z0, p0 = model(x0)
    z1, p1 = model(x1)
    loss = 0.5 * (model.criterion(p0, z1.detach()) + model.criterion(p1, z0.detach()))
    opt.zero_grad()
    loss.backward()
    opt.step()


def ceiling(model: nn.Module, s: Settings, steps: int, warmup: int, bf16: bool) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x0 = torch.randn(s.batch_size, 3, s.input_size, s.input_size)
    x1 = torch.randn_like(x0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            sgd_step(model, opt, x0, x1)
    return steps * s.batch_size / (time.perf_counter() - t0)


def lightly_reference(train_dir: Path, s: Settings, steps: int, warmup: int) -> float:
    model = PlainSimSiam(s).train()
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


def product(dataset: Path, s: Settings, steps: int, warmup: int, precision: str) -> tuple[float, float]:
    """(images/s, MiB of train images cached in memory): bench/gpu_throughput.py's pipeline on the CPU."""
    measured = pipeline(dataset, s, torch.device("cpu"), precision, steps, warmup)
    return measured.images_per_s, measured.cached_mib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("/tmp/simsiam_bench_demo"))
    p.add_argument("--input_sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cache_mb", type=int, default=2048, help="the product's decoded-image cache budget")
    a = p.parse_args()
    if not (a.dataset / "train" / "images").is_dir():
        make_demo_dataset(a.dataset)
    precision = auto_precision(torch.device("cpu"))
    bf16 = precision == "bf16-mixed"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, batch {a.batch_size}, "
        f"{a.num_workers} loader workers, {a.steps} timed steps, product precision {precision}, "
        f"cache budget {a.cache_mb} MiB"
    )
    head = ["input", "lightly ref", "product", "prod fp32", "ceiling", "ceil fp32", "prod/ref", "prod/ceil", "cached"]
    print("".join(f"{h:>12}" for h in head))
    for size in a.input_sizes:
        s = Settings(input_size=size, batch_size=a.batch_size, num_workers=a.num_workers, cache_mb=a.cache_mb)
        torch.manual_seed(0)
        c = ceiling(_model(s), s, a.steps, a.warmup, bf16)
        c32 = ceiling(PlainSimSiam(s), s, a.steps, a.warmup, bf16=False)
        r = lightly_reference(a.dataset / "train" / "images", s, a.steps, a.warmup)
        q, cached = product(a.dataset, s, a.steps, a.warmup, precision)
        q32, _ = product(a.dataset, s, a.steps, a.warmup, "32-true")
        row = [f"{size} px", f"{r:.1f}", f"{q:.1f}", f"{q32:.1f}", f"{c:.1f}", f"{c32:.1f}"]
        row += [f"{q / r:.2f}", f"{q / c:.2f}", f"{cached:.0f} MiB"]
        print("".join(f"{v:>12}" for v in row))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"peak RSS: this process {peak:.0f} MiB, largest loader worker {children:.0f} MiB; images/s, 1 image = 2 views"
    )


if __name__ == "__main__":
    main()
