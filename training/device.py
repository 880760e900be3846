"""`--device` resolution: cuda, cuda:N or cpu; cuda without a GPU falls back to CPU with a warning."""

from __future__ import annotations

import logging
import re

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    name = name.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise ValueError(f"--device {name!r} is not one of: cuda, cuda:N, cpu")
    if not torch.cuda.is_available():
        log.warning("--device %s requested but no CUDA GPU is available; falling back to CPU", name)
        return torch.device("cpu")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0..)")
    return torch.device("cuda", index)
