"""Training settings: defaults, `--annotation_data` parsing and validation.

`advance_settings` in `--annotation_data` overrides the defaults below. An unknown key or a bad
value is a SettingsError whose message lists the valid keys, before anything is read or written.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

BACKBONES = ("resnet18", "resnet34", "resnet50")
STEMS = ("auto", "cifar", "imagenet")
# Not ddp_spawn: its processes train, but their steps and state do not come back to the job's own process.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed")
REFINES = ("finetune", "probe", "auto")
AUGMENT_PLACES = ("auto", "device", "workers")

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A bad `--annotation_data`; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class Settings:
    """Defaults suit a GPU and a few thousand images (SimSiam paper, Sec. 4 and Appendix A)."""

    epochs: int = 100  # passes over train/images
    batch_size: int = 128  # per device
    input_size: int = 224  # crop side in pixels; < 64 switches to the CIFAR stem (paper, Appendix D)
    lr: float = 0.05  # base lr; the used lr is lr * global_batch / 256 with cosine decay
    backbone: str = "resnet18"  # torchvision ResNet, randomly initialised
    stem: str = "auto"  # "auto": CIFAR stem below 64 px, else ImageNet; "cifar" / "imagenet" force one
    seed: int = 42
    num_workers: int = 4  # DataLoader processes; capped at the CPU count
    augment_on: str = "auto"  # colour/grey/blur: "auto" = on the GPU when training on one, else in the workers
    weight_decay: float = 1e-4  # paper: 1e-4 on ImageNet, 5e-4 on CIFAR
    momentum: float = 0.9
    proj_dim: int = 2048  # projector output d; the collapse monitor is healthy near 1/sqrt(d)
    pred_hidden_dim: int = 512  # predictor bottleneck (paper: d/4)
    min_scale: float = 0.2  # RandomResizedCrop lower scale bound (paper: 0.2)
    cj_strength: float = 1.0  # colour-jitter strength: brightness/contrast/saturation 0.4x, hue 0.1x (paper: 1)
    cj_hue: float = 0.1  # hue jitter before cj_strength; 0.5 makes colour useless as a shortcut
    gray_prob: float = 0.2  # RandomGrayscale probability (paper: 0.2)
    time_budget_s: float = 0.0  # wall-clock cap on pretraining, 0 = none; cosine decay ends at it
    cache_mb: int = 2048  # memory for decoded, downscaled train images; the rest is read from disk
    cv_folds: int = 5  # stratified folds inside valid for the linear probe's held-out accuracy
    # "auto": LP-FT of encoder + head on valid unless the frozen encoder's probe beats it on an inner split (the
    # served model is never worse than its own features); "finetune": LP-FT always; "probe": the frozen encoder
    refine: str = "auto"
    refine_epochs: int = 30  # fine-tuning epochs over valid (SimCLR: 30 for 10 % labels, 60 for 1 %)
    refine_batch_size: int = 64
    refine_lr: float = 0.2  # fine-tuning backbone base lr; used lr = refine_lr x batch / 256 (docs/benchmarks.md)
    refine_head_lr: float = 0.2  # head base lr (the head starts from the linear probe)
    refine_holdout: float = 0.2  # share of each valid class held out for the refined accuracy (metric_value)
    refine_time_budget_s: float = 0.0  # wall-clock cap on the whole refine stage, both runs (0 = none)
    knn_k: int = 20  # neighbours for the logged kNN accuracy
    devices: int = 1  # devices per node (GPUs, or CPU processes with strategy ddp)
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy; "ddp" for torchrun / SLURM
    precision: str = "auto"  # "auto": bf16-mixed on Ampere+ GPUs, 16-mixed on older; CPU: bf16-mixed if native
    resume: str = ""  # "last": continue the newest interrupted run's checkpoint; or a path to a .ckpt
    init: str = ""  # start pretraining from: a model folder, a .ckpt, a ResNet state_dict file, or "imagenet"
    train_shards: str = ""  # the train images as shards (python -m dataset.shards): a folder or s3:// URL
    checkpoint_interval_s: float = 0.0  # a resumable checkpoint every this many seconds of training, 0 = per epoch

    @property
    def small_stem(self) -> bool:
        return self.stem == "cifar" or (self.stem == "auto" and self.input_size < 64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CHECKS: dict[str, tuple[type, Any, str]] = {
    # key: (type, predicate, what a valid value is)
    "epochs": (int, lambda v: 1 <= v <= 100_000, "an integer >= 1"),
    "batch_size": (int, lambda v: 2 <= v <= 65_536, "an integer >= 2 (BatchNorm needs 2 samples)"),
    "input_size": (int, lambda v: 16 <= v <= 1024, "an integer from 16 to 1024"),
    "lr": (float, lambda v: 0 < v <= 10, "a number > 0, e.g. 0.05"),
    "backbone": (str, lambda v: v in BACKBONES, f"one of {', '.join(BACKBONES)}"),
    "stem": (str, lambda v: v in STEMS, f"one of {', '.join(STEMS)}"),
    "seed": (int, lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32-1"),
    "num_workers": (int, lambda v: 0 <= v <= 256, "an integer >= 0"),
    "augment_on": (str, lambda v: v in AUGMENT_PLACES, f"one of {', '.join(AUGMENT_PLACES)}"),
    "weight_decay": (float, lambda v: 0 <= v < 1, "a number from 0 to 1, e.g. 1e-4"),
    "momentum": (float, lambda v: 0 <= v < 1, "a number from 0 to 1, e.g. 0.9"),
    "proj_dim": (int, lambda v: 16 <= v <= 16_384, "an integer from 16 to 16384"),
    "pred_hidden_dim": (int, lambda v: 8 <= v <= 16_384, "an integer from 8 to 16384"),
    "min_scale": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "cj_strength": (float, lambda v: 0 <= v <= 2.5, "a number from 0 to 2.5"),
    "cj_hue": (float, lambda v: 0 <= v <= 0.5, "a number from 0 to 0.5"),
    "gray_prob": (float, lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
    "time_budget_s": (float, lambda v: v >= 0, "seconds >= 0 (0 = no budget)"),
    "cache_mb": (int, lambda v: v >= 0, "megabytes >= 0"),
    "cv_folds": (int, lambda v: 2 <= v <= 20, "an integer from 2 to 20"),
    "knn_k": (int, lambda v: 1 <= v <= 1000, "an integer >= 1"),
    "refine": (str, lambda v: v in REFINES, f"one of {', '.join(REFINES)}"),
    "refine_epochs": (int, lambda v: 1 <= v <= 10_000, "an integer >= 1"),
    "refine_batch_size": (int, lambda v: 2 <= v <= 65_536, "an integer >= 2 (BatchNorm needs 2 samples)"),
    "refine_lr": (float, lambda v: 0 <= v <= 10, "a number >= 0, e.g. 0.2 (0 freezes the backbone)"),
    "refine_head_lr": (float, lambda v: 0 <= v <= 10, "a number >= 0, e.g. 0.2"),
    "refine_holdout": (float, lambda v: 0.05 <= v <= 0.5, "a share from 0.05 to 0.5, e.g. 0.2"),
    "refine_time_budget_s": (float, lambda v: v >= 0, "seconds >= 0 (0 = no budget)"),
    "devices": (int, lambda v: 1 <= v <= 1024, "an integer >= 1"),
    "num_nodes": (int, lambda v: 1 <= v <= 4096, "an integer >= 1"),
    "strategy": (
        str,
        lambda v: v in STRATEGIES,
        f"one of {', '.join(STRATEGIES)} (not ddp_spawn: its training does not come back to the job; use ddp)",
    ),
    "resume": (str, lambda v: len(v) < 4096, "'last' or the path of a .ckpt ('' = start afresh)"),
    "precision": (str, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "init": (
        str,
        lambda v: len(v) < 4096,
        "'' (random init), a model folder, a .ckpt, a file holding a ResNet state_dict, or 'imagenet'",
    ),
    "train_shards": (
        str,
        lambda v: len(v) < 4096,
        "'' (train/images), or a folder or s3:// URL of shards made by python -m dataset.shards",
    ),
    "checkpoint_interval_s": (float, lambda v: v >= 0, "seconds >= 0 (0 = a checkpoint at the end of each epoch)"),
}
assert set(_CHECKS) == {f.name for f in fields(Settings)}, "every setting needs a check"
VALID_KEY_NAMES = f"Valid keys: {', '.join(_CHECKS)}"  # appended to every bad-value message


def valid_keys_help() -> str:
    defaults = Settings().to_dict()
    return "; ".join(f"{k} ({what}, default {defaults[k]!r})" for k, (_, _, what) in _CHECKS.items())


def parse_annotation_data(text: str) -> Settings:
    """Parse `--annotation_data` (a Python literal or JSON dict) into validated Settings."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise SettingsError(
                f"--annotation_data is neither JSON nor a Python literal ({e}); "
                "pass e.g. \"{'advance_settings': {'epochs': 10}}\""
            ) from e
    if not isinstance(data, dict):
        raise SettingsError(f"--annotation_data must be a dict, got {type(data).__name__}")
    _check_top_level(data)
    advance = data.get("advance_settings", {})
    if advance is None:
        advance = {}
    if not isinstance(advance, dict):
        raise SettingsError(f"advance_settings must be a dict, got {type(advance).__name__}")
    return build_settings(advance)


def _check_top_level(data: dict[str, Any]) -> None:
    """Settings go under advance_settings; a setting or a misspelt advance_settings beside it would be lost."""
    others = [k for k in data if k != "advance_settings"]
    misplaced = [k for k in others if k in _CHECKS]
    if misplaced:
        raise SettingsError(
            f"{misplaced} must go inside advance_settings, e.g. \"{{'advance_settings': {{'{misplaced[0]}': ...}}}}\""
        )
    near = [k for k in others if isinstance(k, str) and difflib.get_close_matches(k, ["advance_settings"], cutoff=0.8)]
    if near:
        raise SettingsError(f"unknown key(s) {near} in --annotation_data: did you mean 'advance_settings'?")
    if others:
        # A platform may send fields of its own here; they do not configure training.
        log.warning("--annotation_data keys %s are not settings and are ignored", others)


def build_settings(overrides: dict[str, Any]) -> Settings:
    unknown = sorted(set(overrides) - set(_CHECKS))
    if unknown:
        raise SettingsError(f"unknown advance_settings key(s) {unknown}. Valid keys: {valid_keys_help()}")
    values = {}
    for key, value in overrides.items():
        typ, ok, what = _CHECKS[key]
        values[key] = _coerce(key, value, typ, what)
        if not ok(values[key]):
            raise SettingsError(f"advance_settings {key}={value!r} is invalid: it must be {what}. {VALID_KEY_NAMES}")
    settings = Settings(**values)
    return settings


def _coerce(key: str, value: Any, typ: type, what: str) -> Any:
    bad = SettingsError(f"advance_settings {key}={value!r} has the wrong type: it must be {what}. {VALID_KEY_NAMES}")
    if isinstance(value, bool):
        raise bad  # True is an int in Python; never what a user means by epochs=True
    if typ in (int, float) and isinstance(value, str):
        # Platforms that fill the dict from form fields send "10" for 10.
        try:
            value = float(value.strip()) if typ is float else int(value.strip())
        except ValueError:
            raise bad from None
    if typ is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise bad
        return value
    if typ is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad  # NaN and infinity
        return float(value)
    if not isinstance(value, str):
        raise bad
    return value
