"""The folder a KServe InferenceService's storageUri points at, built from a trained model folder:

    python -m serving.kserve_layout --model_path runs/models/<uuid4> --used_model SimSiam_my-trial \
        --out kserve-store/SimSiam_my-trial
    # then copy the folder to the storage the InferenceService reads (a PVC, s3://, gs://) and set its
    # storageUri (inferenceservice.yaml) to it.

It holds `config/config.properties` (deploy/kserve/config/config.properties with this model in its
model_snapshot) and `model-store/<name>.mar` (the model folder's archive), with batchSize 1: TorchServe's KServe
envelope answers only the first request of a batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from export.archive import MODEL_CONFIG
from export.model_folder import ModelFolderError, open_model_folder

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "kserve" / "config" / "config.properties"


def snapshot(model_name: str) -> dict:
    """TorchServe's model_snapshot registering `model_name` from the model store at start."""
    entry = {
        "defaultVersion": True,
        "marName": f"{model_name}.mar",
        **{k: MODEL_CONFIG[k] for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")},
    }
    entry["batchSize"] = 1
    return {"name": "startup.cfg", "modelCount": 1, "models": {model_name: {"1.0": entry}}}


def build_layout(model_path: str | Path, used_model: str, out: Path) -> Path:
    """Write the layout into `out` (new or empty); returns the config file's path."""
    folder = open_model_folder(model_path, used_model).path
    mar = folder / f"{used_model}.mar"
    if not mar.is_file():
        raise ModelFolderError(f"--model_path {folder} holds no {used_model}.mar; train again to rebuild it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} is not empty; choose a new folder")
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        if line.startswith("model_snapshot="):
            line = "model_snapshot=" + json.dumps(snapshot(used_model), separators=(",", ":"))
        lines.append(line)
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / "model-store").mkdir(exist_ok=True)
    config = out / "config" / "config.properties"
    config.write_text("\n".join(lines) + "\n")
    shutil.copy2(mar, out / "model-store" / mar.name)
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a model folder written by client_train.py")
    p.add_argument("--used_model", required=True, help="its model name (gened_model_name in trial.txt)")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the layout")
    args = p.parse_args(argv)
    try:
        config = build_layout(args.model_path, args.used_model, args.out)
    except (ModelFolderError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {config.relative_to(args.out)}, model-store/{args.used_model}.mar; point storageUri at it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
