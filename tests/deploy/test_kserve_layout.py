"""`python -m serving.kserve_layout`: the storageUri folder of a KServe InferenceService, from a model folder."""

import json
from pathlib import Path

from export.archive import MODEL_CONFIG
from serving.kserve_layout import TEMPLATE, main


def _properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_layout_serves_the_model_with_the_batching_its_api_allows(trained_model, tmp_path):
    name, out, batch = trained_model["gened_model_name"], tmp_path / "store", 1
    args = ["--model_path", trained_model["model_path"], "--used_model", name, "--out", str(out)]
    assert main(args) == 0
    mar = out / "model-store" / f"{name}.mar"
    assert mar.read_bytes() == (Path(trained_model["model_path"]) / f"{name}.mar").read_bytes()
    props, template = _properties(out / "config" / "config.properties"), _properties(TEMPLATE)
    assert {k: v for k, v in props.items() if k != "model_snapshot"} == {
        k: v for k, v in template.items() if k != "model_snapshot"
    }
    snap = json.loads(props["model_snapshot"])
    assert list(snap["models"]) == [name] and snap["modelCount"] == 1
    entry = snap["models"][name]["1.0"]
    assert entry["marName"] == mar.name and entry["defaultVersion"] is True
    assert entry["batchSize"] == batch and entry["maxBatchDelay"] == MODEL_CONFIG["maxBatchDelay"]
    assert props["model_store"] == "/mnt/models/model-store"  # where KServe's storage initializer puts the folder


def test_layout_refuses_a_wrong_model_name_and_a_used_folder(trained_model, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["--model_path", trained_model["model_path"], "--used_model", "SimSiam_nope", "--out", str(out)]) == 2
    assert trained_model["gened_model_name"] in capsys.readouterr().err  # the error names what the folder holds
    (out / "x").mkdir(parents=True)
    args = ["--model_path", trained_model["model_path"], "--used_model", trained_model["gened_model_name"]]
    assert main([*args, "--out", str(out)]) == 2 and "not empty" in capsys.readouterr().err
