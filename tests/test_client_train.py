"""client_train.py end to end: the spec's trial.txt, and clear failures that write nothing."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, run_train

TRIAL_TYPES = {
    "recom_model": str,
    "gened_model_name": str,
    "metric_type": str,
    "metric_value": float,
    "used_models": str,
    "model_path": str,
    "model_params": dict,
    "eval_result": dict,
    "predict_prob": dict,
    "train_consuming": dict,
}

# Tiny, fast steps and far more epochs than a test waits for: the run ends by budget or by a signal.
ENDLESS = {
    "epochs": 1000,
    "batch_size": 8,
    "input_size": 32,
    "num_workers": 0,
    "proj_dim": 32,
    "pred_hidden_dim": 8,
    "cv_folds": 2,
}


def test_trial_txt_matches_the_spec_key_for_key_and_type_for_type(trained_model):
    trial = json.loads((Path(trained_model["runs_dir"]) / "metric" / "trial.txt").read_text())
    assert list(trial) == list(TRIAL_TYPES)
    for key, typ in TRIAL_TYPES.items():
        assert type(trial[key]) is typ, key
    assert trial["recom_model"] == trial["used_models"] == "SimSiam"
    assert trial["gened_model_name"] == "SimSiam_tiny" and trial["metric_type"] == "acc"
    assert 0.0 <= trial["metric_value"] <= 1.0 and round(trial["metric_value"], 4) == trial["metric_value"]
    assert trial["eval_result"] == {"SimSiam": {"eval": {"acc": trial["metric_value"]}}}
    consuming = trial["train_consuming"]["SimSiam"]
    assert list(consuming) == ["total", "train_time", "valid_time"]
    assert all(type(v) is float and v > 0 for v in consuming.values())
    assert consuming["total"] >= consuming["train_time"] + consuming["valid_time"]
    model_path = Path(trial["model_path"])
    assert model_path.is_absolute() and model_path.parent == Path(trained_model["runs_dir"]).resolve() / "models"
    assert (model_path / "SimSiam_tiny.mar").is_file()
    assert trial["model_params"]["epochs"] == 1 and trial["model_params"]["backbone"] == "resnet18"
    # No staging folder is left behind once the model folder is committed.
    assert [p.name for p in model_path.parent.iterdir() if p.name.startswith(".")] == []
    # What the run used, for a user comparing speeds: on a CPU the augmentation runs in the loader workers.
    pretraining = json.loads((model_path / "model_info.json").read_text())["pretraining"]
    assert pretraining["augment_on"] == "workers" and pretraining["precision"] in ("bf16-mixed", "32-true")


def _assert_nothing_written(runs: Path):
    assert not (runs / "metric" / "trial.txt").exists()
    assert not any((runs / "models").glob("*")) if (runs / "models").exists() else True


def test_unknown_setting_fails_before_anything_is_written(tiny_dataset, tmp_path):
    proc = run_train(tiny_dataset, tmp_path, settings={"epochz": 3})
    assert proc.returncode != 0
    assert "epochz" in proc.stderr and "Valid keys" in proc.stderr and "batch_size" in proc.stderr
    _assert_nothing_written(tmp_path)


def test_valid_with_one_class_is_a_clear_error(tiny_dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    for cls in list((ds / "valid" / "images").iterdir())[1:]:
        shutil.rmtree(cls)
    runs = tmp_path / "runs"
    proc = run_train(ds, runs)
    assert proc.returncode != 0 and "at least 2" in proc.stderr
    _assert_nothing_written(runs)


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = run_train(tmp_path / "nope", tmp_path / "runs")
    assert proc.returncode != 0 and "is not a folder" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_falls_back_to_cpu_and_a_wall_clock_budget_stops_training(tiny_dataset, tmp_path):
    settings = {**ENDLESS, "time_budget_s": 3}
    proc = run_train(tiny_dataset, tmp_path, trial_name="budget", settings=settings, device="cuda")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "falling back to CPU" in proc.stderr
    trial = json.loads((tmp_path / "metric" / "trial.txt").read_text())
    assert trial["train_consuming"]["SimSiam"]["train_time"] < 60
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["epochs"] < 1000


def test_sigterm_keeps_only_a_resumable_checkpoint_and_resume_finishes_the_run(tiny_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    settings = ENDLESS
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "client_train.py"),
            "--dataset_path",
            str(tiny_dataset),
            "--device",
            "cpu",
            "--trial_name",
            "term",
            "--annotation_data",
            json.dumps({"advance_settings": settings}),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    models = tmp_path / "models"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(models.glob(".staging-*/checkpoints/*.ckpt")):
        time.sleep(0.5)  # wait for the first epoch's checkpoint
    time.sleep(1)  # let the checkpoint file be completely written
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]  # 143: a preemption, as a scheduler reads it
    assert "interrupted (SIGTERM)" in err
    assert not (tmp_path / "metric" / "trial.txt").exists()
    # Nothing trial.txt could point at: only a dot-folder holding the checkpoint.
    assert [p.name.split("-")[0] for p in models.iterdir()] == [".interrupted"], err[-2000:]
    assert "resume='last'" in err

    resumed = run_train(
        tiny_dataset, tmp_path, trial_name="term", settings={**settings, "time_budget_s": 3, "resume": "last"}
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    trial = json.loads((tmp_path / "metric" / "trial.txt").read_text())
    assert list(trial) == list(TRIAL_TYPES) and Path(trial["model_path"]).is_dir()
    assert [p for p in models.iterdir() if p.name.startswith(".")] == []  # the checkpoint was consumed
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["epochs"] >= 1  # the epoch counter continued from the checkpoint


def test_resume_without_an_interrupted_run_is_a_clear_error(tiny_dataset, tmp_path):
    proc = run_train(tiny_dataset, tmp_path, settings={**TINY_SETTINGS, "resume": "last"})
    assert proc.returncode != 0 and "no interrupted run" in proc.stderr


def test_unwritable_runs_directory_is_a_clear_error(tiny_dataset, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs directory should be")
    proc = run_train(tiny_dataset, blocker / "runs")
    assert proc.returncode != 0
    assert "cannot write to the runs directory" in proc.stderr and "SIMSIAM_RUNS_DIR" in proc.stderr
