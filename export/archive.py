"""Package the TorchScript model, handler, class names and preset into a TorchServe .mar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
HANDLER_DIR = REPO / "handler"
HANDLER = HANDLER_DIR / "simsiam_handler.py"
# Files the handler imports, flat beside it inside the .mar.
HANDLER_EXTRAS = [HANDLER_DIR / f"{name}.py" for name in ("api", "classifier", "eval_preset", "worker_threads")]

MODEL_FILE = "model.pt"
CLASSES_FILE = "index_to_name.json"
PRESET_FILE = "preprocess.json"
MODEL_CONFIG_FILE = "model-config.yaml"

# TorchServe per-model settings (docs: configuration.md, "model-config.yaml"). Batching gathers up to
# batchSize concurrent requests for at most maxBatchDelay ms into one forward pass.
MODEL_CONFIG = {
    "minWorkers": 1,
    "maxWorkers": 4,
    "batchSize": 8,
    "maxBatchDelay": 10,
    "responseTimeout": 60,
    "startupTimeout": 120,
    "handler": {
        # torch threads per worker; 0 = CPU count / number of workers at start, so workers don't oversubscribe.
        "threads": 0,
    },
}


def write_class_names(classes: list[str], path: Path) -> None:
    path.write_text(json.dumps({str(i): c for i, c in enumerate(classes)}, ensure_ascii=False, indent=2))


def read_class_names(path: Path) -> list[str]:
    mapping = json.loads(path.read_text())
    return [mapping[str(i)] for i in range(len(mapping))]


def build_mar(model_dir: Path, model_name: str, version: str = "1.0") -> Path:
    """Write `<model_dir>/<model_name>.mar` from model.pt, index_to_name.json and preprocess.json there."""
    config_path = model_dir / MODEL_CONFIG_FILE
    config_path.write_text(yaml.safe_dump(MODEL_CONFIG, sort_keys=False))
    extras = [str(p) for p in HANDLER_EXTRAS] + [str(model_dir / CLASSES_FILE), str(model_dir / PRESET_FILE)]
    # torch-model-archiver's command line (its public interface) stages files in $TMPDIR/<model_name>: two jobs
    # packaging the same model name at once would mix their files, so each call gets a private TMPDIR -- in the
    # child's environment, never this process's tempfile.tempdir, which other threads read.
    args = [
        *("--model-name", model_name, "--version", version, "--handler", str(HANDLER)),
        *("--serialized-file", str(model_dir / MODEL_FILE), "--extra-files", ",".join(extras)),
        *("--export-path", str(model_dir), "--config-file", str(config_path), "--force"),
    ]
    with tempfile.TemporaryDirectory(prefix="mar-") as private:
        proc = subprocess.run(
            [sys.executable, "-m", "model_archiver.model_packaging", *args],
            env={**os.environ, "TMPDIR": private},
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    mar = model_dir / f"{model_name}.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
    missing = {MODEL_FILE, CLASSES_FILE, PRESET_FILE, HANDLER.name, "MAR-INF/MANIFEST.json"} - names
    if missing:
        raise RuntimeError(f"{mar} lacks {sorted(missing)}")
    return mar
