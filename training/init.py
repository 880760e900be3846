"""Start pretraining from an encoder the user already has, not from random weights (Reed et al., "Self-Supervised
Pretraining Improves Self-Supervised Pretraining", WACV 2022: SSL started from a checkpoint converges much faster).

`init` names one of:
- a model folder of this product (`runs/models/<uuid4>`): its checkpoint's encoder, projector and predictor (its
  model.pt's encoder when the checkpoint is gone), and its metrics are recorded as the parent's;
- a `.ckpt` of this product (encoder, projector, predictor);
- a file holding a torchvision ResNet state_dict of the chosen backbone (ImageNet weights downloaded elsewhere);
- `imagenet`: torchvision's own weights API (needs the network to reach download.pytorch.org).
Everything is read and checked against the job's model before anything is written; a mismatch (another backbone
or stem, missing keys) is an InitError naming what differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.model import SimSiam

HEADS = {"projector": "projection_head.", "predictor": "prediction_head."}


class InitError(ValueError):
    """`init` cannot start this job's model; the message names what differs and the fix."""


@dataclass
class InitWeights:
    source: str  # what `init` named
    kind: str  # "model folder", "checkpoint", "state_dict" or "imagenet"
    state: dict[str, torch.Tensor]  # SimSiam state_dict keys ("backbone.*", "projection_head.*", ...)
    loaded: list[str] = field(default_factory=list)  # "encoder", and "projector" / "predictor" when they fit
    parent: dict[str, Any] | None = None  # a model folder's name, metrics and settings

    def record(self) -> dict[str, Any]:
        """What model_info.json keeps, so that a chain of versions can be followed."""
        out: dict[str, Any] = {"source": self.source, "kind": self.kind, "loaded": self.loaded}
        if self.parent is not None:
            out["parent"] = self.parent
        return out


def read_init(init: str, model: SimSiam) -> InitWeights | None:
    """The weights `init` names, checked against `model` (the job's, freshly built); None for "" (random init)."""
    if not init:
        return None
    if init == "imagenet":
        weights = _imagenet(model.settings.backbone)
        return _check(InitWeights(init, "imagenet", _as_backbone(weights)), model)
    path = Path(init).expanduser()
    if path.is_dir():
        return _check(_model_folder(path), model)
    if not path.is_file():
        raise InitError(
            f"advance_settings init={init!r}: no such file or folder; pass a model folder (runs/models/<uuid4>), "
            "a .ckpt of this product, a file holding a torchvision ResNet state_dict, or 'imagenet'"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated file, not a torch file
        raise InitError(f"advance_settings init={init!r}: cannot be read as torch weights ({e})") from e
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):  # a Lightning checkpoint
        return _check(InitWeights(init, "checkpoint", blob["state_dict"]), model)
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return _check(InitWeights(init, "state_dict", _as_backbone(blob)), model)
    raise InitError(
        f"advance_settings init={init!r} holds neither a checkpoint nor a state_dict (a dict of tensors); save the "
        "encoder's weights with torch.save(model.state_dict(), path)"
    )


def apply_init(weights: InitWeights, model: SimSiam) -> None:
    """Load what read_init checked into `model`: the encoder always, each head where its shapes fit."""
    model.load_state_dict(_subset(weights.state, model, weights.loaded), strict=False)


def _imagenet(backbone: str) -> dict[str, torch.Tensor]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(backbone).DEFAULT
        return weights.get_state_dict(progress=False)
    except OSError as e:  # urllib's URLError is an OSError: no network, a proxy, a firewall
        raise InitError(
            f"advance_settings init='imagenet': torchvision could not download the {backbone} ImageNet weights "
            f"({e}); this machine may have no network. Download them where there is one "
            f"(torchvision.models.get_model_weights('{backbone}').DEFAULT.get_state_dict()), save them with "
            "torch.save(state_dict, 'weights.pt') and pass init='weights.pt'"
        ) from e


def _as_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state_dict as SimSiam keys; its classifier (fc) is dropped, as the backbone has none."""
    if any(k.startswith("backbone.") for k in state):
        return state
    return {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}


def _model_folder(folder: Path) -> InitWeights:
    """A model folder is used through its SimSiam checkpoint only, never through model.pt: that encoder was
    fine-tuned on all of its dataset's `valid`, and a next job on the same data would be graded (metric_value,
    the probe, refine auto's choice) on images whose labels it has already seen."""
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise InitError(
            f"advance_settings init={str(folder)!r} is a model folder without its SimSiam checkpoint "
            "(checkpoints/*.ckpt, deleted or never written). Its model.pt is not used instead: that encoder was "
            "fine-tuned on the valid labels, which would make this job's metric_value optimistic. Pass a folder "
            "that still holds checkpoints/, a .ckpt of this product, or drop init"
        )
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["state_dict"]
    parent = None
    info = folder / "model_info.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        parent = {
            "model_path": str(folder.resolve()),
            "model_name": meta.get("model_name"),
            "metrics": {k: v for k, v in meta.get("metrics", {}).items() if not isinstance(v, (dict, list))},
            "pretraining": meta.get("pretraining"),
            "init": meta.get("init"),  # the parent's own parent: the chain
        }
    return InitWeights(str(folder), "model folder", state, parent=parent)


def _check(weights: InitWeights, model: SimSiam) -> InitWeights:
    """The encoder must match exactly (every key, every shape); a head is taken only when it fits whole."""
    own = model.state_dict()
    want = {k: v for k, v in own.items() if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    have = {k: v for k, v in weights.state.items() if k.startswith("backbone.")}
    s = model.settings
    what = f"{s.backbone} with the {'cifar' if s.small_stem else 'imagenet'} stem at {s.input_size} px"
    missing = sorted(set(want) - set(have))
    shapes = [
        f"{k.removeprefix('backbone.')}: {tuple(have[k].shape)} there, {tuple(v.shape)} here"
        for k, v in want.items()
        if k in have and tuple(have[k].shape) != tuple(v.shape)
    ]
    unexpected = sorted(k for k in set(have) - set(own) if not k.endswith("num_batches_tracked"))
    if missing or shapes or unexpected:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:3])})")
        if missing:
            parts.append(
                f"{len(missing)} key(s) missing ({', '.join(k.removeprefix('backbone.') for k in missing[:3])})"
            )
        if unexpected:
            parts.append(f"{len(unexpected)} unknown key(s) ({', '.join(unexpected[:3])})")
        raise InitError(
            f"advance_settings init={weights.source!r} is not an encoder for this job's {what}: "
            f"{'; '.join(parts)}. Use the backbone, stem and input size it was trained with, or another init"
        )
    weights.loaded = ["encoder"]
    for name, prefix in HEADS.items():
        head_want = {k: v for k, v in own.items() if k.startswith(prefix)}
        head_have = {k: v for k, v in weights.state.items() if k.startswith(prefix)}
        if (
            head_have
            and set(head_have) == set(head_want)
            and all(tuple(head_have[k].shape) == tuple(v.shape) for k, v in head_want.items())
        ):
            weights.loaded.append(name)
    return weights


def _subset(state: dict[str, torch.Tensor], model: SimSiam, loaded: list[str]) -> dict[str, torch.Tensor]:
    prefixes = ["backbone."] + [HEADS[n] for n in loaded if n in HEADS]
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own and any(k.startswith(p) for p in prefixes)}
