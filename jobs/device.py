"""`--device` resolution: cuda, cuda:N or cpu; cuda without a GPU falls back to CPU with a warning."""

from __future__ import annotations

import logging
import re

import torch

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """`--device` names no usable device; the message says which ones exist."""


def resolve_device(name: str) -> torch.device:
    name = name.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise DeviceError(f"--device {name!r} is not one of: cuda, cuda:N, cpu")
    if not torch.cuda.is_available():
        log.warning("--device %s requested but no CUDA GPU is available; falling back to CPU", name)
        return torch.device("cpu")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0..)")
    return torch.device("cuda", index)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX): then bf16 autocast is ~1.7x fp32 on CPU."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private probe: its absence means "do not rely on it"
        return False


def gpu_has_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) and later run bfloat16 on their tensor cores at fp16's speed."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def auto_precision(device: torch.device) -> str:
    """Lightning precision for `precision: "auto"`. GPU: bf16 AMP on Ampere and later (fp32's range: no loss
    scaling, no overflow), fp16 AMP with a loss scaler before. CPU: bf16 autocast where the CPU has bf16 units."""
    if device.type == "cuda":
        return "bf16-mixed" if gpu_has_bf16(device) else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The settings' `precision` as it will run on `device`, for every stage of a job alike: "auto" picks by
    device; fp16 AMP on a CPU (asked for, or a GPU job that fell back to the CPU) runs as bf16, as Lightning
    does, so pretraining and the refine stage never differ; anything else is kept."""
    if precision == "auto":
        return auto_precision(device)
    if precision == "16-mixed" and device.type == "cpu":
        log.warning("precision 16-mixed: fp16 autocast does not run on a CPU; bf16-mixed is used instead")
        return "bf16-mixed"
    return precision


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """Autocast for a Lightning precision string, for the loops Lightning does not run (refine, benches)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
