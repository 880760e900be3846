"""Refine: the held-out protocol around the fine-tuning loop (training/finetune.py), on `valid`'s labels.

The accuracy is honest: `refine()` first runs the recipe on a stratified part of `valid` and scores the rest,
which it never trained on and never used to choose anything (no early stopping, fixed epochs); then it runs the
same recipe, for the same number of epochs, on all of `valid` and returns that model for export. With refine
"auto" the held-out run trains on an inner split of the fit part, and the recipe is chosen on the rest of the
fit part (training/refine_choice.py) before the final run.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dataset.reader import Skipped
from evaluation.features import run_frozen
from evaluation.probe import fit_head
from handler.eval_preset import EvalPreset
from training.finetune import RefineRecipe, accuracy, finetune, lp_head, predict, stratified_holdout
from training.refine_choice import Choice, choose_recipe, inner_split, probe_candidate
from training.refine_images import RefineImages

__all__ = ["RefineRecipe", "RefineResult", "finetune", "predict", "refine", "stratified_holdout"]

log = logging.getLogger(__name__)


@dataclass
class RefineResult:
    encoder: nn.Module  # refined on all of valid
    head: nn.Linear
    acc: float  # accuracy of the same recipe on the held-out images
    held_out: list[int]  # indices into the labels given
    predictions: list[int]  # the held-out run's class for each of held_out
    epochs: int
    fit_time_s: float  # both runs
    curve: list[dict] = field(default_factory=list)  # per epoch: run, epoch, loss, train_acc (+ held_out_acc)
    choice: dict | None = None  # refine "auto": the candidates' inner accuracies and the one chosen


@dataclass
class HeldOutWatch:
    """The held-out run's per-epoch record: loss and train accuracy each epoch, the held-out accuracy ~10 times
    a run and after the last epoch (a picture for the user; nothing is chosen on it)."""

    encoder: nn.Module
    head: nn.Linear
    paths: list[Path]
    labels: list[int]
    preset: EvalPreset
    device: torch.device
    curve: list[dict]
    predictions: list[int] = field(default_factory=list)  # the newest look's class per held-out image
    next_look: float = 0.1

    @property
    def acc(self) -> float:
        """Accuracy of the newest look's predictions on the held-out images."""
        return accuracy(self.predictions, self.labels)

    def on_epoch(self, epoch: int, loss: float, train_acc: float, progress: float) -> None:
        row = _row("held-out", epoch, loss, train_acc)
        if progress >= self.next_look or progress >= 1:
            self.next_look = progress + 0.1
            self.predictions = predict(self.encoder, self.head, self.paths, self.preset, self.device)
            row["held_out_acc"] = round(self.acc, 4)
            self.encoder.train()
        self.curve.append(row)
        log.info("refine (held-out run) epoch %d: %s", epoch, row)


def _row(run: str, epoch: int, loss: float, train_acc: float) -> dict:
    return {"run": run, "epoch": epoch, "loss": round(loss, 4), "train_acc": round(train_acc, 4)}


def held_out_budget(budget_s: float, setup_s: float, n_fit: int, n_all: int) -> float:
    """The held-out run's fine-tuning budget, so that the whole stage (both runs) ends near `budget_s`.

    `setup_s` is what the held-out run spent before training (decoding, BatchNorm statistics, the probe head); the
    final run spends about as much again, scaled by its images. What is left splits in proportion to the images
    each run trains on (the final run repeats the held-out run's epochs). 0 = no budget; a budget the set-up
    already used up leaves a token amount (finetune() still completes one epoch)."""
    if budget_s <= 0:
        return 0.0
    left = budget_s - setup_s * (1 + n_all / n_fit)
    return max(left * n_fit / (n_fit + n_all), 1e-3)


def refine(
    encoder: nn.Module,
    paths: list[Path],
    labels: list[int],
    n_classes: int,
    preset: EvalPreset,
    recipe: RefineRecipe,
    device: torch.device,
    cache_mb: int,
    skipped: Skipped,
) -> RefineResult:
    """LP-FT on `valid` (paths with labels: N ints). `encoder` is refined in place and returned.

    1. held-out run: on a copy of the encoder and the fit part (1 - holdout of each class): BatchNorm statistics
       and a probe head from the fit part, fine-tune, score the held-out part, which nothing has seen; with
       recipe.choose (refine "auto") it trains on the inner fit part, and the frozen probe and it are scored on
       the rest of the fit part: the probe wins -> the frozen encoder is served (_probe);
    2. final run: the same on all of valid, for the epochs the held-out run made.
    Returns the final model and the held-out run's accuracy.
    """
    t0 = time.monotonic()
    images = RefineImages(paths, labels, preset, recipe.min_scale, cache_mb, skipped)
    if len(images) < len(paths):  # changed on disk since they were listed: drop them
        paths = [paths[i] for i in images.kept]
        labels = [labels[i] for i in images.kept]
    fit, held = stratified_holdout(labels, recipe.holdout, recipe.seed)
    train, inner, probe_acc, choice_s = fit, None, 0.0, 0.0
    if recipe.choose:  # the held-out run trains on the inner fit part: it is the recipe's own candidate
        t_choice = time.monotonic()
        inner = inner_split(paths, labels, n_classes, fit, recipe, preset, device)
        if inner.held:
            train = inner.fit
            probe_acc = probe_candidate(encoder, inner)
        else:
            log.warning(
                "refine auto: no class of valid has 3 or more images, so nothing is left to choose on; fine-tuning "
                "without a choice (5 or more labelled images per class recommended)"
            )
            inner = None
        choice_s = time.monotonic() - t_choice
    curve: list[dict] = []

    enc = copy.deepcopy(encoder)
    train_paths, train_labels = [paths[i] for i in train], [labels[i] for i in train]
    head = lp_head(enc, train_paths, train_labels, n_classes, preset, device)
    finetune_s = held_out_budget(
        recipe.time_budget_s - choice_s if recipe.time_budget_s > 0 else 0.0,
        time.monotonic() - t0 - choice_s,  # the set-up the final run repeats (not the probe candidate)
        len(train),
        len(labels),
    )
    watch = HeldOutWatch(enc, head, [paths[i] for i in held], [labels[i] for i in held], preset, device, curve)
    epochs = finetune(enc, head, images.subset(train), recipe, device, recipe.epochs, finetune_s, watch.on_epoch)
    predictions, acc = watch.predictions, watch.acc
    choice = None
    if inner is not None:
        t_choice = time.monotonic()
        choice = choose_recipe(probe_acc, inner.score(enc, head), inner, choice_s + time.monotonic() - t_choice)
        if choice.recipe == "probe":
            return _probe(encoder, paths, labels, fit, held, n_classes, preset, device, choice, t0)

    def final_epoch(epoch: int, loss: float, train_acc: float, _: float) -> None:
        curve.append(_row("final", epoch, loss, train_acc))

    head = lp_head(encoder, paths, labels, n_classes, preset, device)
    finetune(encoder, head, images, recipe, device, epochs, 0.0, final_epoch)
    fit_time_s = time.monotonic() - t0
    return RefineResult(
        encoder, head, acc, held, predictions, epochs, fit_time_s, curve, choice.record() if choice else None
    )


def _probe(
    encoder: nn.Module,
    paths: list[Path],
    labels: list[int],
    fit: list[int],
    held: list[int],
    n_classes: int,
    preset: EvalPreset,
    device: torch.device,
    choice: Choice,
    t0: float,
) -> RefineResult:
    """The frozen encoder with a linear probe head, in the same held-out protocol: a head fitted on the fit part
    scores the held-out part; the exported head is fitted on all of valid."""
    features, kept, _ = run_frozen(encoder, paths, preset, device)
    index = {i: k for k, i in enumerate(kept)}
    fit_kept = [i for i in fit if i in index]
    head = fit_head(features[[index[i] for i in fit_kept]], [labels[i] for i in fit_kept], n_classes)
    predictions = predict(encoder, head, [paths[i] for i in held], preset, device)
    acc = accuracy(predictions, [labels[i] for i in held])
    head = fit_head(features, [labels[i] for i in kept], n_classes)
    return RefineResult(encoder.eval(), head, acc, held, predictions, 0, time.monotonic() - t0, choice=choice.record())
