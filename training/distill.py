"""Self-distillation on the unlabelled images: SimCLRv2's third step (Chen et al., NeurIPS 2020, section 2).

After fine-tuning, the refined model (the teacher) gives every unlabelled train image its class probabilities;
the student, started from the teacher, is trained on those soft targets and on the labelled images' own labels,
with the fine-tuning recipe's augmentation (crop + flip) and loss (cross-entropy, here against a distribution).
The unlabelled images are used a second time, now with the task's classes. The teacher sees clean eval-preset
images and the student augmented crops, as in Noisy Student (Xie et al., CVPR 2020).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dataset.cache import ImageCache
from evaluation.features import run_frozen
from handler.eval_preset import EvalPreset
from training.refine_images import RefineImages


def teacher_targets(
    teacher: nn.Module, n_classes: int, images: ImageCache, preset: EvalPreset, device: torch.device, t: float
) -> torch.Tensor:
    """Class probabilities at temperature t (N x n_classes), one row per image of `images`, from its file through
    the eval preset; a file that became unreadable since it was cached gets a uniform row (it teaches nothing)."""
    logits, kept, _ = run_frozen(teacher, images.paths, preset, device, num_workers=2)
    probs = torch.full((len(images), n_classes), 1 / n_classes)
    if kept:
        probs[kept] = torch.softmax(logits / t, dim=1)
    return probs


def distill_images(unlabelled: ImageCache, soft: torch.Tensor, labelled: RefineImages) -> RefineImages:
    """The labelled images with their one-hot labels, then the unlabelled ones with the teacher's soft targets:
    one RefineImages (crop + flip), sharing the pixels both caches already hold (nothing is decoded again)."""
    data = copy.copy(labelled)
    data.items = labelled.items + unlabelled.items
    data.paths = labelled.paths + unlabelled.paths
    data.kept = list(range(len(data.items)))
    n_classes = soft.shape[1]
    data.labels = torch.cat([nn.functional.one_hot(labelled.labels, n_classes).float(), soft])
    return data
