"""Linear-probe accuracy of a trained model's encoder next to a randomly initialised one.

    .venv/bin/python -m bench.random_init_probe --dataset_path runs/demo_dataset --model_path runs/models/<uuid>

Both encoders get the same eval preset, the same frozen-feature extraction and the same k-fold probe
on `valid` as client_train.py, so the difference is what self-supervised pretraining learnt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dataset.reader import read_labelled
from evaluation.features import run_frozen
from evaluation.probe import linear_probe
from handler.eval_preset import EvalPreset
from training.backbone import build_backbone
from training.settings import build_settings


def probe_encoder(encoder: torch.nn.Module, dataset: Path, preset: EvalPreset, cv_folds: int, knn_k: int):
    valid = read_labelled(dataset, "valid")
    feats, kept, _ = run_frozen(encoder, valid.paths, preset, torch.device("cpu"))
    return linear_probe(feats, [valid.labels[i] for i in kept], cv_folds, knn_k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", type=Path, required=True)
    p.add_argument("--model_path", type=Path, required=True, help="a model folder written by client_train.py")
    p.add_argument("--seeds", type=int, default=3, help="random encoders to average (default 3)")
    a = p.parse_args()
    settings = build_settings(json.loads((a.model_path / "settings.json").read_text()))
    preset = EvalPreset.load(a.model_path / "preprocess.json")
    trained = torch.jit.load(str(a.model_path / "model.pt"), map_location="cpu").encoder
    ssl = probe_encoder(trained, a.dataset_path, preset, settings.cv_folds, settings.knn_k)
    rand_acc, rand_knn = [], []
    for seed in range(a.seeds):
        torch.manual_seed(seed)
        encoder, _ = build_backbone(settings.backbone, settings.small_stem)
        r = probe_encoder(encoder, a.dataset_path, preset, settings.cv_folds, settings.knn_k)
        rand_acc.append(r.acc)
        rand_knn.append(r.knn_acc)
    ra, rk = sum(rand_acc) / len(rand_acc), sum(rand_knn) / len(rand_knn)
    print(f"{'encoder':<28}{'linear probe acc':>18}{'kNN acc':>10}")
    print(f"{'SimSiam (this model)':<28}{ssl.acc:>18.4f}{ssl.knn_acc:>10.4f}")
    print(f"{f'random init (mean of {a.seeds})':<28}{ra:>18.4f}{rk:>10.4f}")
    print(f"{'difference (points)':<28}{100 * (ssl.acc - ra):>+18.1f}{100 * (ssl.knn_acc - rk):>+10.1f}")


if __name__ == "__main__":
    main()
