"""TorchScript export round trip and the .mar contents."""

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from export.torchscript import Classifier, export_torchscript
from training.backbone import build_backbone


def test_torchscript_round_trip_gives_the_same_outputs(tmp_path):
    encoder, dim = build_backbone("resnet18", small_stem=True)
    head = nn.Linear(dim, 3)
    reloaded = export_torchscript(Classifier(encoder, head).eval(), 32, tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(reloaded(x), head(encoder.eval()(x)), atol=1e-5)
    assert reloaded(x).shape == (2, 3)


def test_trained_model_folder_and_mar_contents(trained_model):
    folder = Path(trained_model["model_path"])
    name = trained_model["gened_model_name"]
    for f in (
        "model.pt",
        "model.pt2",
        "model.onnx",
        "index_to_name.json",
        "preprocess.json",
        "settings.json",
        "model_info.json",
        "model-config.yaml",
        "training_curves.png",
        "valid_confusion_matrix.png",
        "logs/metrics.csv",
        f"{name}.mar",
    ):
        assert (folder / f).is_file(), f
    with zipfile.ZipFile(folder / f"{name}.mar") as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(z.read("model-config.yaml"))
    assert {"model.pt", "simsiam_handler.py", "api.py", "classifier.py", "eval_preset.py"} <= names
    assert {"index_to_name.json", "preprocess.json"} <= names
    assert manifest["model"]["modelName"] == name and manifest["model"]["handler"] == "simsiam_handler.py"
    assert config["batchSize"] >= 2 and config["maxBatchDelay"] > 0 and config["minWorkers"] >= 1
    preset = json.loads((folder / "preprocess.json").read_text())
    assert preset["input_size"] == 32
    scripted = torch.jit.load(str(folder / "model.pt"))
    assert scripted(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    # The valid confusion matrix is the held-out one behind metric_value: its diagonal share is that accuracy.
    metrics = json.loads((folder / "model_info.json").read_text())["metrics"]
    cm = metrics["confusion_matrix"]
    matrix = np.array(cm["matrix"])
    assert cm["labels"] == json.loads((folder / "model_info.json").read_text())["classes"]
    assert matrix.shape == (3, 3) and matrix.sum() > 0
    assert round(np.trace(matrix) / matrix.sum(), 4) == metrics["acc"] == trained_model["metric_value"]


def test_archiving_leaves_the_process_tempdir_alone(trained_model, tmp_path):
    """The archiver stages in a private TMPDIR of its own process: this process's tempfile.tempdir, which other
    threads read, never changes, not even while it runs."""
    import shutil
    import tempfile
    import threading

    from export.archive import MODEL_FILE, build_mar

    folder = tmp_path / "m"
    folder.mkdir()
    for name in (MODEL_FILE, "index_to_name.json", "preprocess.json"):
        shutil.copy(Path(trained_model["model_path"]) / name, folder / name)
    before = tempfile.tempdir
    seen: set = set()
    worker = threading.Thread(target=build_mar, args=(folder, "SimSiam_tmp"))
    worker.start()
    while worker.is_alive():
        seen.add(tempfile.tempdir)
    worker.join()
    assert seen == {before} and tempfile.tempdir == before
    with zipfile.ZipFile(folder / "SimSiam_tmp.mar") as z:
        assert MODEL_FILE in z.namelist()
