"""scripts/gpu_env.py: the GPU host's environment is chosen without replacing its torch, and every reason the host
cannot run the check is named before any step runs. The host's facts are faked here (no GPU needed)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_env", REPO / "scripts" / "gpu_env.py")
gpu_env = sys.modules["gpu_env"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_env)

HOST = {"torch": "2.11.0+cu130", "torchvision": "0.26.0", "numpy": "2.5.2", "Pytorch_Lightning": "2.6.6"}


def test_a_host_with_everything_installs_nothing_and_pins_what_it_has() -> None:
    p = gpu_env.plan((3, 12), HOST, set(), None)
    assert p.errors == [] and p.install == []
    assert "torch==2.11.0+cu130" in p.constraints and "torchvision==0.26.0" in p.constraints
    assert "pytorch-lightning==2.6.6" in p.constraints  # names normalised as pip does


def test_missing_packages_are_installed_under_the_hosts_pins() -> None:
    p = gpu_env.plan((3, 12), HOST, {"lightly", "ts", "model_archiver"}, None)
    assert p.errors == []
    assert p.install == ["lightly==1.6.0", "torchserve==0.12.0", "torch-model-archiver==0.12.0"]
    assert not any(c.startswith("lightly") for c in p.constraints)


def test_every_reason_is_named_at_once() -> None:
    wheels = ["lightly-1.5.0-py3-none-any.whl", "torchserve-0.12.0-py3-none-any.whl"]
    p = gpu_env.plan((3, 10), {"numpy": "2.5.2"}, {"lightly", "ts", "model_archiver"}, wheels)
    text = "\n".join(p.errors)
    assert "Python 3.10: the code needs >= 3.11" in text
    assert "torch is not installed" in text and "torchvision is not installed" in text
    assert "lightly==1.6.0: not in the wheel folder" in text  # 1.5.0 is not the pinned version
    assert "torch-model-archiver==0.12.0: not in the wheel folder" in text
    assert "torchserve" not in text  # its wheel is there


def test_a_host_without_torch_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    host = next((p for p in ("/usr/bin/python3", shutil.which("python3")) if p and Path(p).exists()), None)
    if host is None or subprocess.run([host, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("no Python without torch on this machine")
    venv = tmp_path / "venv"
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_env.py", "--python", host, "--venv", str(venv), "--wheels", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "torch is not installed" in proc.stderr and "torchvision" in proc.stderr
    assert not venv.exists()


def test_this_machines_venv_needs_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_env.py", "--venv", str(tmp_path / "v"), "--wheels", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == sys.executable and not (tmp_path / "v").exists()
