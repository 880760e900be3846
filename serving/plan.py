"""How many TorchServe workers and torch threads per worker serve a model on this machine, decided at start.

Measured on a 2-core CPU (docs/benchmarks.md, "TorchServe's side"): two workers of one thread each served 1.3x
the requests/s of one worker of two threads (a worker decodes its batch while the other runs the model; one
worker leaves a core idle while it decodes), and four workers fell behind two (contention, a model copy each).
So on a CPU: one worker per core, up to 4 (each holds its own model and ~0.9 GiB), the cores shared out as torch
threads. On GPUs: 2 workers per GPU, so one decodes and preprocesses on the CPU while the other's batch runs.
SIMSIAM_TS_WORKERS overrides the count (the fault tests pin one worker), SIMSIAM_TORCH_THREADS the threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from handler.worker_threads import THREADS_ENV

WORKERS_ENV = "SIMSIAM_TS_WORKERS"
MAX_CPU_WORKERS = 4


@dataclass(frozen=True)
class ServingPlan:
    workers: int
    threads: int  # torch threads (and decode threads) per worker


def serving_plan(cpus: int | None = None, gpus: int = 0) -> ServingPlan:
    cpus = cpus or len(os.sched_getaffinity(0))
    if os.environ.get(WORKERS_ENV):
        workers = max(1, int(os.environ[WORKERS_ENV]))
    elif gpus > 0:
        workers = 2 * gpus
    else:
        workers = max(1, min(cpus, MAX_CPU_WORKERS))
    threads = int(os.environ.get(THREADS_ENV) or 0) or cpus // workers
    return ServingPlan(workers, max(1, threads))
