"""`init`: pretraining starts from an encoder the user already has -- a model folder, a .ckpt, a ResNet
state_dict file, or torchvision's ImageNet weights -- and a mismatch is an exit-2 error before anything is
written."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY_SETTINGS, run_train

from training.init import InitError, apply_init, read_init
from training.model import SimSiam
from training.settings import build_settings


def tiny(**overrides) -> SimSiam:
    return SimSiam(build_settings({**TINY_SETTINGS, **overrides}))


def test_a_torchvision_state_dict_starts_the_encoder(tmp_path: Path) -> None:
    """As a user saves downloaded ImageNet weights: a plain torchvision resnet18 state_dict, its fc included."""
    resnet = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(resnet.conv1.weight)
    torch.save(resnet.state_dict(), tmp_path / "weights.pt")
    model = tiny(input_size=64)  # the ImageNet stem, as the file's
    weights = read_init(str(tmp_path / "weights.pt"), model)
    assert weights.kind == "state_dict" and weights.loaded == ["encoder"]
    apply_init(weights, model)
    assert torch.equal(model.backbone.conv1.weight, resnet.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)


def test_a_mismatch_names_what_differs(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(InitError, match=r"not an encoder for this job's resnet18 .* unknown key\(s\) \(backbone.layer"):
        read_init(str(tmp_path / "r34.pt"), tiny(input_size=64))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(InitError, match=r"cifar stem .*conv1.weight: \(64, 3, 7, 7\) there, \(64, 3, 3, 3\) here"):
        read_init(str(tmp_path / "r18.pt"), tiny())  # 32 px: the CIFAR stem
    with pytest.raises(InitError, match="no such file or folder"):
        read_init(str(tmp_path / "nowhere"), tiny())
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(InitError, match="cannot be read as torch weights"):
        read_init(str(tmp_path / "junk.pt"), tiny())


def test_imagenet_without_a_network_says_so(monkeypatch) -> None:
    def offline(self, progress=True, check_hash=False):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(InitError, match=r"may have no network.*init=.weights\.pt."):
        read_init("imagenet", tiny(input_size=64))


def test_a_model_folder_starts_the_next_version_and_is_recorded(tiny_dataset: Path, trained_model: dict, tmp_path):
    """v2 from v1: encoder, projector and predictor from v1's checkpoint; model_info.json names v1 and its
    metrics (the chain); the weights pretraining started from are v1's."""
    parent = Path(trained_model["model_path"])
    weights = read_init(str(parent), tiny())
    assert weights.kind == "model folder" and weights.loaded == ["encoder", "projector", "predictor"]
    [ckpt] = parent.glob("checkpoints/*.ckpt")
    v1 = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model = tiny()
    apply_init(weights, model)
    assert torch.equal(model.state_dict()["prediction_head.layers.0.weight"], v1["prediction_head.layers.0.weight"])

    runs = tmp_path / "runs"
    proc = run_train(tiny_dataset, runs, trial_name="v2", settings={**TINY_SETTINGS, "init": str(parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pretraining starts from model folder {parent}: encoder, projector, predictor" in proc.stderr
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["init"]["source"] == str(parent) and info["init"]["loaded"] == ["encoder", "projector", "predictor"]
    assert info["init"]["parent"]["model_name"] == trained_model["gened_model_name"]
    assert info["init"]["parent"]["metrics"]["acc"] == trained_model["metric_value"]


def test_a_bad_init_stops_the_job_before_anything_is_written(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pt")
    runs = tmp_path / "runs"
    proc = run_train(tiny_dataset, runs, settings={**TINY_SETTINGS, "init": str(tmp_path / "r50.pt")})
    assert proc.returncode == 2 and "not an encoder for this job's resnet18" in proc.stderr
    assert "Traceback" not in proc.stderr and not runs.exists()


def test_a_model_folder_without_its_checkpoint_is_an_error_not_its_refined_encoder(
    tiny_dataset: Path, trained_model: dict, tmp_path: Path
) -> None:
    """model.pt's encoder was fine-tuned on valid: never a fallback (the next job would be graded on labels it has
    seen). Exit 2 naming what is missing, before anything is written."""
    import shutil

    folder = tmp_path / "no-checkpoints"
    shutil.copytree(trained_model["model_path"], folder)
    shutil.rmtree(folder / "checkpoints")
    assert (folder / "model.pt").is_file()
    with pytest.raises(InitError, match=r"without its SimSiam checkpoint \(checkpoints/\*\.ckpt"):
        read_init(str(folder), tiny())
    runs = tmp_path / "runs"
    proc = run_train(tiny_dataset, runs, settings={**TINY_SETTINGS, "init": str(folder)})
    assert proc.returncode == 2 and "metric_value optimistic" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not runs.exists()
