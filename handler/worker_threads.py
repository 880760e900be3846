"""Torch threads per TorchServe worker: the one rule, shared by the handler and client_infer.py (no torch import).

TorchServe sets no thread count, so N workers x all cores each would oversubscribe the CPU.
"""

from __future__ import annotations

import os

THREADS_ENV = "SIMSIAM_TORCH_THREADS"


def torch_threads(model_config: dict) -> int:
    """$SIMSIAM_TORCH_THREADS, else model-config.yaml's handler.threads (> 0), else the usable cores / minWorkers."""
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    configured = int((model_config.get("handler") or {}).get("threads", 0) or 0)
    if configured > 0:
        return configured
    workers = max(1, int(model_config.get("minWorkers", 1) or 1))
    return max(1, len(os.sched_getaffinity(0)) // workers)
