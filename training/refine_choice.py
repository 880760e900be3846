"""refine "auto": which refine recipe serves this encoder best, chosen on an inner split of the fit part.

A strong encoder (a warm start, a user's own weights) can lose to its own frozen features when fine-tuning
re-learns it at a learning rate meant for a young one; a weak encoder gains most from fine-tuning. The choice is
made where it costs the measurement nothing: the fit part (1 - holdout of valid) is split again, each candidate
trains on the inner fit part and is scored on the inner held-out part, and only the winner then runs the
held-out protocol (training/refine.py), so `metric_value` stays measured on images no choice has seen.

Candidates: the frozen encoder with a linear probe head (what the frozen features give), and LP-FT at the
recipe's learning rate and at a tenth of it (a gentler fine-tuning that keeps more of a good encoder). A tie goes
to the earlier candidate: the probe first, as it is the cheapest and changes nothing of the encoder.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evaluation.features import run_frozen
from evaluation.probe import fit_head
from handler.eval_preset import EvalPreset
from training.finetune import RefineRecipe, finetune, lp_head, predict, stratified_holdout
from training.refine_images import RefineImages

log = logging.getLogger(__name__)

GENTLE = 0.1  # the second fine-tuning candidate's learning rate, as a share of the recipe's


@dataclass
class Choice:
    recipe: str  # "probe" or "finetune"
    lr: float  # the backbone's base learning rate of the chosen fine-tuning (the recipe's for "probe")
    inner_acc: dict[str, float]  # each candidate's accuracy on the inner held-out images
    inner_images: tuple[int, int]  # (inner fit, inner held out)
    seconds: float

    def record(self) -> dict:
        return {
            "chosen": self.recipe if self.recipe == "probe" else f"finetune lr={self.lr:g}",
            "inner_acc": {k: round(v, 4) for k, v in self.inner_acc.items()},
            "inner_fit_images": self.inner_images[0],
            "inner_held_out_images": self.inner_images[1],
            "seconds": round(self.seconds, 1),
        }


def choose_recipe(
    encoder: nn.Module,
    paths: list[Path],
    labels: list[int],
    fit: list[int],
    n_classes: int,
    preset: EvalPreset,
    images: RefineImages,
    recipe: RefineRecipe,
    device: torch.device,
    time_budget_s: float,
) -> Choice:
    """Score the candidates on an inner split of `fit` (indices into paths/labels); `time_budget_s` (> 0) is
    shared by the fine-tuning candidates. `encoder` is not changed."""
    t0 = time.monotonic()
    inner_fit_pos, inner_held_pos = stratified_holdout([labels[i] for i in fit], recipe.holdout, recipe.seed + 1)
    inner_fit = [fit[i] for i in inner_fit_pos]
    inner_held = [fit[i] for i in inner_held_pos]
    truth = np.asarray([labels[i] for i in inner_held])
    fit_paths, fit_labels = [paths[i] for i in inner_fit], [labels[i] for i in inner_fit]
    held_paths = [paths[i] for i in inner_held]

    scores: dict[str, float] = {}
    features, kept, _ = run_frozen(encoder, fit_paths, preset, device)
    head = fit_head(features, [fit_labels[i] for i in kept], n_classes, recipe.head_c)
    scores["probe"] = float((np.asarray(predict(encoder, head, held_paths, preset, device)) == truth).mean())

    lrs = [recipe.lr, recipe.lr * GENTLE]
    each_s = time_budget_s / len(lrs) if time_budget_s > 0 else 0.0
    for lr in lrs:
        t = time.monotonic()
        enc = copy.deepcopy(encoder)
        head = lp_head(enc, fit_paths, fit_labels, n_classes, preset, device, recipe.head_c)
        budget = max(each_s - (time.monotonic() - t), 1e-3) if each_s else 0.0
        finetune(enc, head, images.subset(inner_fit), replace(recipe, lr=lr), device, recipe.epochs, budget)
        predicted = np.asarray(predict(enc, head, held_paths, preset, device))
        scores[f"finetune lr={lr:g}"] = float((predicted == truth).mean())
        del enc
    best = max(scores, key=lambda k: scores[k])  # the first of equals: the probe before fine-tuning
    chosen_lr = recipe.lr if best == "probe" else float(best.split("=")[1])
    choice = Choice(
        "probe" if best == "probe" else "finetune", chosen_lr, scores, (len(inner_fit), len(inner_held)), 0.0
    )
    choice.seconds = time.monotonic() - t0
    log.info(
        "refine auto: %s on %d inner held-out images (%s), %.1f s",
        choice.record()["chosen"],
        len(inner_held),
        ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
        choice.seconds,
    )
    return choice
