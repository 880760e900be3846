"""bench/compare_model.py, the demo's last word on what self-supervision added, on the session's tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_compare_model_prints_the_three_classifiers(tiny_dataset: Path, trained_model: dict) -> None:
    cmd = [sys.executable, "-m", "bench.compare_model", "--dataset_path", str(tiny_dataset)]
    proc = subprocess.run(
        [*cmd, "--model_path", trained_model["model_path"]], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Fixed columns: name (44), valid held out (17), test (8).
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("SimSiam + ", "supervised from scratch"))]
    assert len(lines) == 3, proc.stdout
    rows = {ln[:44].strip(): (float(ln[44:61]), float(ln[61:69])) for ln in lines}
    assert all(0 <= valid <= 1 and 0 <= test <= 1 for valid, test in rows.values())
    info = json.loads((Path(trained_model["model_path"]) / "model_info.json").read_text())
    served = info["metrics"]["refine_choice"]["chosen"]  # the default, refine auto, records what it served
    assert rows[f"SimSiam + {served} (this model)"][0] == trained_model["metric_value"]
    assert "self-supervision added (test)" in proc.stdout
    assert "both trained on cpu (" in proc.stdout  # the device and precision, as model_info.json recorded them


def test_compare_model_refuses_a_baseline_on_another_device(trained_model: dict, tmp_path: Path) -> None:
    """A model trained on a GPU is not compared with a from-scratch baseline given its seconds on a CPU."""
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model["model_path"], model)
    info = json.loads((model / "model_info.json").read_text())
    assert info["pretraining"]["device"] == "cpu"
    info["pretraining"]["device"] = "cuda:0"
    (model / "model_info.json").write_text(json.dumps(info))
    cmd = [sys.executable, "-m", "bench.compare_model", "--dataset_path", str(tmp_path), "--model_path", str(model)]
    proc = subprocess.run([*cmd, "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "the model trained on cuda:0" in proc.stderr and "--device cuda:0" in proc.stderr
