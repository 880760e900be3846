"""refine "auto" is honest: the choice is made inside the fit part, never on the held-out images behind
metric_value, and it picks the recipe the scores say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handler.eval_preset import EvalPreset
from training.finetune import RefineRecipe, stratified_holdout
from training.refine_choice import InnerSplit, choose_recipe, inner_split

LABELS = [c for c in range(6) for _ in range(20)]  # 6 classes x 20 images


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_inner_split_lies_inside_the_fit_part_and_never_touches_the_held_out_part(seed):
    recipe = RefineRecipe(seed=seed, choose=True)
    paths = [Path(f"img{i}.png") for i in range(len(LABELS))]
    fit, held = stratified_holdout(LABELS, recipe.holdout, recipe.seed)
    inner = inner_split(paths, LABELS, 6, fit, recipe, EvalPreset(32), torch.device("cpu"))
    assert set(fit).isdisjoint(held) and sorted(fit + held) == list(range(len(LABELS)))
    assert set(inner.fit) | set(inner.held) == set(fit)  # the whole fit part, and nothing else
    assert set(inner.fit).isdisjoint(inner.held)
    assert set(inner.fit).isdisjoint(held) and set(inner.held).isdisjoint(held)  # metric_value's images unseen
    assert {LABELS[i] for i in inner.held} == set(range(6))  # every class is scored by the choice


def _inner(n_held: int) -> InnerSplit:
    return InnerSplit([], [], 6, list(range(100)), list(range(100, 100 + n_held)), EvalPreset(32), torch.device("cpu"))


@pytest.mark.parametrize(
    ("probe", "finetune", "n_held", "chosen"),
    [
        (0.85, 0.20, 24, "probe"),  # fine-tuning ruined the encoder: keep its features
        (0.40, 0.70, 24, "finetune"),  # fine-tuning pays
        (0.62, 0.60, 96, "finetune"),  # ahead within the noise: fine-tuning
        (0.75, 0.60, 96, "probe"),  # ahead beyond one standard error (0.05)
        (0.66, 0.60, 96, "probe"),  # just beyond it (0.0494)
        (0.64, 0.60, 96, "finetune"),  # just inside it
    ],
)
def test_the_choice_is_the_one_the_scores_say(probe, finetune, n_held, chosen):
    choice = choose_recipe(probe, finetune, _inner(n_held), 0.0)
    assert choice.recipe == chosen and choice.record()["chosen"] == chosen
    assert choice.record()["inner_acc"] == {"probe": probe, "finetune": finetune}
