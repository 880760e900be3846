"""Accuracy per wall-clock budget: the product beside lightly's example recipe and a random encoder.

    .venv/bin/python -m bench.accuracy_budget --dataset demo --budget_s 300
    .venv/bin/python -m bench.accuracy_budget --dataset photo --budget_s 300

- product: client_train.py (a subprocess, as a user runs it) with its defaults and `time_budget_s`, plus the
  input size, batch size and loader workers given here (the same for every row).
- lightly recipe: lightly's examples/pytorch/simsiam.py as written -- torchvision's default ResNet init,
  SimSiamTransform defaults, projection 512-512-128, prediction 128-64-128, SGD lr 0.06 without momentum or
  decay, a LightlyDataset + DataLoader + hand loop -- trained for the same number of seconds.
- random init: the product's encoder freshly initialised (mean of --seeds).
Every encoder is scored by the same thing: the eval preset, frozen features of `valid`, and the stratified
k-fold linear probe of evaluation/probe.py (held-out accuracy) plus its cosine kNN.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightly.data import LightlyDataset
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from lightly.transforms import SimSiamTransform
from torch import nn
from torch.utils.data import DataLoader

from bench.datasets import bench_dataset
from bench.random_init_probe import probe_encoder
from handler.eval_preset import EvalPreset
from training.backbone import build_backbone
from training.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def run_product(dataset: Path, settings: dict, runs: Path) -> tuple[Path, dict]:
    annotation = json.dumps({"advance_settings": settings})
    cmd = [sys.executable, "client_train.py", "--dataset_path", str(dataset), "--device", "cpu"]
    cmd += ["--trial_name", "budget", "--annotation_data", annotation]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "SIMSIAM_RUNS_DIR": str(runs)}, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"client_train.py failed ({proc.returncode})")
    model = Path(json.loads((runs / "metric" / "trial.txt").read_text())["model_path"])
    return model, json.loads((model / "model_info.json").read_text())


def lightly_recipe(dataset: Path, s: Settings, budget_s: float) -> tuple[nn.Module, int]:
    """lightly's example loop for `budget_s` seconds of training; returns (backbone, steps)."""
    # The product's architecture at this input size, with torchvision's default init as the example has it.
    backbone, dim = build_backbone(s.backbone, s.small_stem, zero_init_residual=False)
    projection, prediction = SimSiamProjectionHead(dim, 512, 128), SimSiamPredictionHead(128, 64, 128)
    params = [*backbone.parameters(), *projection.parameters(), *prediction.parameters()]
    data = LightlyDataset(str(dataset / "train" / "images"), transform=SimSiamTransform(input_size=s.input_size))
    loader = DataLoader(
        data, batch_size=s.batch_size, shuffle=True, drop_last=True, num_workers=s.num_workers, persistent_workers=True
    )
    criterion, optimizer = NegativeCosineSimilarity(), torch.optim.SGD(params, lr=0.06)
    steps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < budget_s:
        for (x0, x1), _, _ in loader:
            z0, z1 = projection(backbone(x0)), projection(backbone(x1))
            p0, p1 = prediction(z0), prediction(z1)
            loss = 0.5 * (criterion(p0, z1.detach()) + criterion(p1, z0.detach()))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if time.monotonic() - t0 >= budget_s:
                break
    return backbone.eval(), steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo", help="demo, photo, or a dataset folder")
    p.add_argument("--budget_s", type=float, default=300)
    p.add_argument("--input_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--settings", default="{}", help="extra product settings as JSON (default: none)")
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args()
    dataset = bench_dataset(a.dataset)
    common = {"input_size": a.input_size, "batch_size": a.batch_size, "num_workers": a.num_workers}
    s = Settings(**common)
    preset = EvalPreset(input_size=a.input_size)
    rows: list[tuple[str, float, float, str]] = []

    with tempfile.TemporaryDirectory() as runs:
        extra = json.loads(a.settings)
        settings = {"epochs": 10_000, "time_budget_s": a.budget_s, **common, **extra}
        model, info = run_product(dataset, settings, Path(runs))
        encoder = torch.jit.load(str(model / "model.pt"), map_location="cpu").encoder
        r = probe_encoder(encoder, dataset, preset, s.cv_folds, s.knn_k)
        steps = info["pretraining"]["steps"]
        rows.append(("product" + (f" {extra}" if extra else " defaults"), r.acc, r.knn_acc, f"{steps} steps"))

    torch.manual_seed(0)
    backbone, steps = lightly_recipe(dataset, s, a.budget_s)
    r = probe_encoder(backbone, dataset, preset, s.cv_folds, s.knn_k)
    rows.append(("lightly example recipe", r.acc, r.knn_acc, f"{steps} steps"))

    accs, knns = [], []
    for seed in range(a.seeds):
        torch.manual_seed(seed)
        r = probe_encoder(build_backbone(s.backbone, s.small_stem)[0], dataset, preset, s.cv_folds, s.knn_k)
        accs.append(r.acc)
        knns.append(r.knn_acc)
    rows.append((f"random init (mean of {a.seeds})", sum(accs) / len(accs), sum(knns) / len(knns), "-"))

    print(f"dataset {dataset}, budget {a.budget_s:.0f} s of pretraining, {common}, {os.cpu_count()} CPUs")
    print(f"{'encoder':<44}{'probe acc':>10}{'kNN acc':>9}  {'trained':<12}{'product - this':>15}")
    for name, acc, knn, trained in rows:
        print(f"{name:<44}{acc:>10.4f}{knn:>9.4f}  {trained:<12}{100 * (rows[0][1] - acc):>+13.1f} pt")


if __name__ == "__main__":
    main()
