"""Ctrl-C and a platform's SIGTERM, remembered until the job has stopped.

Python turns a signal into KeyboardInterrupt in whatever code the main thread runs next, and some of that code
drops it without a trace: CPython's file finaliser (`iobase_finalize`) clears any exception raised while it asks
a file whether it is `closed`, and Lightning's checkpoint save closes fsspec files. A Ctrl-C landing there was
lost and the job trained on (seen as a flaky tests/jobs/test_job_reliability.py Ctrl-C test: ~1 run in 5).
So the handler also records the signal, and the training loops call `check()` at every step: a stop request
that was swallowed is raised again one step later.
"""

from __future__ import annotations

import signal
from types import FrameType

_requested: int | None = None  # the first stop signal received, until reset()


def request(signum: int, frame: FrameType | None = None) -> None:
    """Signal handler for SIGINT and SIGTERM: remember the request, then unwind now if the code allows it."""
    global _requested
    if _requested is None:
        _requested = signum
    raise KeyboardInterrupt(f"signal {signum}")


def requested() -> int | None:
    """The stop signal received (SIGINT or SIGTERM), or None."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested: called between steps, where nothing can swallow it."""
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {_requested} (raised again at a step boundary)")


def install() -> None:
    """Route SIGINT and SIGTERM through `request` (main thread only, as Python requires). A SIGINT that the
    process was started with ignored (a shell's `cmd &`) stays ignored, as Python itself leaves it."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, request)
    signal.signal(signal.SIGTERM, request)


def reset() -> None:
    """Forget a request: tests run many jobs in one process; a client runs one job and never resets."""
    global _requested
    _requested = None
