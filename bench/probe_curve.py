"""Linear-probe accuracy against SimSiam steps: does more pretraining buy accuracy on this dataset?

    .venv/bin/python -m bench.probe_curve --dataset demo --steps 1000 --every 200 \
        --settings '{"lr": 0.1, "cj_hue": 0.5, "gray_prob": 0.5, "min_scale": 0.5}'

The product's pieces (PretrainImages + the batched augmentation, the SimSiam module, its optimizer and the
cosine schedule over --steps, bf16 autocast where training would use it) in a plain loop, so the encoder
can be probed every --every steps with the probe client_train.py uses. Step 0 is the random init.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.datasets import bench_dataset
from bench.random_init_probe import probe_encoder
from dataset.reader import Skipped, read_unlabelled
from handler.eval_preset import EvalPreset
from jobs.device import autocast, resolve_precision
from training.augment import augment_for
from training.model import SimSiam, cosine_lr
from training.pretrain_data import PretrainImages, pretrain_loader
from training.settings import build_settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo", help="demo, photo, or a dataset folder")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--settings", default="{}", help="product settings as JSON (input_size 64, batch 64 unless set)")
    a = p.parse_args()
    dataset = bench_dataset(a.dataset)
    s = build_settings({"input_size": 64, "batch_size": 64, "num_workers": 2, **json.loads(a.settings)})
    torch.manual_seed(s.seed)
    preset = EvalPreset(input_size=s.input_size)
    data = PretrainImages(read_unlabelled(dataset), s.input_size, augment_for(s), s.cache_mb, Skipped())
    loader = pretrain_loader(data, s.batch_size, s.num_workers)
    model = SimSiam(s, steps_per_epoch=len(loader), global_batch=s.batch_size)
    optimizer = model.configure_optimizers()
    precision = resolve_precision(s.precision, torch.device("cpu"))

    print(f"dataset {dataset}, settings {json.loads(a.settings)}, precision {precision}")
    print(f"{'step':>6}{'seconds':>9}{'probe acc':>11}{'kNN acc':>9}")

    probing = 0.0  # seconds spent probing, left out of the training time

    def report(step: int) -> None:
        nonlocal probing
        t = time.monotonic()
        r = probe_encoder(model.backbone, dataset, preset, s.cv_folds, s.knn_k)
        print(f"{step:>6}{t - t0 - probing:>9.0f}{r.acc:>11.4f}{r.knn_acc:>9.4f}", flush=True)
        probing += time.monotonic() - t

    step, t0 = 0, time.monotonic()
    report(0)
    while step < a.steps:
        for x0, x1 in loader:
            # The product's schedule: cosine decay of the encoder lr over --steps, fixed predictor lr.
            for group in optimizer.param_groups:
                if not group["fixed_lr"]:
                    group["lr"] = cosine_lr(model.peak_lr, step / a.steps)
            model.train()
            with autocast(precision, torch.device("cpu")):
                loss, _, _ = model.loss(x0, x1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % a.every == 0 or step == a.steps:
                report(step)
            if step >= a.steps:
                break


if __name__ == "__main__":
    main()
