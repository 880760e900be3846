"""Train SimSiam on DATASET/train/images, refine it on DATASET/valid's labels, export a TorchServe .mar.

    python client_train.py --dataset_path runs/demo_dataset --device cpu \
        --annotation_data "{'advance_settings': {'epochs': 10, 'input_size': 64}}"

Writes runs/models/<uuid4>/ and runs/metric/trial.txt (SPEC.md, "client_train.py").
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from jobs.cli import add_device, add_runs_dir, job_failure, setup_logging

# trial.txt's `total` is the whole run: torch and Lightning are imported later, inside main().
STARTED = time.monotonic()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset_path",
        type=str,
        default="/data/flower_classifier/",
        help="dataset root with train/, valid/, test/ (default: %(default)s)",
    )
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
    add_device(p)
    add_runs_dir(p)
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging()
    log = logging.getLogger("client_train")
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
    from jobs import stop
    from jobs.device import DeviceError, resolve_device
    from jobs.outputs import OutputError, ResumeError
    from training.init import InitError
    from training.train import TrainJob, run

    # A platform stops jobs with SIGTERM: unwind like Ctrl-C so the staging folder is removed and trial.txt
    # is left as it was (Lightning chains this handler after its own). Both are remembered (jobs/stop.py).
    stop.install()
    try:
        device = resolve_device(args.device)
        trial = run(TrainJob(dataset, device, args.trial_name, settings, Path(args.runs_dir), STARTED))
    except (DatasetError, OutputError, ResumeError, DeviceError, InitError) as e:  # the user's to fix: one line, exit 2
        log.error("%s", e)
        return 2
    except BaseException as e:  # Ctrl-C or a full disk: a clear message and exit code; anything else is a bug
        # and re-raises with its traceback (exit 1); a failure after pretraining kept the checkpoint (training/train.py)
        return job_failure(e, Path(args.runs_dir), "model folder", log)
    if not trial:
        return 0  # a DDP worker: rank 0 reports
    how = "linear probe" if settings.refine == "probe" else "fine-tuned encoder + head"
    print(f"\nvalid accuracy (held out, {how}): {trial['metric_value']:.4f}")
    print(f"model folder: {trial['model_path']}")
    print(f"trial file:   {Path(args.runs_dir).resolve() / 'metric' / 'trial.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
