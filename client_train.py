"""Train SimSiam on DATASET/train/images, refine it on DATASET/valid's labels, export a TorchServe .mar.

    python client_train.py --dataset_path runs/demo_dataset --device cpu \
        --annotation_data "{'advance_settings': {'epochs': 10, 'input_size': 64}}"

Writes runs/models/<uuid4>/ and runs/metric/trial.txt (SPEC.md, "client_train.py").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jobs.cli import job_parser, report, run_job, setup_logging

# trial.txt's `total` is the whole run: torch and Lightning are imported later, inside main().
STARTED = time.monotonic()


def get_args_parser() -> argparse.ArgumentParser:
    p = job_parser(__doc__, "dataset root with train/, valid/, test/")
    p.add_argument(
        "--trial_name",
        type=str,
        default="autotables-2503-train-1",
        help="the model is named SimSiam_<trial_name> (default: %(default)s)",
    )
    p.add_argument(
        "--annotation_data",
        type=str,
        default="{'advance_settings':{}}",
        help="Python-literal or JSON dict; advance_settings overrides the training settings "
        "(see README.md) (default: %(default)s)",
    )
    return p


def main(args: argparse.Namespace) -> int:
    log = setup_logging("client_train")
    # Validate everything cheap before importing the heavy stack or touching the disk.
    from training.settings import SettingsError, parse_annotation_data

    try:
        settings = parse_annotation_data(args.annotation_data)
    except SettingsError as e:
        log.error("%s", e)
        return 2
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.trial_name):
        log.error(
            "--trial_name %r: use letters, digits, '-', '_' and '.' (it names the TorchServe model)", args.trial_name
        )
        return 2
    dataset = Path(args.dataset_path)
    if not dataset.is_dir():
        log.error("--dataset_path %s is not a folder; point it at a dataset with train/, valid/, test/", dataset)
        return 2

    from dataset.reader import DatasetError
    from jobs.device import DeviceError, resolve_device
    from jobs.outputs import OutputError, ResumeError
    from training.init import InitError
    from training.train import TrainJob, run

    runs = Path(args.runs_dir)
    # A failure after pretraining keeps the checkpoint (training/train.py); the message says where.
    code, trial = run_job(
        lambda: run(TrainJob(dataset, resolve_device(args.device), args.trial_name, settings, runs, STARTED)),
        (DatasetError, OutputError, ResumeError, DeviceError, InitError),
        runs,
        "model folder",
        log,
    )
    if code:
        return code
    if not trial:
        return 0  # a DDP worker: rank 0 reports
    how = "linear probe" if settings.refine == "probe" else "fine-tuned encoder + head"
    print(f"\nvalid accuracy (held out, {how}): {trial['metric_value']:.4f}")
    return report({"model folder": trial["model_path"]}, runs)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
