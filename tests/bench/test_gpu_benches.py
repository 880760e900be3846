"""The GPU benches (scripts/gpu_check.sh) run on a CPU too: each path measured, each figure a real rate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from bench.gpu_throughput import ceiling, make_dataset, pipeline
from training.settings import Settings


def test_throughput_measures_device_and_worker_augmentation_and_the_ceiling(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", images=24, input_size=32)
    s = Settings(input_size=32, batch_size=4, num_workers=0, proj_dim=64, pred_hidden_dim=16, augment_on="device")
    cpu = torch.device("cpu")
    rates = [
        pipeline(root, s, cpu, "32-true", steps=2, warmup=1).images_per_s,
        pipeline(
            root, Settings(**{**s.to_dict(), "augment_on": "workers"}), cpu, "32-true", steps=2, warmup=1
        ).images_per_s,
        ceiling(s, cpu, "32-true", steps=2, warmup=1),
    ]
    assert all(0 < r < 1e6 for r in rates), rates


def test_handler_latency_prints_a_row_per_batch_size(trained_model: dict) -> None:
    cmd = [sys.executable, "-m", "bench.handler_latency", "--model_path", trained_model["model_path"]]
    cmd += ["--used_model", trained_model["gened_model_name"], "--device", "cpu", "--batch_sizes", "1", "3"]
    proc = subprocess.run([*cmd, "--repeats", "2", "--side", "64"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 3]
    assert all(float(v) > 0 for r in rows for v in r[1:])


@pytest.mark.slow
def test_the_gpu_check_script_runs_every_step_in_smoke_mode(tmp_path: Path) -> None:
    """SMOKE=1: the same steps on the CPU at toy sizes (~5 min), so the one-shot GPU run has no script bug."""
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "SMOKE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    # Without a GPU every GPU test is skipped: the summary must say that nothing was proven, not count it a pass.
    assert "gpu_tests: all skipped, no GPU (smoke mode: nothing proven)" in summary, summary
    for step in ("throughput", "train", "latency_handler_cpu", "refine_budget"):
        assert f"== {step}: rc 0" in summary, summary
    assert "(a) - (b):" in (tmp_path / "refine_budget.log").read_text()  # the comparison's figures were printed
