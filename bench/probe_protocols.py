"""The same encoders under several linear-probe protocols: how much does the yardstick decide?

    .venv/bin/python -m bench.probe_protocols --dataset photo --model_path runs/models/<uuid>

Rows: random-init encoders (3 seeds) and the given model folders. Columns: the product's probe (standardised
features, logistic regression C=1; evaluation/probe.py), the same with C chosen by inner 3-fold CV, and
L2-normalised features (the cosine geometry SimSiam trains and the kNN uses) with C by inner CV, as the
low-shot SVM protocol of Goyal et al. (2019) normalises features. All: the same 5 stratified folds of `valid`.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from bench.datasets import bench_dataset
from dataset.reader import read_labelled
from evaluation.features import run_frozen
from evaluation.probe import make_probe
from handler.eval_preset import EvalPreset
from training.backbone import build_backbone
from training.settings import Settings

PROBES = {
    "standardised, C=1 (product)": make_probe,
    "standardised, C by CV": lambda: make_pipeline(
        StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 2, 7), cv=3, max_iter=2000)
    ),
    "L2-normalised, C by CV": lambda: make_pipeline(
        Normalizer(), LogisticRegressionCV(Cs=np.logspace(-2, 4, 7), cv=3, max_iter=3000)
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="photo", help="demo, photo, or a dataset folder")
    p.add_argument("--model_path", type=Path, nargs="*", default=[], help="model folders written by client_train.py")
    p.add_argument("--input_size", type=int, default=64)
    a = p.parse_args()
    dataset = bench_dataset(a.dataset)
    valid = read_labelled(dataset, "valid")
    s = Settings(input_size=a.input_size)
    encoders: dict[str, torch.nn.Module] = {}
    for seed in range(3):
        torch.manual_seed(seed)
        encoders[f"random init, seed {seed}"] = build_backbone(s.backbone, s.small_stem)[0]
    for m in a.model_path:
        encoders[f"model {m.name[:8]}"] = torch.jit.load(str(m / "model.pt"), map_location="cpu").encoder
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print(f"dataset {dataset}, {len(valid.paths)} valid images, {len(valid.classes)} classes")
    print(f"{'encoder':<24}" + "".join(f"{name:>30}" for name in PROBES))
    for name, encoder in encoders.items():
        feats, kept, _ = run_frozen(encoder, valid.paths, EvalPreset(input_size=a.input_size), torch.device("cpu"))
        x, y = feats.double().numpy(), np.asarray([valid.labels[i] for i in kept])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning, FutureWarning))
            accs = [cross_val_score(make(), x, y, cv=folds).mean() for make in PROBES.values()]
        print(f"{name:<24}" + "".join(f"{acc:>30.4f}" for acc in accs), flush=True)


if __name__ == "__main__":
    main()
