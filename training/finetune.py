"""The fine-tuning loop of the refine stage (LP-FT: encoder + linear head on labelled images) and its parts:
the recipe, the stratified split, BatchNorm re-estimation, the probe head it starts from, and prediction.
training/refine.py runs it in the held-out protocol; training/refine_choice.py runs it to choose a recipe.

The recipe follows the field's fine-tuning protocols for small label sets:
- LP-FT (Kumar et al., ICLR 2022): the head starts from the linear probe fitted on the frozen features, then
  encoder and head are trained together, so the first steps do not wreck the pretrained features with the
  gradients of a random head.
- SimCLR's semi-supervised recipe (Chen et al., 2020, Appendix B.5) and lightly's `FinetuneClassifier`: random
  resized crop + horizontal flip only, SGD with (Nesterov) momentum 0.9, lr = base x batch / 256, cosine decay,
  no warm-up, no weight decay; BatchNorm in train mode. Backbone and head have their own base lr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from dataset.reader import EvalImages, collate_eval
from evaluation.features import run_frozen
from evaluation.probe import fit_head
from export.torchscript import Classifier
from handler.eval_preset import EvalPreset
from jobs import stop
from jobs.device import autocast
from training.model import cosine_lr
from training.refine_images import RefineImages


@dataclass(frozen=True)
class RefineRecipe:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.2  # backbone base lr; used lr = lr x batch / 256 (0.2 beat 0.01-0.5: docs/benchmarks.md)
    head_lr: float = 0.2  # head base lr
    momentum: float = 0.9
    min_scale: float = 0.2  # RandomResizedCrop lower bound
    time_budget_s: float = 0.0  # the whole stage (held-out run + final run); 0 = epochs only
    holdout: float = 0.2  # share of each class held out for the accuracy
    precision: str = "32-true"  # "bf16-mixed" / "16-mixed": autocast, as in pretraining
    num_workers: int = 2
    seed: int = 0
    choose: bool = False  # refine "auto": the recipe (probe, or fine-tuning and its lr) chosen on an inner split


def _as_built(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ already built the batch


def stratified_holdout(labels: list[int], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, held_out) indices: `share` of each class held out, at least 1 where a class has 2 or more images,
    none where it has 1 (every class stays in the fit part, so the refined head knows it)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    fit, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_held = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(share * len(idx))))
        held += idx[:n_held].tolist()
        fit += idx[n_held:].tolist()
    return sorted(fit), sorted(held)


def finetune(
    encoder: nn.Module,
    head: nn.Linear,
    data: RefineImages,
    recipe: RefineRecipe,
    device: torch.device,
    epochs: int,
    time_budget_s: float = 0.0,
    on_epoch: Callable[[int, float, float, float], None] | None = None,
) -> int:
    """Train encoder + head in place on `data` for `epochs` (or until `time_budget_s`, if > 0, whichever ends
    first; the cosine schedule follows whichever ends first). Returns the epochs completed.
    on_epoch(epoch, mean loss, train accuracy, progress in [0, 1]) after each epoch."""
    batch = max(2, min(recipe.batch_size, len(data)))  # BatchNorm needs 2 samples per batch
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=recipe.num_workers,
        persistent_workers=recipe.num_workers > 0,
        collate_fn=_as_built,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(recipe.seed),
    )
    model = Classifier(encoder, head).to(device, memory_format=torch.channels_last)
    scale = batch / 256
    groups = [
        {"params": head.parameters(), "peak": recipe.head_lr * scale},
        {"params": encoder.parameters(), "peak": recipe.lr * scale},
    ]
    optimizer = torch.optim.SGD(
        [{**g, "lr": g["peak"]} for g in groups],
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=0.0,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.precision == "16-mixed")
    criterion = nn.CrossEntropyLoss()
    total_steps = max(1, epochs * len(loader))
    start, step, done = time.monotonic(), 0, 0
    for epoch in range(epochs):
        model.train()  # each epoch: on_epoch may have scored the model in eval mode
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in loader:
            stop.check()  # a stop signal that was swallowed somewhere (jobs/stop.py) ends the stage here
            progress = step / total_steps
            if time_budget_s > 0:
                progress = max(progress, (time.monotonic() - start) / time_budget_s)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(group["peak"], min(1.0, progress))
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast(recipe.precision, device):
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        done = epoch + 1
        progress = done / epochs
        if time_budget_s > 0:
            progress = max(progress, (time.monotonic() - start) / time_budget_s)
        if on_epoch is not None:
            on_epoch(done, loss_sum / max(1, seen), correct / max(1, seen), min(1.0, progress))
        if progress >= 1:
            break
    model.eval()
    return done


def accuracy(predicted: list[int], labels: list[int]) -> float:
    """Share of `predicted` classes equal to `labels` (a class of -1, an image that failed, counts as wrong)."""
    return float((np.asarray(predicted) == np.asarray(labels)).mean())


def predict(encoder: nn.Module, head: nn.Linear, paths: list[Path], preset: EvalPreset, device: torch.device) -> list:
    """Top-1 class per path with the eval preset (what client_test.py and the server do)."""
    logits, kept, _ = run_frozen(Classifier(encoder, head), paths, preset, device)
    pred = [-1] * len(paths)
    for i, k in zip(kept, logits.argmax(1).tolist() if len(kept) else []):
        pred[i] = k
    return pred


def recalibrate_batchnorm(
    encoder: nn.Module, paths: list[Path], preset: EvalPreset, device: torch.device, batch_size: int = 64
) -> None:
    """Re-estimate every BatchNorm's running statistics on `paths` (eval preset, no labels, no gradient).

    Fine-tuning runs BatchNorm in train mode (batch statistics), while the linear probe that starts the head is
    fitted on eval-mode features (running statistics). Where the two differ -- always for a random encoder, whose
    running statistics are still (0, 1) -- the probe's head meets features of another scale and the first steps
    blow up (cross-entropy in the thousands). With the running statistics taken from these very images (precise
    BN, Wu & Johnson 2021; AdaBN, Li et al. 2016) both modes see the same features.
    """
    loader = DataLoader(EvalImages(paths, preset), batch_size=batch_size, collate_fn=collate_eval)
    # torch's own precise BN (torch.optim.swa_utils.update_bn): running statistics reset, a cumulative average over
    # every batch in train mode without gradients, momentum and mode restored. A batch of 1 would be refused.
    batches = (x.contiguous(memory_format=torch.channels_last) for x, _, _ in loader if x is not None and len(x) > 1)
    update_bn(batches, encoder, device)


def lp_head(
    encoder: nn.Module,
    paths: list[Path],
    labels: list[int],
    n_classes: int,
    preset: EvalPreset,
    device: torch.device,
) -> nn.Linear:
    """LP-FT's first step: BatchNorm statistics and the linear probe from the images the run trains on."""
    recalibrate_batchnorm(encoder, paths, preset, device)
    features, kept, _ = run_frozen(encoder, paths, preset, device)
    return fit_head(features, [labels[i] for i in kept], n_classes)
