"""Offline test: score DATASET/test/images/<class>/** with a trained model, as the server would.

    python client_test.py --dataset_path runs/demo_dataset --model_path runs/models/<uuid4> \
        --used_model SimSiam_autotables-2503-train-1 --device cpu

Writes a new runs/models/<uuid4>/ (evaluation_<unix seconds>.json, confusion_matrix.png) and
runs/metric/trial.txt (SPEC.md, "client_test.py").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jobs.cli import add_device, add_model_folder, add_runs_dir, job_failure, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset_path",
        type=str,
        default="/data/flower_classifier/",
        help="dataset root; its test/images/<class>/ split is scored (default: %(default)s)",
    )
    add_model_folder(p)
    add_device(p)
    add_runs_dir(p)
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging()
    log = logging.getLogger("client_test")
    # Refuse a wrong folder or dataset before importing torch or touching the disk.
    from export.model_folder import ModelFolderError, open_model_folder

    dataset = Path(args.dataset_path)
    if not dataset.is_dir():
        log.error("--dataset_path %s is not a folder; point it at a dataset with test/images/<class>/", dataset)
        return 2
    try:
        model = open_model_folder(args.model_path, args.used_model)
    except ModelFolderError as e:
        log.error("%s", e)
        return 2

    from dataset.reader import DatasetError
    from evaluation.scoring import TestJob, format_summary, run
    from jobs import stop
    from jobs.device import DeviceError, resolve_device
    from jobs.outputs import OutputError

    stop.install()  # a platform's SIGTERM unwinds like Ctrl-C: nothing half-written, trial.txt unchanged
    try:
        device = resolve_device(args.device)
        trial, evaluation = run(TestJob(dataset, model, device, Path(args.runs_dir)))
    except (DatasetError, ModelFolderError, OutputError, DeviceError) as e:  # the user's to fix: exit 2
        log.error("%s", e)
        return 2
    except BaseException as e:  # Ctrl-C or a full disk: a clear message and exit code; a bug re-raises (exit 1)
        return job_failure(e, Path(args.runs_dir), "output folder", log)
    print()
    print(format_summary(evaluation))
    print(f"\noutput folder: {trial['model_path']}")
    print(f"evaluation:    {trial['predict_result_filename']} (+ confusion_matrix.png)")
    print(f"trial file:    {Path(args.runs_dir).resolve() / 'metric' / 'trial.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
