"""Offline test: score DATASET/test/images/<class>/** with a trained model, as the server would.

    python client_test.py --dataset_path runs/demo_dataset --model_path runs/models/<uuid4> \
        --used_model SimSiam_autotables-2503-train-1 --device cpu

Writes a new runs/models/<uuid4>/ (evaluation_<unix seconds>.json, confusion_matrix.png) and
runs/metric/trial.txt (SPEC.md, "client_test.py").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.cli import add_model_folder, job_parser, report, run_job, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = job_parser(__doc__, "dataset root; its test/images/<class>/ split is scored")
    add_model_folder(p)
    p.add_argument(
        "--model_format",
        choices=("torchscript", "export", "onnx"),
        default="torchscript",
        help="which of the model folder's files scores: model.pt (TorchScript, what TorchServe serves), model.pt2 "
        "(torch.export) or model.onnx (ONNX Runtime); the same classifier (default: %(default)s)",
    )
    return p


def main(args: argparse.Namespace) -> int:
    log = setup_logging("client_test")
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
    from jobs.device import DeviceError, resolve_device
    from jobs.outputs import OutputError

    runs = Path(args.runs_dir)
    code, result = run_job(
        lambda: run(TestJob(dataset, model, resolve_device(args.device), runs, args.model_format)),
        (DatasetError, ModelFolderError, OutputError, DeviceError),
        runs,
        "output folder",
        log,
    )
    if code or result is None:
        return code
    trial, evaluation = result
    print(f"\n{format_summary(evaluation)}\n")
    evaluation_file = f"{trial['predict_result_filename']} (+ confusion_matrix.png)"
    return report({"output folder": trial["model_path"], "evaluation": evaluation_file}, runs)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
