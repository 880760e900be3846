"""A trained model folder (runs/models/<uuid4> from client_train.py), checked against `--used_model`.

Light on purpose (no torch): client_test.py and client_infer.py can refuse a wrong folder in milliseconds.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from export.archive import CLASSES_FILE, MODEL_FILE, PRESET_FILE, read_class_names

log = logging.getLogger(__name__)

INFO_FILE = "model_info.json"
REQUIRED = (MODEL_FILE, CLASSES_FILE, PRESET_FILE)


class ModelFolderError(ValueError):
    """The model folder cannot be used as asked; the message says what it holds and the fix."""


@dataclass(frozen=True)
class ModelFolder:
    path: Path  # absolute
    model_name: str  # e.g. SimSiam_autotables-2503-train-1
    classes: list[str]  # index -> class name, as the model's head outputs them

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def preset_file(self) -> Path:
        return self.path / PRESET_FILE

    @property
    def mar(self) -> Path:
        return self.path / f"{self.model_name}.mar"


def held_models(folder: Path) -> list[str]:
    """Model names the folder holds: model_info.json's "model_name" and the stems of its .mar files."""
    names = {p.stem for p in folder.glob("*.mar") if p.is_file()}
    try:
        name = json.loads((folder / INFO_FILE).read_text(encoding="utf-8")).get("model_name")
        if isinstance(name, str) and name:
            names.add(name)
    except (OSError, ValueError, AttributeError):
        pass  # no or unreadable model_info.json: the .mar names still say what the folder holds
    return sorted(names)


def open_model_folder(path: str | Path, used_model: str) -> ModelFolder:
    """Check that `path` is a trained model folder holding `used_model`; raises ModelFolderError."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ModelFolderError(
            f"--model_path {folder} is not a folder; pass the runs/models/<uuid4> folder that client_train.py "
            "printed (its trial.txt 'model_path')"
        )
    held = held_models(folder)
    if not held:
        contents = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(contents[:10]) + (", ..." if len(contents) > 10 else "") if contents else "nothing"
        raise ModelFolderError(
            f"--model_path {folder} holds no trained model (no {INFO_FILE}, no .mar; it holds: {shown}); "
            "pass a folder written by client_train.py"
        )
    if used_model not in held:
        raise ModelFolderError(
            f"--used_model {used_model!r} is not in --model_path {folder}: that folder holds {', '.join(held)}; "
            f"pass --used_model {held[0]} or the folder of {used_model}"
        )
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise ModelFolderError(
            f"--model_path {folder} holds {used_model} but lacks {', '.join(missing)}; "
            f"unzip them from {used_model}.mar into the folder or train again"
        )
    try:
        classes = read_class_names(folder / CLASSES_FILE)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFolderError(f"{folder / CLASSES_FILE} is unreadable ({e}); train again") from e
    model = ModelFolder(folder, used_model, classes)
    _check_mar_matches(model)
    return model


def _check_mar_matches(model: ModelFolder) -> None:
    """Warn when the loose files differ from the .mar's: offline scores would not be what the server says."""
    if not model.mar.is_file():
        return
    try:
        with zipfile.ZipFile(model.mar) as z:
            packed = {i.filename: i.CRC for i in z.infolist()}
    except (OSError, zipfile.BadZipFile) as e:
        log.warning("cannot read %s (%s); scoring with the loose files beside it", model.mar, e)
        return
    for name in REQUIRED:
        if packed.get(name) != _crc32(model.path / name):
            log.warning(
                "%s differs from the %s inside %s: this test scores the loose file, the server the archived one",
                model.path / name,
                name,
                model.mar.name,
            )


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc
