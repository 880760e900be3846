"""TorchServe as a child process: start it in a private run folder, wait until the model answers, stop all of it.

Everything TorchServe writes (generated config, logs, its pid file, unpacked .mar, worker sockets) lands in a
temp run folder that `stop()` removes, so nothing is written into the project or the model folder.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import yaml
from PIL import Image

from serving.ts_config import TorchServeConfig, write_run_config

log = logging.getLogger(__name__)


class TorchServeError(RuntimeError):
    """TorchServe could not start, lost the model, or exited; the message quotes its log."""


class TorchServeCancelled(TorchServeError):
    """wait_ready was told to stop: the service is shutting down, nothing failed."""


def probe_image() -> bytes:
    """A small PNG for the readiness probe: a real prediction proves the handler and model load."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 140, 160)).save(buf, format="PNG")
    return buf.getvalue()


def mar_model_config(mar: Path) -> dict:
    """The model-config.yaml inside a .mar ({} if it has none)."""
    with zipfile.ZipFile(mar) as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        name = manifest.get("model", {}).get("configFile")
        if not name:
            return {}
        return yaml.safe_load(z.read(name)) or {}


def find_torchserve() -> str:
    beside = Path(sys.executable).with_name("torchserve")  # the venv's own launcher, so workers use this Python
    found = str(beside) if beside.exists() else shutil.which("torchserve")
    if not found:
        raise TorchServeError("the torchserve command is not installed; run scripts/setup.sh")
    java_home = os.environ.get("JAVA_HOME")
    if not (shutil.which("java") or (java_home and Path(java_home, "bin", "java").exists())):
        raise TorchServeError("TorchServe needs Java 17 (java not found); install openjdk-17-jre-headless")
    return found


class TorchServeProcess:
    """`with TorchServeProcess(...) as ts: ts.wait_ready()`: one model from one .mar, stopped on exit."""

    def __init__(
        self,
        model_dir: Path,
        model_name: str,
        gpu_index: int | None,
        torch_threads: int,
        always_free_ports: bool = False,
        echo: bool = True,
        reserved_ports: frozenset[int] = frozenset(),
    ) -> None:
        self.mar = (model_dir / f"{model_name}.mar").resolve()
        self.model_name = model_name
        self.gpu_index = gpu_index
        self.torch_threads = torch_threads
        self.always_free_ports = always_free_ports
        self.reserved_ports = reserved_ports
        self.echo = echo
        self.run_dir: Path | None = None
        self.config: TorchServeConfig | None = None
        self._proc: subprocess.Popen | None = None
        self._relay: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=60)
        self._load_failures: list[str] = []

    def __enter__(self) -> TorchServeProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        torchserve = find_torchserve()
        self.run_dir = Path(tempfile.mkdtemp(prefix="simsiam-serve-"))
        for sub in ("tmp", "logs", "model-store"):
            (self.run_dir / sub).mkdir()
        store = self.run_dir / "model-store"
        # A link, not a copy: the model folder stays untouched and versions registered later land in this store.
        (store / self.mar.name).symlink_to(self.mar)
        self.config = write_run_config(
            self.run_dir,
            store,
            num_gpus=0 if self.gpu_index is None else 1,
            always_free_ports=self.always_free_ports,
            reserved=self.reserved_ports,
        )
        env = dict(os.environ)
        env.pop("TS_CONFIG_FILE", None)  # it would override --ts-config
        tmp, logs = str(self.run_dir / "tmp"), str(self.run_dir / "logs")
        # TMPDIR: the launcher's .model_server.pid (one per machine otherwise, so a second TorchServe refuses to
        # start); TEMP: Java's java.io.tmpdir, where the .mar is unpacked and the worker sockets live.
        env.update(TMPDIR=tmp, TEMP=tmp, LOG_LOCATION=logs, METRICS_LOCATION=logs)
        env["SIMSIAM_TORCH_THREADS"] = str(self.torch_threads)  # read by the handler; workers inherit it
        if self.gpu_index is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run must not touch (or hold memory on) a GPU
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            env["CUDA_VISIBLE_DEVICES"] = visible[self.gpu_index] if visible != [""] else str(self.gpu_index)
        cmd = [
            torchserve,
            "--start",
            "--foreground",
            "--ncs",
            "--model-store",
            str(store),
            "--models",
            f"{self.model_name}={self.mar.name}",
            "--ts-config",
            str(self.config.path),
        ]
        log.info("starting TorchServe: %s", " ".join(cmd))
        # Own session and process group: stop() can then reach the Java frontend and every Python worker at once.
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._relay = threading.Thread(target=self._relay_output, name="torchserve-log", daemon=True)
        self._relay.start()

    def _relay_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace")
            if "ACCESS_LOG" not in line:  # the readiness polls would push the telling lines out of the tail
                self._tail.append(line)
            if "Failed to load model" in line:  # the worker's own report; TorchServe then retries it
                self._load_failures.append(line.strip())
            if self.echo:
                try:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                except (OSError, ValueError):  # our stdout is gone: keep draining, or TorchServe blocks on a full pipe
                    self.echo = False

    def tail(self, n: int = 30) -> str:
        return "".join(list(self._tail)[-n:])

    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def wait_ready(self, timeout: float = 300.0, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Block until a worker is READY and a real prediction succeeds; TorchServeError if it cannot happen.

        `cancelled`: polled twice a second; True stops the wait with TorchServeCancelled (the service is stopping).
        """
        assert self.config is not None
        describe = f"{self.config.management_url}/models/{self.model_name}"
        predict = f"{self.config.inference_url}/predictions/{self.model_name}"
        image, last = probe_image(), "no answer yet"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10.0) as http:
            while True:
                if cancelled():
                    raise TorchServeCancelled("stopped while the model was loading")
                if (rc := self.poll()) is not None:
                    raise TorchServeError(f"TorchServe exited with code {rc} during start-up:\n{self.tail()}")
                if len(self._load_failures) >= 2:  # twice: not a passing hiccup
                    raise TorchServeError(f"{self.mar.name} cannot be loaded: {self._load_failures[-1]}")
                try:
                    r = http.get(describe)
                    if r.status_code == 404:  # models are registered before the API opens: this one failed
                        raise TorchServeError(f"TorchServe did not register {self.mar}:\n{self.tail()}")
                    workers = r.json()[0].get("workers", []) if r.status_code == 200 else []
                    if any(w.get("status") == "READY" for w in workers):
                        p = http.post(predict, content=image, headers={"Content-Type": "application/octet-stream"})
                        if p.status_code == 200:
                            return
                        last = f"probe prediction answered {p.status_code}: {p.text[:300]}"
                    else:
                        last = f"no READY worker yet ({[w.get('status') for w in workers]})"
                except httpx.HTTPError as e:
                    last = f"{type(e).__name__}: {e}"
                if time.monotonic() > deadline:
                    raise TorchServeError(f"the model was not ready after {timeout:.0f} s ({last}):\n{self.tail()}")
                time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the Java frontend, its Python workers and anything else in TorchServe's process group."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                family = []
            java = [p for p in family if _is_java(p)]
            # SIGTERM to Java runs its shutdown hook, which stops the workers; the launcher then returns by itself.
            # (SIGTERM to the launcher alone would orphan Java, and it keeps running.)
            for p in java or family[:1]:
                _quietly(p.terminate)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("TorchServe did not stop within %.0f s; killing it", timeout)
            for sig in (signal.SIGTERM, signal.SIGKILL):  # leftovers, e.g. workers of a Java that was SIGKILLed
                _quietly(os.killpg, proc.pid, sig)
                alive = [p for p in family if _alive(p)]
                for p in alive:
                    _quietly(p.send_signal, sig)
                psutil.wait_procs(alive, timeout=5)
            proc.wait()
        if self._relay is not None:
            self._relay.join(timeout=5)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None


def _is_java(p: psutil.Process) -> bool:
    try:
        return p.name().startswith("java")
    except psutil.Error:
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _quietly(fn, *args) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
        fn(*args)
