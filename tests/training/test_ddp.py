"""Two-process DDP training on CPU (gloo), end to end: one model folder, one trial.txt, from rank 0."""

import json
import re
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, run_train


# batch 16 over 18 train images: each rank gets 9, and a batch of 16 with drop_last gave every rank 0 steps (a
# random encoder exported as trained) until the batch was capped at the rank's share.
@pytest.mark.parametrize("batch_size", [8, 16])
def test_two_process_ddp_on_cpu_writes_one_model_folder(tiny_dataset, tmp_path, batch_size):
    settings = {**TINY_SETTINGS, "strategy": "ddp", "devices": 2, "batch_size": batch_size}
    proc = run_train(tiny_dataset, tmp_path, trial_name="ddp", settings=settings, device="cpu", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "Initializing distributed: GLOBAL_RANK: 1" in proc.stderr
    models = list((tmp_path / "models").iterdir())
    assert len(models) == 1 and not models[0].name.startswith("."), models
    trial = json.loads((tmp_path / "metric" / "trial.txt").read_text())
    assert Path(trial["model_path"]) == models[0].resolve()
    assert (models[0] / "SimSiam_ddp.mar").is_file()
    info = json.loads((models[0] / "model_info.json").read_text())
    # lr scaled by the global batch: 2 processes x 8
    hparams = (models[0] / "logs" / "hparams.yaml").read_text()
    assert "devices: 2" in hparams and info["pretraining"]["steps"] >= 1
    assert proc.stdout.count("valid accuracy") == 1  # the downstream evaluation ran once
    # Each rank decoded its own share (the DistributedSampler's 9 of 18), not the whole set.
    decoded = sorted(re.findall(r"rank (\d): (\d+) of 18 train images decoded", proc.stderr))
    assert [r for r, _ in decoded] == ["0", "1"], proc.stderr[-3000:]
    assert all(8 <= int(n) <= 10 for _, n in decoded), decoded
