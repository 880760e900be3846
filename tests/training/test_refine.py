"""The refine stage: an honest held-out accuracy, LP-FT that really trains the encoder, and `refine: probe`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, run_train
from PIL import Image

from dataset.reader import Skipped
from handler.eval_preset import EvalPreset
from training.backbone import build_backbone
from training.finetune import finetune
from training.model import SimSiam
from training.refine import RefineRecipe, held_out_budget, predict, refine, stratified_holdout
from training.refine_choice import Choice, InnerSplit, choose_recipe, standard_error


def _noise_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_holdout_is_stratified_and_keeps_every_class_in_the_fit_part():
    labels = [0] * 10 + [1] * 5 + [2] * 2 + [3]
    fit, held = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(fit + held) == list(range(len(labels))) and not set(fit) & set(held)
    held_per_class = np.bincount([labels[i] for i in held], minlength=4).tolist()
    assert held_per_class == [2, 1, 1, 0]  # 20 % rounded, at least 1 where a class has 2, none from a single image
    assert set(labels[i] for i in fit) == {0, 1, 2, 3}
    assert stratified_holdout(labels, 0.2, seed=0) == (fit, held)  # seeded


def test_the_budget_covers_both_runs_and_their_set_up():
    # 480 fit + 600 all images; 6 s set-up now, about 7.5 s more for the final run's: 100 - 13.5 = 86.5 s to train,
    # 4/9 of it for the held-out run (its 480 images against the final run's 600, same epochs)
    assert held_out_budget(100.0, 6.0, 480, 600) == pytest.approx(86.5 * 480 / 1080)
    assert held_out_budget(0.0, 6.0, 480, 600) == 0.0  # no budget: epochs only
    assert 0 < held_out_budget(10.0, 6.0, 480, 600) < 0.01  # set-up used it up: a token budget, one epoch


def test_random_labels_give_chance_held_out_while_the_refined_model_fits_its_training_images(tmp_path):
    # Leak test: noise images with random labels can be memorised (training accuracy high) but never predicted,
    # so any held-out accuracy well above chance would mean the held-out images leaked into training.
    n_classes, n = 4, 80
    paths = _noise_images(tmp_path / "valid", n)
    labels = np.random.default_rng(1).permutation(np.arange(n) % n_classes).tolist()
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", small_stem=True)[0]
    preset = EvalPreset(input_size=32)
    device = torch.device("cpu")
    recipe = RefineRecipe(epochs=6, batch_size=16, lr=0.05, head_lr=0.05, min_scale=0.9, num_workers=0)
    r = refine(encoder, paths, labels, n_classes, preset, recipe, device, 64, Skipped())
    assert len(r.held_out) == 16 and r.epochs == 6
    assert r.acc <= 0.5, f"held-out accuracy {r.acc} on random labels: the held-out images leaked"
    fitted = [i for i in range(n) if i not in set(r.held_out)]
    pred = np.asarray(predict(r.encoder, r.head, [paths[i] for i in fitted], preset, device))
    train_acc = float((pred == np.asarray([labels[i] for i in fitted])).mean())
    assert train_acc >= 0.8, f"the refined model fits only {train_acc:.2f} of its own (random) training labels"
    assert [row["run"] for row in r.curve].count("final") == 6
    assert "held_out_acc" in [row for row in r.curve if row["run"] == "held-out"][-1]


def test_the_served_encoder_is_the_chosen_one_and_probe_keeps_it_frozen(tiny_dataset, trained_model, tmp_path):
    """The default (auto) records its choice and exports what it chose: a fine-tuned encoder, which moved away
    from the pretrained checkpoint, or the checkpoint's own; refine: probe exports the checkpoint's encoder with
    the linear probe, and metric_value is the probe's k-fold accuracy."""

    def exported_and_pretrained(model_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        scripted = torch.jit.load(str(model_path / "model.pt"))
        (ckpt,) = (model_path / "checkpoints").glob("*.ckpt")
        pretrained = SimSiam.load_from_checkpoint(ckpt, map_location="cpu").backbone
        return scripted.encoder.conv1.weight.detach(), pretrained.conv1.weight.detach()

    served = Path(trained_model["model_path"])
    info = json.loads((served / "model_info.json").read_text())
    assert info["metrics"]["refine"] == "auto"
    assert {"probe_acc", "knn_acc", "refine_curve", "refine_held_out_images", "refine_choice"} <= set(info["metrics"])
    chosen = info["metrics"]["refine_choice"]["chosen"]
    exported, pretrained = exported_and_pretrained(served)
    if chosen == "probe":
        assert info["metrics"]["refine_epochs"] == 0 and torch.equal(exported, pretrained)
    else:
        assert chosen.startswith("finetune") and info["metrics"]["refine_epochs"] == 2
        assert not torch.allclose(exported, pretrained)

    runs = tmp_path / "runs"
    proc = run_train(tiny_dataset, runs, settings={**TINY_SETTINGS, "refine": "probe"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["metrics"]["refine"] == "probe" and "refine_curve" not in info["metrics"]
    assert trial["metric_value"] == info["metrics"]["acc"] == info["metrics"]["probe_acc"]
    exported, pretrained = exported_and_pretrained(Path(trial["model_path"]))
    assert torch.equal(exported, pretrained)
    assert "linear probe" in proc.stdout


def test_simsiam_checkpoint_loads_in_one_line(trained_model):
    (ckpt,) = (Path(trained_model["model_path"]) / "checkpoints").glob("*.ckpt")
    model = SimSiam.load_from_checkpoint(ckpt, map_location="cpu")
    assert model.settings.input_size == TINY_SETTINGS["input_size"] and model.settings.proj_dim == 64
    z, p = model.eval()(torch.zeros(2, 3, 32, 32))
    assert z.shape == p.shape == (2, 64)


@pytest.mark.parametrize(
    ("key", "value"),
    [("refine", "lora"), ("refine_epochs", 0), ("refine_holdout", 0.9), ("refine_lr", -1), ("refine_batch_size", 1)],
)
def test_bad_refine_settings_fail_before_anything_is_written(tiny_dataset, tmp_path, key, value):
    proc = run_train(tiny_dataset, tmp_path, settings={key: value})
    assert proc.returncode == 2 and key in proc.stderr and "Valid keys" in proc.stderr
    assert not (tmp_path / "metric").exists()


def _colour_images(folder: Path, n: int, n_classes: int) -> tuple[list[Path], list[int]]:
    """Flat images whose colour is their class: an easy task for any encoder."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)][:n_classes]
    paths, labels = [], []
    for i in range(n):
        c = i % n_classes
        pixels = np.clip(np.array(colours[c]) + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(pixels).save(paths[-1])
        labels.append(c)
    return paths, labels


def _refine_auto(tmp_path: Path, **recipe: float):
    """refine "auto" of a random resnet18 on 60 images of 3 colour classes (48 fit, 12 held out)."""
    paths, labels = _colour_images(tmp_path / "valid", 60, 3)
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", small_stem=True)[0]
    auto = RefineRecipe(batch_size=8, lr=0.05, head_lr=0.05, num_workers=0, choose=True, **recipe)
    return refine(encoder, paths, labels, 3, EvalPreset(input_size=32), auto, torch.device("cpu"), 64, Skipped())


def test_refine_auto_chooses_on_an_inner_split_and_runs_the_winner(tmp_path):
    """refine "auto": the frozen probe and the fine-tuning are scored on an inner split of the fit part; the winner
    then runs the held-out protocol, scored on images no candidate has seen (which one wins for which scores:
    tests/training/test_refine_choice.py)."""
    r = _refine_auto(tmp_path, epochs=2)
    choice = r.choice
    assert list(choice["inner_acc"]) == ["probe", "finetune"]
    assert choice["chosen"] in choice["inner_acc"]
    assert choice["inner_fit_images"] + choice["inner_held_out_images"] == 48 and len(r.held_out) == 12
    assert r.epochs == (0 if choice["chosen"] == "probe" else 2)


def test_refine_auto_under_a_budget_uses_the_held_out_run_as_the_fine_tuning_candidate(tmp_path, monkeypatch):
    """Under refine_time_budget_s the choice adds no fine-tuning run: the held-out run trains on the inner fit part
    and is the recipe's candidate beside the probe; the final run then trains on all of valid."""
    import training.refine as refine_module

    trained: list[int] = []

    def counting_finetune(encoder, head, data, *args, **kwargs):
        trained.append(len(data))
        return finetune(encoder, head, data, *args, **kwargs)

    monkeypatch.setattr(refine_module, "finetune", counting_finetune)
    r = _refine_auto(tmp_path, epochs=10_000, time_budget_s=8.0)
    choice = r.choice
    assert list(choice["inner_acc"]) == ["probe", "finetune"]
    inner_fit = choice["inner_fit_images"]
    assert inner_fit + choice["inner_held_out_images"] == 48 and inner_fit < 48
    if choice["chosen"] == "probe":
        assert trained == [inner_fit] and r.epochs == 0
    else:
        assert trained == [inner_fit, 60] and 1 <= r.epochs < 10_000  # the budget ended the held-out run


def test_refine_auto_serves_the_probe_only_when_it_wins_beyond_the_inner_noise():
    """On 96 inner held-out images a probe 2 points ahead is noise (fine-tuning is chosen); an encoder that
    fine-tuning ruins (0.98 -> 0.27) keeps its frozen features."""
    inner = InnerSplit([], [], 6, [], list(range(96)), EvalPreset(input_size=32), torch.device("cpu"))
    near = choose_recipe(0.4375, 0.4167, inner, 1.0)
    assert near.recipe == "finetune" and near.record()["chosen"] == "finetune"
    ruined = choose_recipe(0.98, 0.27, inner, 1.0)
    assert ruined.recipe == "probe" and ruined.record()["chosen"] == "probe"
    assert standard_error(0.5, 0.5, 100) == pytest.approx(0.05)


def test_refine_auto_serving_the_probe_keeps_the_encoder_and_scores_the_held_out_part(tmp_path, monkeypatch):
    """When the frozen features win, the exported model is the unchanged encoder with a probe head on all of
    valid, and metric_value is that recipe's accuracy on the held-out part."""
    import training.refine as refine_module

    paths, labels = _colour_images(tmp_path / "valid", 60, 3)
    encoder = build_backbone("resnet18", small_stem=True)[0].eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    probe_wins = Choice("probe", {"probe": 1.0, "finetune": 0.5}, (38, 10), 0.1)
    monkeypatch.setattr(refine_module, "choose_recipe", lambda *a, **k: probe_wins)
    recipe = RefineRecipe(epochs=2, batch_size=8, num_workers=0, choose=True)
    preset, device = EvalPreset(input_size=32), torch.device("cpu")
    r = refine(encoder, paths, labels, 3, preset, recipe, device, 64, Skipped())
    assert r.epochs == 0 and r.choice["chosen"] == "probe" and r.head.out_features == 3
    assert all(torch.equal(v, r.encoder.state_dict()[k]) for k, v in before.items())  # BatchNorm stats too
    truth = np.asarray([labels[i] for i in r.held_out])
    assert r.acc == pytest.approx(float((np.asarray(r.predictions) == truth).mean())) and len(r.predictions) == 12
