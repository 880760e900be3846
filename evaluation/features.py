"""Run a frozen model over labelled images with the shared eval preset (training eval and client_test)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dataset.reader import EvalImages, collate_eval
from handler.eval_preset import EvalPreset
from jobs import stop


def run_frozen(
    model: nn.Module,
    paths: list[Path],
    preset: EvalPreset,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Returns (outputs NxK for the readable images, their indices into `paths`, [(index, error)])."""
    loader = DataLoader(
        EvalImages(paths, preset),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=device.type == "cuda",
    )
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="scoring", unit="batch")
    was_training = getattr(model, "training", False)
    model.eval()
    outputs, kept, bad = [], [], []
    with torch.inference_mode():
        for x, idx, errors in loader:
            stop.check()  # hours of scoring on a large split: a swallowed Ctrl-C (jobs/stop.py) stops it here
            bad.extend(errors)
            if x is None:
                continue
            outputs.append(model(x.to(device, non_blocking=True)).float().cpu())
            kept.extend(idx)
    model.train(was_training)
    out = torch.cat(outputs) if outputs else torch.empty(0)
    return out, kept, bad
