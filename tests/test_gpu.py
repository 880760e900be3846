"""The GPU tier: training, client_test.py and the handler on CUDA, held against the CPU path.

    .venv/bin/python -m pytest -m gpu          # skipped without a CUDA GPU; scripts/gpu_check.sh runs it

Tolerance, stated once: a class probability may move by at most PROB_TOL between CUDA and CPU (TF32
convolutions, cuDNN's default from Ampere on, and another summation order move it by ~1e-3). The top-1 class
may then differ only where two classes were within 2 x PROB_TOL, i.e. where neither beats 0.5 + PROB_TOL.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, run_train
from test_client_test import read_outputs, run_client_test

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROB_TOL = 0.01


def assert_same_answers(cpu: list[tuple[str, float]], gpu: list[tuple[str, float]]) -> None:
    """(top-1 class, its probability) per image, CPU beside CUDA, under the module's tolerance."""
    assert len(cpu) == len(gpu) > 0
    for i, ((c_cls, c_p), (g_cls, g_p)) in enumerate(zip(cpu, gpu)):
        if c_cls == g_cls:
            assert abs(c_p - g_p) <= PROB_TOL, (i, c_p, g_p)
        else:  # a near tie on both devices
            assert max(c_p, g_p) <= 0.5 + PROB_TOL, (i, c_cls, c_p, g_cls, g_p)


@pytest.fixture(scope="module")
def gpu_model(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny model trained on cuda with the defaults a GPU user gets: precision auto, augmentation on device."""
    runs = tmp_path_factory.mktemp("gpu_runs")
    proc = run_train(tiny_dataset, runs, trial_name="gpu", device="cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    trial["info"] = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    return trial


def test_training_on_cuda_runs_amp_and_the_device_augmentation(gpu_model: dict) -> None:
    pretraining = gpu_model["info"]["pretraining"]
    ampere = torch.cuda.get_device_capability(0) >= (8, 0)
    assert pretraining["precision"] == ("bf16-mixed" if ampere else "16-mixed")
    assert pretraining["augment_on"] == "device" and pretraining["steps"] >= 1
    assert 0.0 <= gpu_model["metric_value"] <= 1.0
    metrics = gpu_model["info"]["metrics"]
    assert metrics["refine"] == "auto" and "chosen" in metrics["refine_choice"]
    assert metrics["refine_epochs"] >= 1 or metrics["refine_choice"]["chosen"] == "probe"


def test_fp16_amp_with_its_loss_scaler_trains_and_refines(tiny_dataset: Path, tmp_path: Path) -> None:
    """16-mixed (pre-Ampere GPUs): Lightning's scaler in pretraining, refine's own GradScaler after it."""
    proc = run_train(
        tiny_dataset, tmp_path, trial_name="fp16", device="cuda", settings={**TINY_SETTINGS, "precision": "16-mixed"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((tmp_path / "metric" / "trial.txt").read_text())
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["precision"] == "16-mixed"
    losses = [row["loss"] for row in info["metrics"]["refine_curve"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_client_test_on_cuda_agrees_with_cpu(gpu_model: dict, tiny_dataset: Path, tmp_path: Path) -> None:
    answers = {}
    for device in ("cpu", "cuda"):
        runs = tmp_path / device
        proc = run_client_test(
            tiny_dataset, gpu_model["model_path"], gpu_model["gened_model_name"], runs, device=device
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        _, evaluation = read_outputs(runs)
        assert evaluation["device"].startswith(device)
        rows = sorted(evaluation["predictions"], key=lambda r: r["path"])
        answers[device] = [(r["predicted_class"], r["probability"]) for r in rows]
    assert_same_answers(answers["cpu"], answers["cuda"])


def test_the_handler_on_cuda_agrees_with_cpu(gpu_model: dict, tiny_dataset: Path, tmp_path: Path) -> None:
    from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

    from handler.simsiam_handler import SimSiamHandler

    mar = Path(gpu_model["model_path"]) / f"{gpu_model['gened_model_name']}.mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(tmp_path)
    rows = [{"data": p.read_bytes()} for p in sorted((tiny_dataset / "test" / "images").rglob("*")) if p.is_file()]
    answers = {}
    for gpu_id in (None, "0"):
        context = MockContext(model_pt_file="model.pt", model_dir=str(tmp_path), model_file=None, gpu_id=gpu_id)
        handler = SimSiamHandler()
        handler.initialize(context)
        assert handler.device.type == ("cpu" if gpu_id is None else "cuda")
        answers[handler.device.type] = [(a["class"], a["probability"]) for a in handler.handle(rows, context)]
    assert_same_answers(answers["cpu"], answers["cuda"])


def test_device_augmentation_on_cuda_equals_the_cpu_one() -> None:
    """The same random choices give the same views on CUDA as on CPU; choices drawn on CUDA follow the
    probabilities (every op itself equals torchvision's per image: tests/training/test_augment.py)."""
    from training.augment import augment_for
    from training.settings import Settings

    aug = augment_for(Settings(input_size=64))
    x = torch.rand(256, 3, 64, 64)
    torch.manual_seed(0)
    params = aug.draw(len(x))
    want = aug.augment(x, params)
    got = aug.augment(x.cuda(), params.to("cuda")).cpu()
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    drawn = aug.draw(4096, "cuda")
    assert drawn.flip.device.type == "cuda"
    for name, p in [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)]:
        assert abs(getattr(drawn, name).float().mean().item() - p) < 0.03, name


def test_the_model_finishes_uint8_crops_on_cuda() -> None:
    from training.model import SimSiam
    from training.settings import Settings

    model = SimSiam(Settings(input_size=32, proj_dim=64, pred_hidden_dim=16)).cuda()
    crops = [torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device="cuda") for _ in range(2)]
    views = model.on_after_batch_transfer(crops, 0)
    assert all(v.device.type == "cuda" and v.dtype == torch.float32 and v.shape == (8, 3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[1])
