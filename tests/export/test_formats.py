"""The model folder's three formats (TorchScript in the .mar, torch.export, ONNX) are the same classifier: equal
answers for every test image through client_test.py, a failed check fails the export, and the ONNX file serves
without TorchServe or torch.export as docs/serving.md shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from export.portable import FORMATS, ExportMismatch, export_portable
from export.torchscript import Classifier, export_torchscript

REPO = Path(__file__).resolve().parents[2]


def scored(trained_model: dict, dataset: Path, runs: Path, model_format: str) -> dict[str, dict]:
    cmd = [sys.executable, "client_test.py", "--dataset_path", str(dataset), "--device", "cpu"]
    cmd += ["--model_path", trained_model["model_path"], "--used_model", trained_model["gened_model_name"]]
    cmd += ["--model_format", model_format]
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(runs)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr  # nothing on the console a user cannot act on
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    evaluation = json.loads((Path(trial["model_path"]) / trial["predict_result_filename"]).read_text())
    assert evaluation["model_format"] == model_format and evaluation["model_file"] == FORMATS[model_format]
    return {row["path"]: row for row in evaluation["predictions"]}


def test_all_three_formats_answer_the_same_for_every_test_image(trained_model, tiny_dataset, tmp_path):
    folder = Path(trained_model["model_path"])
    info = json.loads((folder / "model_info.json").read_text())
    assert set(info["files"]) == {*FORMATS.values(), f"{trained_model['gened_model_name']}.mar"}
    for name in FORMATS.values():
        assert info["files"][name]["bytes"] == (folder / name).stat().st_size > 0
        assert info["files"][name]["max_diff"] <= 1e-5
    assert info["onnx_opset"] >= 18
    results = {fmt: scored(trained_model, tiny_dataset, tmp_path / fmt, fmt) for fmt in FORMATS}
    reference = results["torchscript"]
    assert len(reference) == len([p for p in (tiny_dataset / "test" / "images").rglob("*") if p.is_file()])
    for fmt in ("export", "onnx"):
        assert results[fmt].keys() == reference.keys()
        for path, row in reference.items():
            other = results[fmt][path]
            assert other["predicted_class"] == row["predicted_class"], (fmt, path)
            assert abs(other["probability"] - row["probability"]) <= 1e-4, (fmt, path)


def test_a_format_that_answers_differently_fails_the_export(tmp_path):
    """The check compares each saved format with model.pt: a reference that differs is an ExportMismatch."""
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(4, 3))
    scripted = export_torchscript(model.eval(), 16, tmp_path / "model.pt")
    assert set(export_portable(model, scripted, 16, tmp_path)) == {"export", "onnx"}
    other = Classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(4, 3))
    with pytest.raises(ExportMismatch, match=r"differs from model\.pt"):
        export_portable(model, other.eval(), 16, tmp_path)


def test_the_onnx_serving_recipe_in_the_docs_matches_torchscript(trained_model, tiny_dataset):
    """docs/serving.md's ONNX Runtime snippet, run as written on every test image: the same class and probability
    as the TorchScript model TorchServe serves."""
    text = (REPO / "docs" / "serving.md").read_text()
    snippet = re.search(r"<!-- onnx-recipe -->\n```python\n(.*?)```", text, re.DOTALL).group(1)
    folder = Path(trained_model["model_path"])
    images = sorted(p for p in (tiny_dataset / "test" / "images").rglob("*") if p.is_file())
    from export.portable import load_model
    from handler.eval_preset import EvalPreset, ImageDecodeError, load_for_eval

    reference = load_model(folder / "model.pt", "torchscript", torch.device("cpu"))
    preset = EvalPreset.load(folder / "preprocess.json")
    checked = 0
    for path in images:
        namespace = {"MODEL_FOLDER": str(folder), "IMAGE": str(path)}
        try:
            exec(snippet, namespace)
            x = load_for_eval(path, preset).unsqueeze(0)
        except ImageDecodeError:
            continue  # the demo set's unreadable files: skipped by both
        with torch.inference_mode():
            probs = reference(x).softmax(1)[0]
        assert namespace["label"] == namespace["classes"][str(int(probs.argmax()))], path
        assert abs(namespace["probability"] - float(probs.max())) <= 1e-4, path
        checked += 1
    assert checked >= 3
