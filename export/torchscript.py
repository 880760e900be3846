"""Encoder + linear head as one TorchScript module: float NCHW (eval preset) -> logits NxK."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import torch
from torch import nn


class Classifier(nn.Module):
    """logits = head(encoder(x)); x is Nx3xSxS normalised as the model's EvalPreset says."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def export_torchscript(encoder: nn.Module, head: nn.Linear, input_size: int, path: Path) -> torch.jit.ScriptModule:
    """Script, save to `path` (CPU weights) and check the round trip; returns the reloaded module."""
    model = Classifier(copy.deepcopy(encoder).cpu(), copy.deepcopy(head).cpu()).eval()
    scripted = torch.jit.script(model)
    # Serialise in memory, then write with Python: torch's C++ file writer aborts the whole process (no
    # cleanup, no message) when the disk fills up, where a Python write raises OSError(ENOSPC).
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    path.write_bytes(buffer.getvalue())
    reloaded = torch.jit.load(str(path), map_location="cpu").eval()
    x = torch.randn(4, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = model(x), reloaded(x)
    if not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"TorchScript round trip changed the outputs (max diff {(expected - got).abs().max():.2e})")
    return reloaded
