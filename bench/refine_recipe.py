"""Refine recipes side by side on one pretrained encoder: how the defaults of training/refine.py were chosen.

    .venv/bin/python -m bench.refine_recipe --dataset_path DATASET --model_path runs/models/<uuid4> \
        --budget_s 60 --variants '[{}, {"lr": 0.01}, {"head_lr": 0.5}]'

Each variant is a set of RefineRecipe fields over the defaults; every variant starts from the same checkpoint
(the model folder's pretrained SimSiam encoder), gets the same refine time budget (held-out run + final run, as
the product runs it) and is scored on `valid`'s held-out part (metric_value) and on `test`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dataset.reader import Skipped, read_labelled
from handler.eval_preset import EvalPreset
from jobs.device import resolve_precision
from training.model import SimSiam
from training.refine import RefineRecipe, predict, refine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", type=Path, required=True)
    p.add_argument("--model_path", type=Path, required=True)
    p.add_argument("--budget_s", type=float, default=60)
    p.add_argument("--variants", default="[{}]", help="JSON list of RefineRecipe overrides")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="refine seed (held-out split, batch order); default: the run's",
    )
    a = p.parse_args()
    device = torch.device("cpu")
    (ckpt,) = (a.model_path / "checkpoints").glob("*.ckpt")
    settings = SimSiam.load_from_checkpoint(ckpt, map_location="cpu").settings
    preset = EvalPreset(input_size=settings.input_size)
    valid = read_labelled(a.dataset_path, "valid")
    test = read_labelled(a.dataset_path, "test", classes=valid.classes)
    base = RefineRecipe(
        epochs=10_000,
        time_budget_s=a.budget_s,
        min_scale=settings.min_scale,
        precision=resolve_precision(settings.precision, device),
        seed=settings.seed if a.seed is None else a.seed,
    )
    rows = []
    for overrides in json.loads(a.variants):
        recipe = replace(base, **overrides)
        encoder = SimSiam.load_from_checkpoint(ckpt, map_location="cpu").backbone
        t = time.monotonic()
        r = refine(encoder, valid.paths, valid.labels, len(valid.classes), preset, recipe, device, 2048, Skipped())
        took = time.monotonic() - t
        pred = np.asarray(predict(r.encoder, r.head, test.paths, preset, device))
        acc = float((pred == np.asarray(test.labels)).mean())
        first = next(row for row in r.curve if "held_out_acc" in row)
        rows.append((json.dumps(overrides), r.acc, acc, r.epochs, first["loss"], first["held_out_acc"], took))
        print(f"{rows[-1][0]}: held-out {r.acc:.4f}, test {acc:.4f}, {r.epochs} epochs, {took:.0f} s", flush=True)
    print(f"\n{a.model_path} on {a.dataset_path}: refine budget {a.budget_s:.0f} s, base {base}")
    print(f"{'variant':<48}{'valid held-out':>15}{'test':>8}{'epochs':>8}{'loss ep1':>9}{'h-o ep1':>8}{'s':>5}")
    for name, held, acc, epochs, loss1, ho1, took in rows:
        print(f"{name:<48}{held:>15.4f}{acc:>8.4f}{epochs:>8}{loss1:>9.3f}{ho1:>8.4f}{took:>5.0f}")


if __name__ == "__main__":
    main()
