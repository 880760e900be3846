"""Does self-distillation on the unlabelled images (SimCLRv2's third step) add to a refined model, and to which?

    .venv/bin/python -m bench.distill --checkpoint /tmp/b10/keep/seed0/models/<uuid4>/checkpoints/<name>.ckpt \
        --dataset demo --valid_per_class 20 --refine_s 96 --scratch_refine_s 576 --distill_s 144 --seeds 0

For each teacher, the product's refine stage without distillation (training.train.downstream: LP-FT with its
held-out run) for `--refine_s`, then one distillation of that final model (training.distill's targets and
images, the refine recipe) for `--distill_s`, scored on `test` before and after:
- pretrained: the SimSiam encoder of `--checkpoint` (e.g. kept by `bench.refine_budget --keep_runs`);
- scratch: the same encoder randomly initialised (`--scratch_refine_s`: its own refine budget).
The product distils in both refine runs (`distill_epochs`); this isolates the step's gain over each teacher."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.datasets import bench_dataset
from bench.refine_budget import BENCH_SIZES, DATASET_SETTINGS, test_accuracy
from dataset.cache import ImageCache
from dataset.reader import Skipped, read_labelled, read_unlabelled
from handler.eval_preset import EvalPreset
from training.backbone import build_backbone
from training.model import SimSiam
from training.refine import RefineImages, RefineRecipe, distil
from training.settings import build_settings
from training.train import TrainJob, downstream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a SimSiam checkpoint of client_train.py")
    p.add_argument("--dataset", default="demo", help="demo, photo, or a dataset folder")
    p.add_argument("--valid_per_class", type=int, default=None)
    p.add_argument("--refine_s", type=float, default=72)
    p.add_argument("--scratch_refine_s", type=float, default=None, help="scratch's refine budget (default: refine_s)")
    p.add_argument("--distill_s", type=float, default=120)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--teachers", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    p.add_argument("--settings", default="{}", help="extra settings, as JSON")
    a = p.parse_args()
    train, valid_n, test = BENCH_SIZES.get(a.dataset, (None, None, None))
    dataset = bench_dataset(a.dataset, train, a.valid_per_class or valid_n, test)
    common = {"input_size": 64, "batch_size": 64, "num_workers": 2, "refine_epochs": 10_000}
    common |= DATASET_SETTINGS.get(a.dataset, {}) | json.loads(a.settings)
    valid = read_labelled(dataset, "valid")
    cpu = torch.device("cpu")
    # The train images decoded once, as pretraining holds them (keep side 2 x input size)
    unlabelled = ImageCache(read_unlabelled(dataset), 2 * common["input_size"], 2048, Skipped())
    rows = []
    for seed in a.seeds:
        for teacher in a.teachers:
            budget = a.refine_s if teacher == "pretrained" else (a.scratch_refine_s or a.refine_s)
            s = build_settings({**common, "seed": seed, "refine_time_budget_s": budget})
            preset = EvalPreset(input_size=s.input_size)
            torch.manual_seed(seed)
            if teacher == "pretrained":
                backbone = SimSiam.load_from_checkpoint(a.checkpoint, map_location="cpu").backbone
            else:
                backbone = build_backbone(s.backbone, s.small_stem)[0]
            job = TrainJob(dataset, torch.device("cpu"), "distill", s, Path(tempfile.gettempdir()))
            t = time.monotonic()
            result = downstream(job, backbone, valid, preset, Skipped())
            refine_s = time.monotonic() - t
            acc_t = test_accuracy(result.encoder, result.head, dataset, valid.classes, preset)
            t = time.monotonic()
            recipe = RefineRecipe(min_scale=s.min_scale, num_workers=2, seed=seed, distill_temperature=a.temperature)
            labelled = RefineImages(valid.paths, valid.labels, preset, s.min_scale, s.cache_mb, Skipped())
            budget = a.distill_s - (time.monotonic() - t)
            # self-distillation: the student is the teacher itself, trained on its own soft targets
            epochs = distil(result.encoder, result.head, unlabelled, labelled, preset, recipe, cpu, 10_000, budget)
            distill_s = time.monotonic() - t
            acc_s = test_accuracy(result.encoder, result.head, dataset, valid.classes, preset)
            row = (seed, teacher, acc_t, acc_s, refine_s, distill_s, epochs)
            print("seed {} {:>10}: teacher {:.4f} -> student {:.4f}  [{:.0f} s + {:.0f} s, {} epochs]".format(*row))
            rows.append(row)
    print(
        f"\ndataset {a.dataset}: {len(unlabelled)} unlabelled, {len(valid.paths)} labelled; refine {a.refine_s:.0f} s, "
        f"distill {a.distill_s:.0f} s, T {a.temperature}; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}"
    )
    head = f"{'seed':>4} {'teacher':>10} {'refined':>8} {'distilled':>9} {'gain':>6}"
    print(f"{head} {'refine s':>8} {'distill s':>9} {'ep':>4}")
    for seed, teacher, acc_t, acc_s, r_s, d_s, ep in rows:
        gain = 100 * (acc_s - acc_t)
        print(f"{seed:>4} {teacher:>10} {acc_t:>8.4f} {acc_s:>9.4f} {gain:>+6.1f} {r_s:>8.0f} {d_s:>9.0f} {ep:>4}")


if __name__ == "__main__":
    main()
