"""The offline test job: score DATASET/test with a trained model folder exactly as the server would.

    python client_test.py --dataset_path runs/demo_dataset --model_path runs/models/<uuid4> \
        --used_model SimSiam_autotables-2503-train-1 --device cpu

It runs the folder's TorchScript model.pt with the EvalPreset of its preprocess.json, the two files the
.mar packs for the handler, so offline and served predictions agree (tests/test_client_test.py checks it).
"""

from __future__ import annotations

import logging
import os
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from dataset.reader import DatasetError, LabelledSplit, Skipped, read_labelled
from evaluation.confusion_plot import plot_confusion_matrix
from evaluation.features import run_frozen
from export.model_folder import ModelFolder, ModelFolderError
from export.portable import FORMATS
from export.portable import load_model as load_portable
from handler.eval_preset import EvalPreset
from jobs.outputs import RunFolder, atomic_write_json, round4

log = logging.getLogger(__name__)
FAMILY = "SimSiam"  # the trial.txt key; training.train.MODEL_NAME, not imported as that pulls in Lightning
BATCH_SIZE = 64


@dataclass
class TestJob:
    __test__ = False  # not a pytest class

    dataset: Path
    model: ModelFolder
    device: torch.device
    runs_dir: Path
    model_format: str = "torchscript"  # or "export" (model.pt2), "onnx" (model.onnx): export/portable.py


def run(job: TestJob) -> tuple[dict, dict]:
    """Score, write runs/models/<uuid4>/evaluation_<unix s>.json + PNG, then trial.txt; returns both dicts."""
    t0 = time.monotonic()
    split = read_labelled(job.dataset, "test", classes=job.model.classes)  # data errors before loading a model
    preset = EvalPreset.load(job.model.preset_file)
    rows, skipped = score(load_model(job.model, job.device, job.model_format), split, preset, job.device)
    evaluation = {
        "model_path": str(job.model.path),
        "used_model": job.model.model_name,
        "model_format": job.model_format,
        "model_file": FORMATS[job.model_format],
        "dataset_path": str(job.dataset.resolve()),
        "split": "test",
        "device": str(job.device),
        "preprocess": asdict(preset),
        **summarize(rows, job.model.classes),
        "skipped": [{"path": _rel(p, split.root), "reason": r} for p, r in skipped.items],
        "predictions": rows,
    }
    run_dir = RunFolder(job.runs_dir)
    try:
        cm = evaluation["confusion_matrix"]
        png = run_dir.path / "confusion_matrix.png"
        plot_confusion_matrix(cm["matrix"], cm["labels"], evaluation["accuracy"], png, evaluation["unknown_classes"])
        evaluation["test_seconds"] = round4(time.monotonic() - t0)
        filename = f"evaluation_{int(time.time())}.json"
        atomic_write_json(run_dir.path / filename, evaluation)
        final = run_dir.commit()
    except BaseException:
        run_dir.discard()
        raise
    trial = {
        "model_path": str(final),
        "predict_result_filename": filename,
        "preview_data": {},
        "test_result": {FAMILY: {"test": {"acc": evaluation["accuracy"]}}},
        "predict_prob": {},
        "test_consuming": {FAMILY: {"test": evaluation["test_seconds"]}},
    }
    run_dir.write_trial(trial)
    return trial, evaluation


def load_model(model: ModelFolder, device: torch.device, model_format: str = "torchscript") -> torch.nn.Module:
    """The folder's classifier in `model_format`; TorchScript through the handler's own loader, so offline and
    served answers come from the same frozen module."""
    path = model.path / FORMATS[model_format]
    if not path.is_file():
        raise ModelFolderError(
            f"{model.path} holds no {path.name} (--model_format {model_format}): it was trained by an older "
            "release; use --model_format torchscript, or train again"
        )
    try:
        return load_portable(path, model_format, device)
    except Exception as e:  # each runtime has its own error types; all mean the same to the user
        raise ModelFolderError(f"cannot load {path} as {model_format} ({e}); train the model again") from e


def score(
    model: torch.nn.Module, split: LabelledSplit, preset: EvalPreset, device: torch.device
) -> tuple[list[dict], Skipped]:
    """One row per readable image: path (relative to test/images), true and predicted class, top-1 softmax."""
    n = len(split.paths)
    # Worker processes pay off only when decoding dominates; a couple of batches decode faster in-process.
    workers = 0 if n <= 2 * BATCH_SIZE else min(4, os.cpu_count() or 1)
    logits, kept, bad = run_frozen(model, split.paths, preset, device, BATCH_SIZE, workers, progress=n > BATCH_SIZE)
    skipped = Skipped()
    for i, err in sorted(bad):
        skipped.add(str(split.paths[i]), err)
    if not kept:
        raise DatasetError(f"{split.root} has no readable image: all {n} file(s) were skipped (see the warnings)")
    if logits.shape[1] != len(split.classes):
        raise ModelFolderError(
            f"the model outputs {logits.shape[1]} classes but index_to_name.json names {len(split.classes)}"
        )
    # As the handler: softmax over the float logits, top-1.
    prob, index = torch.softmax(logits, dim=1).max(dim=1)
    rows = []
    for i, p, k in zip(kept, prob.tolist(), index.tolist()):
        true, predicted = split.paths[i].relative_to(split.root).parts[0], split.classes[k]
        row = {"path": split.rel(split.paths[i]), "true_class": true, "predicted_class": predicted}
        rows.append({**row, "probability": p, "correct": true == predicted})
    return rows, skipped


def summarize(rows: list[dict], classes: list[str]) -> dict:
    """Accuracy over every scored image (unknown classes count as wrong), per-class figures, confusion matrix."""
    y_true = [r["true_class"] for r in rows]
    y_pred = [r["predicted_class"] for r in rows]
    unknown = sorted(set(y_true) - set(classes))
    if unknown:
        log.warning("test classes unknown to the model (all counted as wrong): %s", ", ".join(unknown))
    labels = classes + unknown
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [c for c, n in zip(labels, support) if n > 0]
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    correct = sum(r["correct"] for r in rows)
    return {
        "accuracy": round4(correct / len(rows)),
        "correct": correct,
        "scored": len(rows),
        "classes": classes,
        "unknown_classes": unknown,
        "per_class": {
            c: {"precision": round4(prec[i]), "recall": round4(rec[i]), "f1": round4(f1[i]), "support": int(support[i])}
            for i, c in enumerate(labels)
        },
        "macro_avg": {"precision": round4(mp), "recall": round4(mr), "f1": round4(mf), "classes": len(present)},
        "confusion_matrix": {
            "labels": labels,
            "rows": "true class",
            "columns": "predicted class",
            "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        },
    }


def format_summary(evaluation: dict) -> str:
    """A short table for the terminal: accuracy, then one row per class."""
    e = evaluation
    lines = [f"test accuracy: {e['accuracy']:.4f} ({e['correct']}/{e['scored']} images correct)"]
    if e["skipped"]:
        lines.append(f"skipped (unreadable): {len(e['skipped'])} file(s): {', '.join(s['path'] for s in e['skipped'])}")
    if e["unknown_classes"]:
        lines.append(f"classes unknown to the model (counted as wrong): {', '.join(e['unknown_classes'])}")
    width = max(12, *(_width(c) for c in e["per_class"]))
    lines.append(f"{_pad('class', width)}  precision  recall      f1  support")
    rows = [(c, m, m["support"]) for c, m in e["per_class"].items()] + [("macro avg", e["macro_avg"], e["scored"])]
    for c, m, n in rows:
        lines.append(f"{_pad(c, width)}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {n:7d}")
    return "\n".join(lines)


def _width(text: str) -> int:
    # CJK class names (雏菊) take two terminal columns per character.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
