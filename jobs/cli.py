"""Command-line arguments the client scripts share (SPEC.md defaults), defined once. No torch import here:
the clients check their arguments before loading the heavy stack."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

from jobs.outputs import DEFAULT_RUNS, no_room

SPEC_MODEL_PATH = "/app/tianji/runs/models/91e2c5a9-35e4-45ee-90e4-c53d85558bbc"
SPEC_USED_MODEL = "SimSiam_autotables-2503-train-1"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        type=str,
        default="cuda",
        help="cuda, cuda:N or cpu; cuda without a GPU falls back to CPU (default: %(default)s)",
    )


def add_model_folder(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model_path",
        type=str,
        default=SPEC_MODEL_PATH,
        help="model folder written by client_train.py, holding <used_model>.mar (default: %(default)s)",
    )
    p.add_argument(
        "--used_model",
        type=str,
        default=SPEC_USED_MODEL,
        help="model name: gened_model_name in trial.txt (default: %(default)s)",
    )


def add_runs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs_dir",
        type=str,
        default=str(DEFAULT_RUNS),
        help="output root holding models/ and metric/ (default: %(default)s, or $SIMSIAM_RUNS_DIR)",
    )


def setup_logging() -> None:
    # A file name that is not UTF-8 (lone surrogates after os.fsdecode) is printed escaped, not a crash.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def job_failure(e: BaseException, runs_dir: Path, folder: str, log: logging.Logger) -> int:
    """Exit code for Ctrl-C or a full disk (logged with what was kept); anything else is a bug and is re-raised."""
    if isinstance(e, KeyboardInterrupt):
        log.error("interrupted: no %s was committed and trial.txt was not changed", folder)
        return 130
    # A full disk (or quota, or file-size limit) fails some write deep in torch, Lightning or zipfile.
    err = no_room(e, runs_dir.resolve())
    if err is None:
        raise e
    log.error("%s", err)
    return 2
