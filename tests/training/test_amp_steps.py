"""Mixed precision trains: optimiser steps are taken and the weights move, in pretraining (Lightning's AMP, its
loss scaler for fp16) and in the refine stage (its own GradScaler). Finite losses alone prove nothing: a loss
scaler that skips every step still reports them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_SETTINGS
from torch.optim.optimizer import register_optimizer_step_post_hook

from dataset.reader import Skipped, read_labelled, read_unlabelled
from handler.eval_preset import EvalPreset
from training.augment import augment_for
from training.model import SimSiam
from training.pretrain_data import PretrainImages, pretrain_loader
from training.refine import RefineRecipe, refine
from training.settings import build_settings

CASES = [
    ("cpu", "32-true"),
    ("cpu", "bf16-mixed"),
    pytest.param(
        "cuda",
        "16-mixed",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
    ),
    pytest.param(
        "cuda",
        "bf16-mixed",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
    ),
]


class StepCounter:
    """Counts optimiser steps really taken (a loss scaler that finds inf/NaN gradients skips optimizer.step)."""

    def __enter__(self) -> StepCounter:
        self.steps = 0
        self._handle = register_optimizer_step_post_hook(self._count)
        return self

    def _count(self, *args) -> None:
        self.steps += 1

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    """How many weight tensors (not BatchNorm's running statistics) changed."""
    return sum(
        not torch.equal(before[k], after[k].detach().cpu())
        for k in before
        if before[k].is_floating_point() and "running_" not in k
    )


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("device", "precision"), CASES)
def test_pretraining_takes_steps_and_moves_the_weights(tiny_dataset: Path, device: str, precision: str) -> None:
    s = build_settings({**TINY_SETTINGS, "epochs": 3, "precision": precision})
    data = PretrainImages(read_unlabelled(tiny_dataset), s.input_size, augment_for(s), 64, Skipped(), 1)
    loader = pretrain_loader(data, s.batch_size, 0)
    model = SimSiam(s, steps_per_epoch=len(loader), global_batch=s.batch_size)
    before = snapshot(model.backbone)
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=s.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with StepCounter() as counted:
        trainer.fit(model, loader)
    assert trainer.global_step == 3 * len(loader)
    assert counted.steps >= 2, f"{counted.steps} of {trainer.global_step} optimiser steps taken"
    assert moved(before, model.backbone.state_dict()) > 0.9 * sum(
        v.is_floating_point() and "running_" not in k for k, v in before.items()
    )


@pytest.mark.parametrize(("device", "precision"), CASES)
def test_refine_takes_steps_and_moves_the_weights(tiny_dataset: Path, device: str, precision: str) -> None:
    from training.backbone import build_backbone

    torch.manual_seed(0)
    encoder = build_backbone("resnet18", True)[0]
    valid = read_labelled(tiny_dataset, "valid")
    before = snapshot(encoder)
    recipe = RefineRecipe(epochs=3, batch_size=8, precision=precision, num_workers=0, holdout=0.25)
    with StepCounter() as counted:
        r = refine(
            copy.deepcopy(encoder),
            valid.paths,
            valid.labels,
            len(valid.classes),
            EvalPreset(input_size=32),
            recipe,
            torch.device(device),
            64,
            Skipped(),
        )
    assert counted.steps >= 2 * r.epochs, f"{counted.steps} optimiser steps over 2 runs of {r.epochs} epochs"
    assert moved(before, r.encoder.state_dict()) > 0
