"""client_infer.py as the serving benches run it: on a free loopback port, TorchServe on free ports too, its log
in a temporary folder; stopped with SIGTERM (as an operator would) when the block ends.

    with running_service(model_path, "SimSiam_x") as svc:   # svc.url, svc.proc, svc.log(), svc.ready_s
        ...
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.readiness import wait_until_healthy
from serving.ts_config import free_port

REPO = Path(__file__).resolve().parent.parent


class ServiceFailed(RuntimeError):
    """client_infer.py did not become healthy; the message ends with its log."""


@dataclass
class Service:
    url: str  # the front door, http://127.0.0.1:<port>
    proc: subprocess.Popen
    log_path: Path
    ready_s: float

    def log(self) -> str:
        return self.log_path.read_text()

    def logged_url(self, what: str) -> str:
        """TorchServe's own address for `what` (inference, management, metrics), as client_infer.py logs it."""
        return re.search(rf"{what} (http://127\.0\.0\.1:\d+)", self.log()).group(1)


@contextmanager
def running_service(model_path: Path, used_model: str, device: str = "cpu") -> Iterator[Service]:
    port = free_port()
    cmd = [sys.executable, str(REPO / "client_infer.py"), "--model_path", str(model_path), "--used_model"]
    cmd += [used_model, "--device", device, "--service_port", str(port), "--host", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        log = Path(tmp) / "client_infer.log"
        with log.open("w") as out:
            env = {**os.environ, "SIMSIAM_TS_PORTS": "free"}
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            ready_s = wait_until_healthy(url, proc)
            if ready_s is None:
                raise ServiceFailed(f"client_infer.py did not become healthy:\n{log.read_text()[-3000:]}")
            yield Service(url, proc, log, ready_s)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            if code != 0:
                print(f"client_infer.py exited with {code} after SIGTERM", file=sys.stderr)
