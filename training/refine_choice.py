"""refine "auto": which refine recipe serves this encoder best, chosen on an inner split of the fit part.

A strong encoder (a warm start, a user's own weights) can lose to its own frozen features when fine-tuning
re-learns it at a learning rate meant for a young one; a weak encoder gains most from fine-tuning. The choice is
made where it costs the measurement nothing: the fit part (1 - holdout of valid) is split again, each candidate
trains on the inner fit part and is scored on the inner held-out part, and the winner's held-out accuracy is
`metric_value`, measured on images no choice has seen (training/refine.py).

Candidates: the frozen encoder with a linear probe head (what the frozen features give), and LP-FT at the
recipe's learning rate, which is the held-out run itself, trained on the inner fit part (the choice adds no
fine-tuning run, so under a time budget the final run keeps the epochs plain "finetune" gets). The probe is chosen
only when it beats the fine-tuning by more than the inner held-out accuracy's
standard error (sqrt(p (1 - p) / n)): a fine-tuning's final run trains on all of valid, which its inner score on
fewer images understates, and on ~100 inner images a few points either way are noise (measured: on the demo a
probe ahead by 2 points on 96 images served 0.47 where fine-tuning served 0.62). An encoder that fine-tuning
ruins loses by far more than that, and the probe keeps it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from evaluation.features import run_frozen
from evaluation.probe import fit_head
from handler.eval_preset import EvalPreset
from training.finetune import RefineRecipe, accuracy, predict, stratified_holdout

log = logging.getLogger(__name__)


@dataclass
class InnerSplit:
    """The fit part split again: the candidates train on `fit` and are scored on `held` (indices into `paths`),
    with the eval preset on `device`."""

    paths: list[Path]
    labels: list[int]
    n_classes: int
    fit: list[int]
    held: list[int]
    preset: EvalPreset
    device: torch.device

    def part(self, which: list[int]) -> tuple[list[Path], list[int]]:
        return [self.paths[i] for i in which], [self.labels[i] for i in which]

    def score(self, encoder: nn.Module, head: nn.Linear) -> float:
        """Accuracy on the inner held-out images."""
        paths, labels = self.part(self.held)
        return accuracy(predict(encoder, head, paths, self.preset, self.device), labels)


def inner_split(
    paths: list[Path],
    labels: list[int],
    n_classes: int,
    fit: list[int],
    recipe: RefineRecipe,
    preset: EvalPreset,
    device: torch.device,
) -> InnerSplit:
    inner_fit, inner_held = stratified_holdout([labels[i] for i in fit], recipe.holdout, recipe.seed + 1)
    held = [fit[i] for i in inner_held]
    return InnerSplit(paths, labels, n_classes, [fit[i] for i in inner_fit], held, preset, device)


@dataclass
class Choice:
    recipe: str  # "probe" or "finetune"
    inner_acc: dict[str, float]  # each candidate's accuracy on the inner held-out images
    inner_images: tuple[int, int]  # (inner fit, inner held out)
    seconds: float  # what the choice added to the stage (the probe candidate and the scoring)

    def record(self) -> dict:
        return {
            "chosen": self.recipe,
            "inner_acc": {k: round(v, 4) for k, v in self.inner_acc.items()},
            "inner_fit_images": self.inner_images[0],
            "inner_held_out_images": self.inner_images[1],
            "seconds": round(self.seconds, 1),
        }


def probe_candidate(encoder: nn.Module, inner: InnerSplit) -> float:
    """The frozen encoder with a probe head fitted on the inner fit part, scored on the inner held-out part."""
    paths, labels = inner.part(inner.fit)
    features, kept, _ = run_frozen(encoder, paths, inner.preset, inner.device)
    head = fit_head(features, [labels[k] for k in kept], inner.n_classes)
    return inner.score(encoder, head)


def standard_error(a: float, b: float, n: int) -> float:
    """The binomial standard error of an accuracy near the two compared, on n images."""
    p = (a + b) / 2
    return math.sqrt(p * (1 - p) / max(n, 1))


def choose_recipe(probe: float, finetune: float, inner: InnerSplit, seconds: float) -> Choice:
    """The fine-tuning, unless the probe's inner held-out accuracy beats it by more than one standard error."""
    won = probe - finetune > standard_error(probe, finetune, len(inner.held))
    scores = {"probe": probe, "finetune": finetune}
    choice = Choice("probe" if won else "finetune", scores, (len(inner.fit), len(inner.held)), seconds)
    log.info(
        "refine auto: %s on %d inner held-out images (probe %.4f, fine-tuning %.4f), choice %.1f s",
        choice.recipe,
        len(inner.held),
        probe,
        finetune,
        seconds,
    )
    return choice
