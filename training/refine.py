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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from dataset.cache import ImageCache
from dataset.reader import Skipped
from evaluation.features import run_frozen
from evaluation.probe import fit_head
from export.torchscript import Classifier
from handler.eval_preset import EvalPreset
from training.distill import distill_images, teacher_targets
from training.finetune import RefineRecipe, accuracy, finetune, lp_head, predict, stratified_holdout
from training.refine_choice import GENTLE, Choice, choose_recipe, gentle_candidate, inner_split, probe_candidate
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
    distill_epochs: int = 0
    teacher_acc: float | None = None  # held-out accuracy after fine-tuning, before distillation
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
    phase: str = "finetune"  # or "distill"
    first_epoch: int = 0  # the epochs before this phase: the curve counts on

    @property
    def acc(self) -> float:
        """Accuracy of the newest look's predictions on the held-out images."""
        return accuracy(self.predictions, self.labels)

    def start(self, phase: str, first_epoch: int) -> None:
        self.phase, self.first_epoch, self.next_look = phase, first_epoch, 0.1

    def on_epoch(self, epoch: int, loss: float, train_acc: float, progress: float) -> None:
        row = _row("held-out", self.phase, self.first_epoch + epoch, loss, train_acc)
        if progress >= self.next_look or progress >= 1:
            self.next_look = progress + 0.1
            self.predictions = predict(self.encoder, self.head, self.paths, self.preset, self.device)
            row["held_out_acc"] = round(self.acc, 4)
            self.encoder.train()
        self.curve.append(row)
        log.info("refine (held-out run) epoch %d: %s", epoch, row)


def _row(run: str, phase: str, epoch: int, loss: float, train_acc: float) -> dict:
    return {"run": run, "phase": phase, "epoch": epoch, "loss": round(loss, 4), "train_acc": round(train_acc, 4)}


def held_out_budget(
    budget_s: float, setup_s: float, n_fit: int, n_all: int, epochs: int = 1, n_unlabelled: int = 0, distill: int = 0
) -> tuple[float, float]:
    """The held-out run's (fine-tuning, distillation) budgets, so that the whole stage (both runs) ends near
    `budget_s`.

    `setup_s` is what the held-out run spent before training (decoding, BatchNorm statistics, the probe head); the
    final run spends about as much again, scaled by its images. What is left splits in proportion to the images
    each phase of each run trains on: `epochs` over its labelled images, then `distill` epochs over the
    unlabelled images and its labelled ones; the final run repeats the held-out run's epochs, so both runs get
    about the same. 0 = no budget; a budget the set-up already used up leaves a token amount (finetune() still
    completes one epoch)."""
    if budget_s <= 0:
        return 0.0, 0.0
    left = budget_s - setup_s * (1 + n_all / n_fit)
    finetune_w, distill_w = epochs * n_fit, distill * (n_unlabelled + n_fit)
    total = finetune_w + distill_w + epochs * n_all + distill * (n_unlabelled + n_all)
    return max(left * finetune_w / total, 1e-3), (max(left * distill_w / total, 1e-3) if distill else 0.0)


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
    unlabelled: ImageCache | None = None,
) -> RefineResult:
    """LP-FT on `valid` (paths with labels: N ints), then (recipe.distill_epochs > 0 and `unlabelled` given)
    self-distillation on the unlabelled images. `encoder` is refined in place and returned.

    1. held-out run: on a copy of the encoder and the fit part (1 - holdout of each class): BatchNorm statistics
       and a probe head from the fit part, fine-tune, distil, score the held-out part, which nothing has seen;
       with recipe.choose (refine "auto") it trains on the inner fit part, and the candidates are scored on the
       rest of the fit part: the probe wins -> the frozen encoder is served (_probe);
    2. final run: the same on all of valid, for the epochs the held-out run made.
    Returns the final model and the held-out run's accuracy.
    """
    t0 = time.monotonic()
    images = RefineImages(paths, labels, preset, recipe.min_scale, cache_mb, skipped)
    if len(images) < len(paths):  # changed on disk since they were listed: drop them
        paths = [paths[i] for i in images.kept]
        labels = [labels[i] for i in images.kept]
    fit, held = stratified_holdout(labels, recipe.holdout, recipe.seed)
    train, inner, scores, choice_s = fit, None, {}, 0.0
    if recipe.choose:  # the held-out run trains on the inner fit part: it is the recipe's own candidate
        t_choice = time.monotonic()
        inner = inner_split(paths, labels, n_classes, fit, recipe, preset, device)
        train = inner.fit
        scores["probe"] = probe_candidate(encoder, inner, recipe.head_c)
        choice_s = time.monotonic() - t_choice
    n_unlabelled = len(unlabelled) if unlabelled is not None and recipe.distill_epochs > 0 else 0
    curve: list[dict] = []

    enc = copy.deepcopy(encoder)
    train_paths, train_labels = [paths[i] for i in train], [labels[i] for i in train]
    head = lp_head(enc, train_paths, train_labels, n_classes, preset, device, recipe.head_c)
    finetune_s, distill_s = held_out_budget(
        recipe.time_budget_s - choice_s if recipe.time_budget_s > 0 else 0.0,
        time.monotonic() - t0 - choice_s,  # the set-up the final run repeats (not the probe candidate)
        len(train),
        len(labels),
        recipe.epochs,
        n_unlabelled,
        recipe.distill_epochs if n_unlabelled else 0,
    )
    watch = HeldOutWatch(enc, head, [paths[i] for i in held], [labels[i] for i in held], preset, device, curve)
    epochs = finetune(enc, head, images.subset(train), recipe, device, recipe.epochs, finetune_s, watch.on_epoch)
    teacher_acc, distilled = None, 0
    if n_unlabelled and unlabelled is not None:
        teacher_acc = watch.acc
        watch.start("distill", epochs)
        # The final run's teacher pass takes as long again: it comes out of this run's distillation budget.
        distilled = distil(
            enc, head, unlabelled, images.subset(train), preset, recipe, device=device, epochs=recipe.distill_epochs,
            time_budget_s=distill_s, on_epoch=watch.on_epoch, teacher_passes=2,
        )  # fmt: skip
    predictions, acc = watch.predictions, watch.acc
    choice = None
    if inner is not None:
        t_choice = time.monotonic()
        scores[f"finetune lr={recipe.lr:g}"] = inner.score(enc, head)
        gentle = None
        if recipe.time_budget_s <= 0:  # refined by epochs: a gentler fine-tuning costs no budget's share
            gentle = gentle_candidate(encoder, inner, images, recipe)
            scores[f"finetune lr={recipe.lr * GENTLE:g}"] = gentle[0]
        choice = choose_recipe(scores, recipe, inner, choice_s + time.monotonic() - t_choice)
        if choice.recipe == "probe":
            return _probe(encoder, paths, labels, fit, held, n_classes, preset, device, recipe, choice, t0)
        if gentle is not None and choice.lr != recipe.lr:  # metric_value: the gentler run's, on the held-out part
            held_paths, held_labels = inner.part(held)
            predictions = predict(gentle[1], gentle[2], held_paths, preset, device)
            acc = accuracy(predictions, held_labels)
            recipe = replace(recipe, lr=choice.lr)

    def final_epoch(phase: str, first: int) -> Callable[[int, float, float, float], None]:
        return lambda epoch, loss, train_acc, _: curve.append(_row("final", phase, first + epoch, loss, train_acc))

    head = lp_head(encoder, paths, labels, n_classes, preset, device, recipe.head_c)
    finetune(encoder, head, images, recipe, device, epochs, 0.0, final_epoch("finetune", 0))
    if distilled and unlabelled is not None:
        on_epoch = final_epoch("distill", epochs)
        distil(encoder, head, unlabelled, images, preset, recipe, device=device, epochs=distilled, on_epoch=on_epoch)
    fit_time_s = time.monotonic() - t0
    return RefineResult(
        encoder, head, acc, held, predictions, epochs, fit_time_s, distilled, teacher_acc, curve,
        choice.record() if choice else None,
    )  # fmt: skip


def _probe(
    encoder: nn.Module,
    paths: list[Path],
    labels: list[int],
    fit: list[int],
    held: list[int],
    n_classes: int,
    preset: EvalPreset,
    device: torch.device,
    recipe: RefineRecipe,
    choice: Choice,
    t0: float,
) -> RefineResult:
    """The frozen encoder with a linear probe head, in the same held-out protocol: a head fitted on the fit part
    scores the held-out part; the exported head is fitted on all of valid."""
    features, kept, _ = run_frozen(encoder, paths, preset, device)
    index = {i: k for k, i in enumerate(kept)}
    fit_kept = [i for i in fit if i in index]
    head = fit_head(features[[index[i] for i in fit_kept]], [labels[i] for i in fit_kept], n_classes, recipe.head_c)
    predictions = predict(encoder, head, [paths[i] for i in held], preset, device)
    acc = accuracy(predictions, [labels[i] for i in held])
    head = fit_head(features, [labels[i] for i in kept], n_classes, recipe.head_c)
    return RefineResult(encoder.eval(), head, acc, held, predictions, 0, time.monotonic() - t0, choice=choice.record())


def distil(
    encoder: nn.Module,
    head: nn.Linear,
    unlabelled: ImageCache,
    labelled: RefineImages,
    preset: EvalPreset,
    recipe: RefineRecipe,
    *,  # the schedule by name: the call sites read as what they set
    epochs: int,
    device: torch.device,
    time_budget_s: float = 0.0,
    on_epoch: Callable[[int, float, float, float], None] | None = None,
    teacher_passes: int = 1,
) -> int:
    """Self-distillation (training/distill.py) of encoder + head in place: the model's own soft targets on
    `unlabelled`, taken once, plus `labelled`'s labels, trained with the refine recipe. `time_budget_s` (> 0)
    covers `teacher_passes` passes as long as the one made here (a later run's pass paid in advance) and the
    training. Returns the epochs completed."""
    t = time.monotonic()
    n_classes = head.out_features
    soft = teacher_targets(Classifier(encoder, head), n_classes, unlabelled, preset, device, recipe.distill_temperature)
    if time_budget_s > 0:
        time_budget_s = max(time_budget_s - teacher_passes * (time.monotonic() - t), 1e-3)
    data = distill_images(unlabelled, soft, labelled)
    return finetune(encoder, head, data, recipe, device, epochs, time_budget_s, on_epoch)
