"""TorchServe as a child process: start it in a private run folder, wait until the model answers, stop all of it.

Everything TorchServe writes (generated config, logs, its pid file, unpacked .mar, worker sockets) lands in a
temp run folder that `stop()` removes, so nothing is written into the project or the model folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests
from PIL import Image

from serving.ts_config import TorchServeConfig, write_run_config

log = logging.getLogger(__name__)


KEY_FILE = "key_file.json"


def read_keys(path: Path) -> dict[str, str]:
    """The keys of TorchServe's key_file.json: {"management": ..., "inference": ..., "API": ...}."""
    import json

    data = json.loads(path.read_text())
    return {kind: entry["key"] for kind, entry in data.items() if isinstance(entry, dict) and "key" in entry}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class TorchServeError(RuntimeError):
    """TorchServe could not start, lost the model, or exited; the message quotes its log."""


class TorchServeCancelled(TorchServeError):
    """wait_ready was told to stop: the service is shutting down, nothing failed."""


def probe_image() -> bytes:
    """A small PNG for the readiness probe: a real prediction proves the handler and model load."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 140, 160)).save(buf, format="PNG")
    return buf.getvalue()


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
        reserved_ports: frozenset[int] = frozenset(),
        workers: int = 1,
    ) -> None:
        self.mar = (model_dir / f"{model_name}.mar").resolve()
        self.model_name = model_name
        self.gpu_index = gpu_index
        self.torch_threads = torch_threads
        self.workers = workers
        self.always_free_ports = always_free_ports
        self.reserved_ports = reserved_ports
        self.run_dir: Path | None = None
        self.log_path: Path | None = None  # TorchServe's console output (SIMSIAM_TS_LOG, or in the run folder)
        self._log_offset = 0  # how far wait_ready has read it
        self.config: TorchServeConfig | None = None
        self._proc: subprocess.Popen | None = None
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
            model=(self.model_name, self.mar.name),
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
            "--ts-config",
            str(self.config.path),
        ]
        log.info("starting TorchServe: %s", " ".join(cmd))
        # TorchServe's console output goes straight to a file: relaying it line by line through this process (a
        # thread reading a pipe, holding the GIL for each of the access and metrics lines every request makes)
        # cost the proxy CPU on every request.
        self.log_path = Path(os.environ.get("SIMSIAM_TS_LOG") or self.run_dir / "torchserve.log")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log.info("TorchServe's own log: %s", self.log_path)
        # Own session and process group: stop() can then reach the Java frontend and every Python worker at once.
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _read_new_lines(self) -> list[str]:
        """The log's lines since the last call (wait_ready's scan for load failures)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_offset += end
        return data[:end].decode("utf-8", "replace").splitlines()

    def tail(self, n: int = 30) -> str:
        """TorchServe's last `n` log lines, less the access log (the readiness polls would push the telling lines
        out)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 256 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join([ln for ln in lines if "ACCESS_LOG" not in ln][-n:]) + "\n"

    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def key_file(self) -> Path:
        """TorchServe's token file (management, inference and API keys), written into its working folder."""
        assert self.run_dir is not None
        return self.run_dir / KEY_FILE

    def keys(self) -> dict[str, str]:
        """{"management": key, "inference": key, "API": key}; mode 0600 from the first read on."""
        os.chmod(self.key_file, 0o600)
        return read_keys(self.key_file)

    def wait_ready(self, timeout: float = 300.0, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Block until the planned workers are READY and a real prediction succeeds; TorchServeError if it cannot.

        `cancelled`: polled twice a second; True stops the wait with TorchServeCancelled (the service is stopping).
        """
        assert self.config is not None
        describe = f"{self.config.management_url}/models/{self.model_name}"
        predict = f"{self.config.inference_url}/predictions/{self.model_name}"
        image, last = probe_image(), "no answer yet"
        deadline = time.monotonic() + timeout
        scaled = self.workers <= 1
        with requests.Session() as http:
            while True:
                if cancelled():
                    raise TorchServeCancelled("stopped while the model was loading")
                if (rc := self.poll()) is not None:
                    raise TorchServeError(f"TorchServe exited with code {rc} during start-up:\n{self.tail()}")
                # The worker's own report; TorchServe then retries it.
                self._load_failures += [ln.strip() for ln in self._read_new_lines() if "Failed to load model" in ln]
                if len(self._load_failures) >= 2:  # twice: not a passing hiccup
                    raise TorchServeError(f"{self.mar.name} cannot be loaded: {self._load_failures[-1]}")
                try:
                    if not self.key_file.exists():
                        raise FileNotFoundError(f"no {KEY_FILE} yet")
                    keys = self.keys()
                    r = http.get(describe, headers=bearer(keys["management"]), timeout=10)
                    if r.status_code == 404:  # models are registered before the API opens: this one failed
                        raise TorchServeError(f"TorchServe did not register {self.mar}:\n{self.tail()}")
                    workers = r.json()[0].get("workers", []) if r.status_code == 200 else []
                    if r.status_code == 200 and not scaled and len(workers) < self.workers:
                        # The serving plan's worker count (the .mar's model-config starts one): asked for without
                        # waiting, so this loop stays the one place that waits, and a stop never waits on it.
                        params = {"min_worker": self.workers, "max_worker": self.workers, "synchronous": "false"}
                        scaled = http.put(describe, params=params, headers=bearer(keys["management"]), timeout=10).ok
                    if sum(w.get("status") == "READY" for w in workers) >= self.workers:
                        octet = {"Content-Type": "application/octet-stream", **bearer(keys["inference"])}
                        p = http.post(predict, data=image, headers=octet, timeout=60)
                        if p.status_code == 200:
                            return
                        last = f"probe prediction answered {p.status_code}: {p.text[:300]}"
                    else:
                        last = f"{self.workers} workers not READY yet ({[w.get('status') for w in workers]})"
                except (requests.RequestException, FileNotFoundError, ValueError, KeyError) as e:
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
