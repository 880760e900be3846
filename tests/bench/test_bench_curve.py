"""bench/probe_curve.py runs the product's pieces in a plain loop: a short run must print a probe per step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_SETTINGS


def test_probe_curve_prints_a_probe_at_step_0_and_every_step(tiny_dataset: Path) -> None:
    settings = {k: v for k, v in TINY_SETTINGS.items() if k != "epochs"}
    cmd = [sys.executable, "-m", "bench.probe_curve", "--dataset", str(tiny_dataset), "--steps", "2", "--every", "1"]
    proc = subprocess.run([*cmd, "--settings", json.dumps(settings)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    for _, seconds, probe, knn in rows:
        assert float(seconds) >= 0 and 0 <= float(probe) <= 1 and 0 <= float(knn) <= 1
