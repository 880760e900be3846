"""Command-line arguments the client scripts share (SPEC.md defaults), defined once. No torch import here:
the clients check their arguments before loading the heavy stack."""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from jobs.outputs import DEFAULT_RUNS, no_room

SPEC_MODEL_PATH = "/app/tianji/runs/models/91e2c5a9-35e4-45ee-90e4-c53d85558bbc"
SPEC_USED_MODEL = "SimSiam_autotables-2503-train-1"
T = TypeVar("T")


def job_parser(doc: str | None, dataset_holds: str) -> argparse.ArgumentParser:
    """The batch clients' parser: --dataset_path (saying what the client reads there), --device, --runs_dir."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset_path", type=str, default="/data/flower_classifier/", help=f"{dataset_holds} (default: %(default)s)"
    )
    add_device(p)
    add_runs_dir(p)
    return p


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


def setup_logging(name: str | None = None) -> logging.Logger:
    # A file name that is not UTF-8 (lone surrogates after os.fsdecode) is printed escaped, not a crash.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_notes()
    return logging.getLogger(name)


def quiet_library_notes() -> None:
    """A user's console shows what the user can act on. Two lines of the pinned libraries are notes to their
    callers, not to a user: Lightning's advertisement for its cloud logger, and its own use of a torch pytree API
    that torch deprecated (`pytorch_lightning/utilities/_pytree.py`). The product's own TorchScript
    warnings are silenced where it calls torch.jit (export/torchscript.py, handler/classifier.py)."""
    leaf_spec = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=leaf_spec, category=FutureWarning)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )


def run_job(
    work: Callable[[], T], user_errors: tuple[type[Exception], ...], runs_dir: Path, folder: str, log: logging.Logger
) -> tuple[int, T | None]:
    """(0, what `work` returned), or (exit code, None): 2 for the user's errors (one line naming the fix) and a
    full disk, 130 for Ctrl-C or the platform's SIGTERM; anything else is a bug and re-raises (exit 1)."""
    from jobs import stop

    # A platform stops jobs with SIGTERM: unwind like Ctrl-C so the staging folder is removed and trial.txt
    # is left as it was (Lightning chains this handler after its own). Both are remembered (jobs/stop.py).
    stop.install()
    try:
        return 0, work()
    except user_errors as e:
        log.error("%s", e)
        return 2, None
    except BaseException as e:
        return job_failure(e, runs_dir, folder, log), None


def report(written: dict[str, str], runs_dir: Path) -> int:
    """Print where the job's outputs are, then trial.txt's path; the exit code of a job that succeeded."""
    for label, where in {**written, "trial file": str(runs_dir.resolve() / "metric" / "trial.txt")}.items():
        print(f"{label + ':':<14} {where}")
    return 0


def job_failure(e: BaseException, runs_dir: Path, folder: str, log: logging.Logger) -> int:
    """Exit code for a stop or a full disk (logged with what was kept); anything else is a bug and is re-raised.

    A stop exits as a shell reports a signal, 128 + its number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM (a
    platform's preemption), in every stage -- Lightning turns the KeyboardInterrupt of a stop during `fit` into
    `exit(1)` after its own clean-up, so the signal recorded by jobs/stop.py decides, not the exception's type.
    """
    from jobs import stop

    signum = stop.requested()
    if isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and signum is not None):
        signum = signum or signal.SIGINT
        log.error(
            "interrupted (%s): no %s was committed and trial.txt was not changed",
            signal.Signals(signum).name,
            folder,
        )
        return 128 + signum
    # A full disk (or quota, or file-size limit) fails some write deep in torch, Lightning or zipfile.
    err = no_room(e, runs_dir.resolve())
    if err is None:
        raise e
    log.error("%s", err)
    return 2
