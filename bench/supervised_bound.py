"""What the backbone can learn from labels in the same budget: a ceiling for the self-supervised probe.

    .venv/bin/python -m bench.supervised_bound --budget_s 240

Trains the product's encoder (resnet18, 64 px) with cross-entropy on a *separate* labelled demo set drawn by
the same generator (another seed, so no image is shared with the benchmark's `valid`), with crop + flip
augmentation and bf16 autocast, for --budget_s seconds; then scores it with the same frozen-feature k-fold probe
as client_train.py on the benchmark demo's `valid`. If labels cannot lift the probe far in the budget, neither
can self-supervision.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from bench.datasets import bench_dataset
from bench.random_init_probe import probe_encoder
from dataset.demo import make_demo_dataset
from dataset.reader import read_labelled
from handler.eval_preset import EvalPreset, load_for_eval
from jobs.device import autocast, resolve_precision
from training.backbone import build_backbone
from training.settings import Settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget_s", type=float, default=240)
    p.add_argument("--input_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--per_class", type=int, default=100, help="labelled training images per class (default 100)")
    a = p.parse_args()
    s = Settings(input_size=a.input_size)
    torch.manual_seed(0)
    dataset = bench_dataset("demo")
    preset = EvalPreset(input_size=a.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        labelled = make_demo_dataset(
            Path(tmp), train_per_class=1, valid_per_class=a.per_class, test_per_class=1, seed=1
        )
        split = read_labelled(labelled, "valid")
        # Keep the whole resized image (resize_ratio 1); the crops below do the rest.
        whole = EvalPreset(input_size=a.input_size, resize_ratio=1.0)
        x_all = torch.stack([load_for_eval(q, whole) for q in split.paths])
        y_all = torch.tensor(split.labels)

    encoder, dim = build_backbone(s.backbone, s.small_stem)
    model = torch.nn.Sequential(encoder, torch.nn.Linear(dim, len(split.classes)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    augment = v2.Compose(
        [v2.RandomResizedCrop(a.input_size, scale=(0.3, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    )
    before = probe_encoder(encoder, dataset, preset, s.cv_folds, s.knn_k)

    steps, t0 = 0, time.monotonic()
    model.train()
    while time.monotonic() - t0 < a.budget_s:
        idx = torch.randint(0, len(x_all), (a.batch_size,))
        x = torch.stack([augment(x_all[i]) for i in idx])
        with autocast(resolve_precision("auto", torch.device("cpu")), torch.device("cpu")):
            loss = torch.nn.functional.cross_entropy(model(x), y_all[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    after = probe_encoder(encoder, dataset, preset, s.cv_folds, s.knn_k)

    print(f"demo valid ({dataset}), {len(x_all)} labelled images, {a.budget_s:.0f} s, batch {a.batch_size}")
    print(f"{'encoder':<34}{'probe acc':>10}{'kNN acc':>9}")
    print(f"{'random init':<34}{before.acc:>10.4f}{before.knn_acc:>9.4f}")
    print(f"{f'supervised, {steps} steps':<34}{after.acc:>10.4f}{after.knn_acc:>9.4f}")


if __name__ == "__main__":
    main()
