"""Shared fixtures: a tiny demo dataset and one tiny trained model folder per test session.

Everything is written under pytest's tmp folders; the repository's runs/ is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Small but real: 1 epoch on 32-px crops with narrow heads, a few seconds on 2 CPU cores.
TINY_SETTINGS = {
    "epochs": 1,
    "batch_size": 16,
    "input_size": 32,
    "num_workers": 0,
    "proj_dim": 64,
    "pred_hidden_dim": 16,
    "cv_folds": 2,
    "cache_mb": 64,
    "refine_epochs": 2,
}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dataset.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    return make_demo_dataset(
        root,
        train_per_class=6,
        valid_per_class=4,
        test_per_class=3,
        min_side=24,
        max_side=72,
        seed=1,
        classes=["dots", "stripes", "checkers"],
    )


def run_train(
    dataset: Path,
    runs_dir: Path,
    trial_name: str = "tiny",
    settings: dict | None = None,
    device: str = "cpu",
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """Run client_train.py as a user would (a subprocess), with SIMSIAM_RUNS_DIR pointed at runs_dir."""
    annotation = json.dumps({"advance_settings": settings if settings is not None else TINY_SETTINGS})
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(runs_dir)}
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "client_train.py"),
            "--dataset_path",
            str(dataset),
            "--device",
            device,
            "--trial_name",
            trial_name,
            "--annotation_data",
            annotation,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def trained_model(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model trained once per session: the trial.txt dict (model_path, gened_model_name, ...)."""
    runs = tmp_path_factory.mktemp("runs")
    proc = run_train(tiny_dataset, runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    trial["runs_dir"] = str(runs)
    return trial


@pytest.fixture(scope="module")
def service(trained_model: dict, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """One real client_infer.py (proxy + TorchServe) per test module, stopped cleanly at its end."""
    from serving_service import start_service

    log_dir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    svc = start_service(trained_model, log_dir / "client_infer.log")
    yield svc
    assert svc.stop() == 0, svc.output()[-3000:]
