"""Self-distillation: soft targets train like labels, a student learns what its teacher says, and the refine
stage with distillation keeps its held-out accuracy honest."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from conftest import TINY_SETTINGS, run_train
from PIL import Image

from dataset.cache import ImageCache
from dataset.reader import Skipped
from export.torchscript import Classifier
from handler.eval_preset import EvalPreset
from training.backbone import build_backbone
from training.distill import distill_images, teacher_targets
from training.refine import RefineRecipe, finetune, predict, refine
from training.refine_images import RefineImages

PRESET = EvalPreset(input_size=32)
CPU = torch.device("cpu")


def _images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Noise at four brightness levels: something a small network can tell apart, and no class in it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (40, 40, 3)).astype(np.float32) * 0.5 + 127 * (i % 4) / 3
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def _model(seed: int, n_classes: int = 4) -> tuple[torch.nn.Module, torch.nn.Linear]:
    torch.manual_seed(seed)
    encoder, dim = build_backbone("resnet18", small_stem=True)
    return encoder, torch.nn.Linear(dim, n_classes)


class Brightness(torch.nn.Module):
    """A teacher that is not the student: it names an image's brightness level (what _images varies), 0-3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean((1, 2, 3), keepdim=False)[:, None]
        centres = torch.linspace(-0.88, 1.33, 4)[None]  # normalised means of the four levels, roughly
        return -20 * (level - centres) ** 2


def _cache(paths: list[Path]) -> ImageCache:
    return ImageCache(paths, 2 * PRESET.input_size, 64, Skipped())


def test_one_hot_soft_targets_train_exactly_like_class_indices(tmp_path):
    paths = _images(tmp_path / "img", 16)
    labels = [i % 4 for i in range(16)]
    recipe = RefineRecipe(batch_size=8, lr=0.05, head_lr=0.05, num_workers=0)
    weights = []
    for targets in (labels, torch.nn.functional.one_hot(torch.tensor(labels), 4).float()):
        encoder, head = _model(0)
        data = RefineImages(paths, targets, PRESET, recipe.min_scale, 64, Skipped())
        torch.manual_seed(1)  # the same crops and flips
        finetune(encoder, head, data, recipe, CPU, epochs=2)
        weights.append(head.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1])


def test_teacher_targets_are_probabilities_and_a_lower_temperature_sharpens_them(tmp_path):
    images = _cache(_images(tmp_path / "img", 8))
    teacher = Classifier(*_model(0))
    warm = teacher_targets(teacher, 4, images, PRESET, CPU, t=1.0)
    cold = teacher_targets(teacher, 4, images, PRESET, CPU, t=0.1)
    assert warm.shape == (8, 4)
    torch.testing.assert_close(warm.sum(1), torch.ones(8))
    assert (cold.max(1).values >= warm.max(1).values).all() and cold.max(1).values.mean() > warm.max(1).values.mean()


def test_a_student_learns_its_teachers_classes_on_unlabelled_images(tmp_path):
    """A teacher that is not the student: agreement on the unlabelled images rises from chance to most of them,
    while the few labelled images keep their own (one-hot) labels in the same batches."""
    unlabelled = _cache(_images(tmp_path / "unlabelled", 48, seed=2))
    labelled_paths = _images(tmp_path / "labelled", 8, seed=3)
    labelled = RefineImages(labelled_paths, [0] * 8, PRESET, 0.9, 64, Skipped())
    soft = teacher_targets(Brightness(), 4, unlabelled, PRESET, CPU, t=1.0)
    data = distill_images(unlabelled, soft, labelled)
    assert len(data) == 56 and data.paths == labelled_paths + unlabelled.paths
    torch.testing.assert_close(data.labels[:8], torch.tensor([[1.0, 0, 0, 0]] * 8))
    said = soft.argmax(1).numpy()
    encoder, head = _model(5)
    before = (np.asarray(predict(encoder, head, unlabelled.paths, PRESET, CPU)) == said).mean()
    recipe = RefineRecipe(batch_size=16, lr=1.0, head_lr=1.0, min_scale=0.9, num_workers=0)  # x 16/256
    finetune(encoder, head, data, recipe, CPU, epochs=15)
    after = (np.asarray(predict(encoder, head, unlabelled.paths, PRESET, CPU)) == said).mean()
    assert after >= 0.75 and after > before + 0.2, (before, after)


def test_refine_with_distillation_keeps_the_held_out_images_out(tmp_path):
    """The leak test with distillation on: random labels stay near chance on the held-out part, although the
    teacher's targets come from a model that memorised its fit part and the student trains on them."""
    n_classes, n = 4, 48
    paths = _images(tmp_path / "valid", n)
    labels = np.random.default_rng(1).permutation(np.arange(n) % n_classes).tolist()
    unlabelled = _cache(_images(tmp_path / "train", 32, seed=4))
    encoder, _ = _model(0)
    recipe = RefineRecipe(epochs=3, batch_size=16, lr=0.05, head_lr=0.05, min_scale=0.9, num_workers=0)
    recipe = dataclasses.replace(recipe, distill_epochs=2)
    r = refine(encoder, paths, labels, n_classes, PRESET, recipe, CPU, 64, Skipped(), unlabelled)
    assert r.epochs == 3 and r.distill_epochs == 2 and r.teacher_acc is not None
    assert r.acc <= 0.6, f"held-out accuracy {r.acc} on random labels: the held-out images leaked"
    phases = [(row["run"], row["phase"]) for row in r.curve]
    assert (
        phases
        == [("held-out", "finetune")] * 3
        + [("held-out", "distill")] * 2
        + [("final", "finetune")] * 3
        + [("final", "distill")] * 2
    )
    assert [row["epoch"] for row in r.curve if row["run"] == "final"] == [1, 2, 3, 4, 5]
    assert "held_out_acc" in r.curve[4]  # the look after distillation is what metric_value reports


def test_client_train_with_distillation_exports_the_distilled_model(tiny_dataset, tmp_path):
    """distill_epochs through client_train.py: model_info.json says what distillation did, the curve and the
    exported TorchScript model come from the distilled run, and trial.txt's metric_value is its held-out accuracy."""
    runs = tmp_path / "runs"
    proc = run_train(tiny_dataset, runs, settings={**TINY_SETTINGS, "distill_epochs": 1})
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    metrics = info["metrics"]
    assert metrics["distill_epochs"] == 1 and 0 <= metrics["finetune_acc"] <= 1
    assert trial["metric_value"] == metrics["acc"]
    assert [r["epoch"] for r in metrics["refine_curve"] if (r["run"], r["phase"]) == ("final", "distill")] == [3]
    assert "then distilled 1 epochs from" in proc.stdout + proc.stderr
    scripted = torch.jit.load(str(Path(trial["model_path"]) / "model.pt"))
    assert scripted(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
