"""Test helpers: run client_infer.py as a user would (a subprocess on free ports) and always stop it; test images."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    log_path: Path
    family: list[psutil.Process] = field(default_factory=list)  # TorchServe launcher, Java, workers

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def management_url(self) -> str:
        return re.search(r"management (http://127\.0\.0\.1:\d+)", self.output()).group(1)

    @property
    def inference_url(self) -> str:
        return re.search(r"inference (http://127\.0\.0\.1:\d+)", self.output()).group(1)

    def keys(self) -> dict[str, str]:
        """TorchServe's keys (token authorization), from the key file client_infer.py logs."""
        from serving.torchserve_process import read_keys

        return read_keys(Path(re.search(r"token authorization: (\S+)\)", self.output()).group(1)))

    def management(self, method: str, path: str, **kw) -> requests.Response:
        """TorchServe's management API with its key, as `python -m serving.manage` calls it."""
        headers = {"Authorization": f"Bearer {self.keys()['management']}"}
        return requests.request(method, f"{self.management_url}{path}", headers=headers, timeout=60, **kw)

    def snapshot(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):  # already gone: keep the last snapshot
            self.family = psutil.Process(self.proc.pid).children(recursive=True)
        return self.family

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as a user would; if that fails, kill everything so no test leaves a process behind."""
        if self.proc.poll() is None:
            self.snapshot()
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            for p in self.family:  # belt and braces for a client_infer.py that failed to clean up
                if alive(p):
                    p.kill()

    def kill(self) -> None:
        self.snapshot()
        for p in [psutil.Process(self.proc.pid), *self.family]:
            if alive(p):
                p.kill()
        self.proc.wait(10)


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_service(
    model: dict,
    log_path: Path,
    device: str = "cpu",
    timeout: float = 180.0,
    wait: bool = True,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> Service:
    """Start client_infer.py for the trial dict `model` (trained_model fixture); wait until /health says 200.
    `env` adds to the environment (settings such as SIMSIAM_TS_WORKERS)."""
    port = free_port()
    # One worker of one thread: the fault tests kill "the" worker; 2 CPU cores run the suite beside it.
    env = {
        **os.environ,
        "SIMSIAM_TS_PORTS": "free",
        "SIMSIAM_TORCH_THREADS": "1",
        "SIMSIAM_TS_WORKERS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    cmd = [
        sys.executable,
        str(REPO / "client_infer.py"),
        "--model_path",
        model["model_path"],
        "--used_model",
        model["gened_model_name"],
        "--device",
        device,
        "--service_port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    with open(log_path, "wb") as out:
        # new_session: its own process group, as a terminal's foreground job, so a test can signal the whole group
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session
        )
    service = Service(proc, f"http://127.0.0.1:{port}", log_path)
    if not wait:
        return service
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"client_infer.py exited with {proc.returncode}:\n{service.output()[-4000:]}")
        try:
            if requests.get(f"{service.url}/health", timeout=5).status_code == 200:
                service.snapshot()
                return service
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            service.kill()
            raise AssertionError(f"client_infer.py not ready after {timeout} s:\n{service.output()[-4000:]}")
        time.sleep(0.5)


def image_bytes(size: tuple[int, int] = (224, 224), fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
    """A smooth random picture (compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (max(1, h // 32), max(1, w // 32), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BILINEAR).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
