"""Wait for a started client_infer.py to answer GET /health with 200 (scripts, benchmarks)."""

from __future__ import annotations

import subprocess
import time

import requests


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float = 300.0, poll: float = 0.2) -> float | None:
    """Seconds until `url`/health answered 200; None if `proc` exited first or `timeout` passed."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(poll)
    return None
