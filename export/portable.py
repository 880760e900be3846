"""The classifier in the formats that outlive TorchScript and TorchServe: a `torch.export` program (`model.pt2`)
and ONNX (`model.onnx`), both with a dynamic batch, both checked against `model.pt` at export.

    load_model(folder / PROGRAM_FILE, "export", device)(x)   # float Nx3xSxS (the eval preset) -> logits NxK

`model.pt` (TorchScript) stays the contract's format inside the .mar; docs/serving.md shows how to serve the ONNX
file without TorchServe.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
FORMATS = {"torchscript": "model.pt", "export": PROGRAM_FILE, "onnx": ONNX_FILE}
# Largest difference of the softmax (what is served) allowed between a format and model.pt at export.
MAX_DIFF = 1e-5
MAX_BATCH = 4096


class ExportMismatch(RuntimeError):
    """A format answers differently from model.pt: the job fails before the model folder is committed."""


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session behind the nn.Module call the scoring code makes: logits = self(x)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input: x.detach().float().cpu().numpy()})
        return torch.from_numpy(logits).to(x.device)


class ProgramClassifier(nn.Module):
    """A loaded torch.export program. It was exported in eval mode (BatchNorm's running statistics are baked into
    its graph), and its module refuses train()/eval(): this wrapper makes them no-ops for the scoring code."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ProgramClassifier:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def load_model(path: Path, model_format: str, device: torch.device) -> nn.Module:
    """A saved classifier in one of FORMATS, ready for inference on `device`."""
    if model_format == "torchscript":
        from handler.classifier import load_classifier

        return load_classifier(str(path), device)
    if model_format == "export":
        return ProgramClassifier(torch.export.load(str(path)).module().to(device))
    if model_format == "onnx":
        return OnnxClassifier(path, device)
    raise ValueError(f"unknown model format {model_format!r}; choose one of {', '.join(FORMATS)}")


def export_portable(model: nn.Module, reference: nn.Module, input_size: int, out: Path) -> dict[str, float]:
    """Write out/model.pt2 and out/model.onnx from `model` (encoder + head, eval mode, CPU), reload each as a user
    would and compare its softmax with `reference` (the reloaded model.pt) on batches of 1, 4 and 7; returns the
    largest difference per format, ExportMismatch beyond MAX_DIFF."""
    x = torch.randn(4, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    buffer = io.BytesIO()  # written by Python, as model.pt: a full disk raises OSError instead of aborting
    torch.export.save(program, buffer)
    (out / PROGRAM_FILE).write_bytes(buffer.getvalue())
    # The ONNX exporter starts from the same program (it would otherwise trace the model a second time).
    onnx_program = torch.onnx.export(
        program, (x,), dynamo=True, input_names=["input"], output_names=["logits"], verbose=False
    )
    onnx_program.save(str(out / ONNX_FILE))
    diffs = {}
    cpu = torch.device("cpu")
    for name in ("export", "onnx"):
        loaded = load_model(out / FORMATS[name], name, cpu)
        worst = 0.0
        for n in (1, 4, 7):
            batch = torch.randn(n, 3, input_size, input_size, generator=torch.Generator().manual_seed(n))
            with torch.inference_mode():
                want, got = reference(batch).softmax(1), loaded(batch).float().softmax(1)
            worst = max(worst, (want - got).abs().max().item())
        if worst > MAX_DIFF:
            raise ExportMismatch(f"{FORMATS[name]} differs from model.pt by {worst:.1e} (softmax; at most {MAX_DIFF})")
        diffs[name] = worst
    return diffs


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
