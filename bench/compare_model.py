"""What self-supervision added to one trained model: its refined accuracy beside the frozen features' probe and
beside the same encoder trained from scratch on the labels alone for the same wall-clock time.

    .venv/bin/python -m bench.compare_model --dataset_path runs/demo_dataset --model_path runs/models/<uuid4>

Rows (valid: held out, never trained on; test: the `test` split):
- product: the model folder's exported model (SimSiam pretraining + refine); valid = its metric_value.
- SimSiam + linear probe: its pretrained encoder (the checkpoint), frozen; valid = the k-fold probe of
  model_info.json, test = the probe head fitted on all of valid.
- supervised from scratch: the same encoder randomly initialised, through the same refine stage (same recipe and
  held-out protocol) for the product's train_time + valid_time, on the device and at the precision the product
  trained with (model_info.json records both): a mismatch is refused, since seconds on a GPU and on a CPU buy
  different amounts of training.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from bench.refine_budget import from_scratch, probe_of, test_accuracy
from dataset.reader import read_labelled
from handler.eval_preset import EvalPreset
from jobs.device import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", type=Path, required=True)
    p.add_argument("--model_path", type=Path, required=True)
    p.add_argument("--device", default=None, help="where the baseline trains (default: where the model trained)")
    a = p.parse_args()
    info = json.loads((a.model_path / "model_info.json").read_text())
    trained_on = info["pretraining"].get("device")
    if trained_on is None:
        raise SystemExit(f"{a.model_path}/model_info.json records no device: retrain it with this version")
    device = a.device or trained_on
    # resolve_device falls back to the CPU without a GPU: compare where the baseline would really train.
    if resolve_device(device).type != torch.device(trained_on).type:
        raise SystemExit(
            f"--device {device}: the model trained on {trained_on}; the baseline gets the model's seconds, so it must "
            f"train on the same kind of device: pass --device {trained_on}, or run on a machine that has it"
        )
    settings = json.loads((a.model_path / "settings.json").read_text())
    preset = EvalPreset.load(a.model_path / "preprocess.json")
    trial_budget = info["timing"]["train_time"] + info["timing"]["valid_time"]

    with warnings.catch_warnings():  # the served TorchScript file, its encoder and head: the deprecation is ours
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(a.model_path / "model.pt"), map_location="cpu").eval()
    valid = read_labelled(a.dataset_path, "valid")
    product_test = test_accuracy(scripted.encoder, scripted.head, a.dataset_path, valid.classes, preset)
    probe_test = probe_of(a.model_path, a.dataset_path, preset)

    t = time.monotonic()
    precision = info["pretraining"]["precision"]
    scratch = {
        **settings,
        "refine": "finetune",
        "refine_epochs": 10_000,
        "refine_time_budget_s": trial_budget,
        "precision": precision,
    }
    scratch_valid, scratch_test, epochs, _ = from_scratch(a.dataset_path, scratch, settings["seed"], device)
    took = time.monotonic() - t

    m = info["metrics"]
    served = m.get("refine_choice", {}).get("chosen", m["refine"])  # refine auto: what it chose
    rows = [
        (f"SimSiam + {served} (this model)", m["acc"], product_test, f"{trial_budget:.0f} s"),
        ("SimSiam + linear probe (frozen)", m["probe_acc"], probe_test, "-"),
        (f"supervised from scratch ({epochs} epochs)", scratch_valid, scratch_test, f"{took:.0f} s"),
    ]
    print(f"\nboth trained on {device} ({precision}); the baseline for the model's {trial_budget:.0f} s")
    print(f"{'classifier':<44}{'valid (held out)':>17}{'test':>8}  {'time':>6}")
    for name, v, te, when in rows:
        print(f"{name:<44}{v:>17.4f}{te:>8.4f}  {when:>6}")
    print(
        f"self-supervision added (test): {100 * (product_test - scratch_test):+.1f} pt over training from scratch, "
        f"{100 * (product_test - probe_test):+.1f} pt over the frozen probe"
    )


if __name__ == "__main__":
    main()
