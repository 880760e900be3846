"""Encoder + linear head as one classifier: float NCHW (eval preset) -> logits NxK, exported as TorchScript
(model.pt, the .mar's) and, through export/portable.py, as torch.export and ONNX."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from export.archive import MODEL_FILE
from export.portable import export_portable


class Classifier(nn.Module):
    """logits = head(encoder(x)); x is Nx3xSxS normalised as the model's EvalPreset says."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def export_classifier(encoder: nn.Module, head: nn.Linear, input_size: int, out: Path) -> dict[str, float]:
    """out/model.pt (TorchScript, in the .mar), out/model.pt2 (torch.export) and out/model.onnx, each checked
    against the eager model; returns the largest softmax difference of the .pt2 and the ONNX file from model.pt."""
    model = Classifier(copy.deepcopy(encoder).cpu(), copy.deepcopy(head).cpu()).eval()
    scripted = export_torchscript(model, input_size, out / MODEL_FILE)
    return export_portable(model, scripted, input_size, out)


def export_torchscript(model: Classifier, input_size: int, path: Path) -> torch.jit.ScriptModule:
    """Script, save to `path` (CPU weights) and check the round trip; returns the reloaded module."""
    with warnings.catch_warnings():
        # TorchScript is the contract's model format (TorchServe's handler loads it from the .mar): PyTorch's
        # "torch.jit.* is deprecated" is addressed to us, not to the user. The .pt2 beside it is the successor.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
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
