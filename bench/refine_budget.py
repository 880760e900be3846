"""What self-supervision adds once the model is refined: three classifiers at the same wall-clock budget.

    .venv/bin/python -m bench.refine_budget --dataset demo --budget_s 180 --seeds 0 1 2
    .venv/bin/python -m bench.refine_budget --dataset photo --budget_s 180 --seeds 0 1 2
    .venv/bin/python -m bench.refine_budget --dataset demo --budget_s 150 --seeds 0 --device cuda   # on a GPU
    .venv/bin/python -m bench.refine_budget --dataset demo --budget_s 720 --valid_per_class 20 --seeds 2 \
        --extra_train_per_class 1500 --no_scratch    # 4x the unlabelled images, the same valid and test
    .venv/bin/python -m bench.refine_budget --dataset demo --budget_s 180 --chain 3   # jobs repeated on one dataset

For each seed, scored on the `test` split (never used by any of them):
(a) product: client_train.py as a user runs it (a subprocess): SimSiam pretraining for `pretrain_share` of the
    budget, then the refine stage (LP-FT, held-out run + final run) for the rest; tested with client_test.py
    (the exported TorchScript model and the serving preset).
(b) supervised from scratch: the same encoder randomly initialised, through the same refine stage
    (training.train.downstream: the same recipe, held-out run included) for the whole budget, on the labels only
    (its epochs end with the budget, whatever --settings says).
(c) SimSiam + linear probe (the product before the refine stage): (a)'s pretrained encoder, frozen, with the
    probe head fitted on all of `valid`. It gets (a)'s pretraining time, not the whole budget: the probe has
    flattened by then on both datasets (docs/benchmarks.md, "What limits the demo").
The table prints each seed, then mean and spread (max - min), and the differences the targets name.

--chain N repeats the job N times per seed, as a user who runs a batch job again and again: (a)'s job k starts
from job k-1's model folder (`init`: its SimSiam checkpoint), and (b') -- the labels-only user's chain -- starts
job k's supervised training from job k-1's refined encoder. Job 1 is (a) and (b) from random init.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import bench_dataset
from dataset.reader import Skipped, read_labelled
from evaluation.features import run_frozen
from evaluation.probe import fit_head
from handler.eval_preset import EvalPreset
from jobs.device import resolve_device
from training.backbone import build_backbone
from training.finetune import accuracy
from training.model import SimSiam
from training.refine import predict
from training.settings import build_settings
from training.train import TrainJob, downstream

REPO = Path(__file__).resolve().parent.parent
# The demo's own settings (scripts/demo.sh): its colours are random, its patterns a few pixels wide.
DATASET_SETTINGS = {
    "demo": {"lr": 0.1, "cj_hue": 0.5, "gray_prob": 0.5, "min_scale": 0.5},
    "photo": {},
}


# (a)-(c) are scored on `test`: more test images than the generators' defaults, for a steadier score.
BENCH_SIZES = {"demo": (500, 100, 50), "photo": (160, 20, 20)}


def _run(cmd: list[str], runs: Path) -> None:
    """Run a client; its log (progress bars included) goes to runs/<client>.log, shown only if it fails."""
    log = runs / f"{Path(cmd[1]).stem}.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "SIMSIAM_RUNS_DIR": str(runs)}, stdout=out, stderr=out)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")


def product(dataset: Path, settings: dict, runs: Path, device: str = "cpu") -> tuple[Path, dict, float]:
    """(a): client_train.py then client_test.py; returns (model folder, trial.txt, test accuracy)."""
    annotation = json.dumps({"advance_settings": settings})
    _run([sys.executable, "client_train.py", "--dataset_path", str(dataset), "--device", device, "--trial_name",
          "bench", "--annotation_data", annotation], runs)  # fmt: skip
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    model = Path(trial["model_path"])
    _run([sys.executable, "client_test.py", "--dataset_path", str(dataset), "--model_path", str(model),
          "--used_model", "SimSiam_bench", "--device", "cpu"], runs)  # fmt: skip
    test = json.loads((runs / "metric" / "trial.txt").read_text())
    return model, trial, test["test_result"]["SimSiam"]["test"]["acc"]


def test_accuracy(
    encoder: torch.nn.Module, head: torch.nn.Linear, dataset: Path, classes: list[str], preset: EvalPreset
) -> float:
    test = read_labelled(dataset, "test", classes=classes)
    pred = predict(encoder, head, test.paths, preset, torch.device("cpu"))
    return accuracy(pred, test.labels)


def probe_of(model: Path, dataset: Path, preset: EvalPreset) -> float:
    """(c): the pretrained encoder of the product's run (its checkpoint), frozen, probe head on all of valid."""
    (ckpt,) = (model / "checkpoints").glob("*.ckpt")
    backbone = SimSiam.load_from_checkpoint(ckpt, map_location="cpu").backbone.eval()
    backbone = backbone.to(memory_format=torch.contiguous_format)
    valid = read_labelled(dataset, "valid")
    features, kept, _ = run_frozen(backbone, valid.paths, preset, torch.device("cpu"), num_workers=2)
    head = fit_head(features, [valid.labels[i] for i in kept], len(valid.classes))
    return test_accuracy(backbone, head, dataset, valid.classes, preset)


def from_scratch(
    dataset: Path, settings: dict, seed: int, device: str = "cpu", start: torch.nn.Module | None = None
) -> tuple[float, float, int, torch.nn.Module]:
    """(b): random init (or (b'): the encoder `start`) through the product's downstream phase on `device` (the one
    (a) trained on, with (a)'s precision in `settings`: seconds on a GPU and on a CPU buy different amounts of
    training); returns (held-out acc, test acc, epochs, the refined encoder)."""
    s = build_settings(settings)
    torch.manual_seed(seed)
    backbone = build_backbone(s.backbone, s.small_stem)[0] if start is None else start
    valid = read_labelled(dataset, "valid")
    job = TrainJob(dataset, resolve_device(device), "scratch", s, Path(tempfile.gettempdir()))
    preset = EvalPreset(input_size=s.input_size)
    result = downstream(job, backbone, valid, preset, Skipped())
    epochs = result.refined.epochs if result.refined else 0
    test = test_accuracy(result.encoder, result.head, dataset, valid.classes, preset)
    return result.acc, test, epochs, result.encoder.cpu()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo", help="demo, photo, or a dataset folder")
    p.add_argument("--budget_s", type=float, default=180, help="training seconds per classifier (default 180)")
    p.add_argument("--pretrain_share", type=float, default=2 / 3, help="(a)'s share for pretraining (default 2/3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--valid_per_class", type=int, default=None, help="labelled images per class (default: 100/20)")
    p.add_argument(
        "--extra_train_per_class", type=int, default=0, help="demo: more unlabelled images per class, same valid/test"
    )
    p.add_argument("--input_size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="where (a) and (b) train: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--settings", default="{}", help="extra settings for every arm, as JSON")
    p.add_argument("--no_scratch", action="store_true", help="skip (b), e.g. when only the split changes")
    p.add_argument("--keep_runs", type=Path, default=None, help="keep (a)'s runs here (<dir>/seed<N>/job<K>)")
    p.add_argument("--chain", type=int, default=1, help="jobs per seed, each from the previous one (default 1)")
    a = p.parse_args()
    preset = EvalPreset(input_size=a.input_size)
    train, valid, test = BENCH_SIZES.get(a.dataset, (None, None, None))
    dataset = bench_dataset(a.dataset, train, a.valid_per_class or valid, test, a.extra_train_per_class)
    common = {
        "input_size": a.input_size,
        "batch_size": 64,
        "num_workers": 2,
        "epochs": 10_000,
        "refine_epochs": 10_000,  # the budgets end both stages
        **DATASET_SETTINGS.get(a.dataset, {}),
        **json.loads(a.settings),
    }
    pre = a.budget_s * a.pretrain_share
    rows = []
    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as tmp:  # the whole chain: job k reads job k-1's model folder
            init, start = json.loads(a.settings).get("init", ""), None
            for job in range(1, a.chain + 1):
                runs = (a.keep_runs or Path(tmp)) / f"seed{seed}" / f"job{job}"
                runs.mkdir(parents=True, exist_ok=True)
                settings = {**common, "seed": seed, "time_budget_s": pre, "refine_time_budget_s": a.budget_s - pre}
                settings["init"] = init
                t = time.monotonic()
                model, trial, acc_a = product(dataset, settings, runs, a.device)
                info = json.loads((model / "model_info.json").read_text())
                took = trial["train_consuming"]["SimSiam"]
                acc_c = probe_of(model, dataset, preset)
                print(f"seed {seed} job {job}: (a) {acc_a:.4f}  (c) {acc_c:.4f}  [{time.monotonic() - t:.0f} s]")
                init = str(model)  # its SimSiam checkpoint: the product's init
                t = time.monotonic()
                if a.no_scratch:  # (b) does not depend on the split: take it from a run at the same budget and seed
                    held_b, acc_b, epochs_b = math.nan, math.nan, 0
                else:
                    # Supervised only, trained until the budget ends whatever epochs --settings gives (a)
                    scratch = {
                        **common,
                        "seed": seed,
                        "refine_time_budget_s": a.budget_s,
                        "refine_epochs": 10_000,
                        "precision": info["pretraining"]["precision"],  # what (a) ran
                        "init": "",
                    }
                    held_b, acc_b, epochs_b, start = from_scratch(dataset, scratch, seed, a.device, start)
                b_time = time.monotonic() - t
                print(f"seed {seed} job {job}: (b) {acc_b:.4f}  [{b_time:.0f} s]", flush=True)
                rows.append(
                    {
                        "seed": seed,
                        "job": job,
                        "a": acc_a,
                        "b": acc_b,
                        "c": acc_c,
                        "a_valid": trial["metric_value"],
                        "b_valid": held_b,
                        "a_probe_valid": info["metrics"]["probe_acc"],
                        "a_steps": info["pretraining"]["steps"],
                        "a_refine_epochs": info["metrics"].get("refine_epochs"),
                        "b_refine_epochs": epochs_b,
                        "a_s": took["train_time"] + took["valid_time"],
                        "b_s": b_time,
                    }
                )

    valid = read_labelled(dataset, "valid")
    test = read_labelled(dataset, "test", classes=valid.classes)
    n_train = len(list((dataset / "train" / "images").rglob("*.*")))
    print(
        f"\ndataset {a.dataset} ({dataset}): {n_train} unlabelled, {len(valid.paths)} labelled valid, "
        f"{len(test.paths)} test, {len(valid.classes)} classes; budget {a.budget_s:.0f} s per classifier, "
        f"(a) pretrains {pre:.0f} s; device {a.device}; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}; settings {common}"
    )
    head = f"{'seed':>5} {'job':>4} {'(a) product':>12} {'(b) scratch':>12} {'(c) probe':>10} {'a-c':>7} {'a-b':>7}"
    print(head + f" {'a valid':>8} {'b valid':>8} {'a steps':>8} {'a ep':>5} {'b ep':>5} {'a s':>6} {'b s':>6}")
    for r in rows:
        print(
            f"{r['seed']:>5} {r['job']:>4} {r['a']:>12.4f} {r['b']:>12.4f} {r['c']:>10.4f} "
            f"{100 * (r['a'] - r['c']):>+7.1f} {100 * (r['a'] - r['b']):>+7.1f} {r['a_valid']:>8.4f} "
            f"{r['b_valid']:>8.4f} {r['a_steps']:>8} {r['a_refine_epochs']!s:>5} {r['b_refine_epochs']:>5} "
            f"{r['a_s']:>6.0f} {r['b_s']:>6.0f}"
        )
    for job in range(1, a.chain + 1):
        at = [r for r in rows if r["job"] == job]
        for key, name in (("a", "(a) product"), ("b", "(b) scratch"), ("c", "(c) probe")):
            v = np.asarray([r[key] for r in at])
            print(f"job {job} {name:<12} test mean {v.mean():.4f}  spread {v.max() - v.min():.4f}")
        _differences(f"job {job}: (a) - (c)", [r["a"] - r["c"] for r in at], "target +10")
        _differences(f"job {job}: (a) - (b)", [r["a"] - r["b"] for r in at], "target +5")
        if job > 1:  # the chain's own targets: against job 1 of (a) and of (b), and the labels-only chain
            first = {r["seed"]: r for r in rows if r["job"] == 1}
            _differences(f"job {job}: (a) - job 1 (a)", [r["a"] - first[r["seed"]]["a"] for r in at], "target +5")
            _differences(f"job {job}: (a) - job 1 (b)", [r["a"] - first[r["seed"]]["b"] for r in at], "target +5")
            _differences(f"job {job}: (a) - (b') labels-only chain", [r["a"] - r["b"] for r in at], "measured")


def _differences(name: str, d: list[float], target: str) -> None:
    v = 100 * np.asarray(d)
    print(f"{name}: {v.mean():+.1f} pt (per seed {', '.join(f'{x:+.1f}' for x in v)}; {target})")


if __name__ == "__main__":
    main()
