"""nginx as the front door (client_infer.py's child): its config from the templates beside this file, start,
the graceful switch from "loading" to "ready", and the graceful stop.

Every limit of the public port is named once, here (FrontDoor), and enforced by nginx (serving/nginx.conf.template
says what each does). nginx runs in the foreground in its own run folder (config, pid file, temp files), as the
user that starts it; started as root, its workers drop to `nobody`, as nginx's own default.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import psutil

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
HOP_TEMPLATE = HERE / "torchserve.conf.template"
OPENAPI = HERE / "openapi.json"
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
MiB = 2**20


@dataclass(frozen=True)
class FrontDoor:
    """The public port's limits (docs/serving.md, "Limits", quotes them; a test keeps the two equal)."""

    max_body: int = 32 * MiB  # = handler.api.MAX_BODY: a 24 MiB image file after base64, or several smaller ones
    body_buffer: int = 64 * 1024  # held in memory per request; the rest of a body is spooled to disk
    head_timeout_s: int = 10  # request line + headers
    body_timeout_s: int = 10  # the longest pause between two reads of a body
    keepalive_s: int = 30  # an idle keep-alive connection
    lingering_s: int = 5  # reading (and dropping) the rest of a body after an early answer
    read_timeout_s: int = 90  # TorchServe's answer (its own responseTimeout is 60 s)
    health_timeout_s: int = 3  # GET /health: the model's answer, else 503
    shutdown_s: int = 10  # requests in flight at a stop or reload
    per_client: int = 64  # requests in flight per client address
    all_clients: int = 1024  # requests in flight in all
    small_conns: int = 64  # connections to TorchServe for bodies under 1 MB: 64 MB in flight at most
    large_conns: int = 4  # ...and larger ones: 4 x 32 MiB; TorchServe copies a body 2-3 times in its 1 GiB heap
    worker_connections: int = 4096


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if not found:
        raise FileNotFoundError("nginx is not installed; run scripts/setup.sh (apt-get install nginx-light)")
    return found


def render(template: Path, values: dict[str, object]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if left := re.findall(r"\{\{(\w+)\}\}", text):
        raise KeyError(f"{template.name}: no value for {sorted(set(left))}")
    return text


SWITCHED = "switched"  # written once no worker of the loading configuration is left (nginx.conf.template, /health)


class Nginx:
    """`start(loading=True)` listens at once and answers 503 until `ready()`; `stop()` drains, then ends it."""

    def __init__(self, run_dir: Path, host: str, port: int, model_name: str, limits: FrontDoor = FrontDoor()) -> None:
        self.prefix = run_dir / "nginx"
        self.host, self.port, self.model_name, self.limits = host, port, model_name, limits
        self.proc: subprocess.Popen | None = None

    def write_config(self, loading: bool, torchserve: str = "127.0.0.1:9", inference_key: str = "") -> Path:
        self.prefix.mkdir(mode=0o700, exist_ok=True)
        values = {
            **asdict(self.limits),
            "user": "",
            "worker_processes": "auto",
            "listen": f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}",
            "loading": int(loading),
            # While loading, no connection is kept alive: a kept connection would stay with a worker of the loading
            # configuration after the switch to ready (a graceful reload lets old workers finish their connections)
            # and go on answering 503 to that client.
            "keepalive_s": 0 if loading else self.limits.keepalive_s,
            "max_body_mib": self.limits.max_body // MiB,
            "openapi": self.prefix / "openapi.json",
            "switched_file": self.prefix / SWITCHED,
            "torchserve": torchserve,
            "model": quote(self.model_name, safe=""),
            "inference_key": inference_key,
        }
        for sub in TEMP_DIRS:
            (self.prefix / sub).mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(OPENAPI, self.prefix / "openapi.json")
        if os.geteuid() == 0:  # workers run as nobody: they write the temp files and read the API description
            nobody = pwd.getpwnam("nobody")
            values["user"] = f"user nobody {_group_name(nobody.pw_gid)};"
            os.chmod(self.prefix, 0o711)
            os.chmod(self.prefix.parent, 0o711)
            for sub in TEMP_DIRS:
                os.chown(self.prefix / sub, nobody.pw_uid, nobody.pw_gid)
            os.chmod(self.prefix / "openapi.json", 0o644)
        # Written whole, then renamed: a reload never reads half a file. Mode 0600: the hop holds the inference key.
        for name, template in (("torchserve.conf", HOP_TEMPLATE), ("nginx.conf", TEMPLATE)):
            tmp = self.prefix / f".{name}.tmp"
            tmp.touch(mode=0o600)
            tmp.write_text(render(template, values))
            tmp.replace(self.prefix / name)
        return self.prefix / "nginx.conf"

    def command(self) -> list[str]:
        return [nginx_binary(), "-p", str(self.prefix), "-c", "nginx.conf", "-g", "daemon off;"]

    def start(self) -> None:
        (self.prefix / SWITCHED).unlink(missing_ok=True)
        conf = self.write_config(loading=True)
        check = subprocess.run([*self.command()[:-2], "-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refuses its config {conf}: {check.stderr.strip()[-2000:]}")
        # Its own process group: a Ctrl-C in the terminal reaches client_infer.py, which stops nginx gracefully,
        # instead of nginx's fast stop cutting requests in flight.
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, start_new_session=True)

    def ready(self, torchserve: str, inference_key: str, timeout: float = 15.0) -> None:
        """Route the API to TorchServe: a graceful reload (new workers take new connections, old ones finish).

        Returns once every worker of the loading configuration has left: until then an old worker still accepts
        new connections and answers 503, so /health stays 503 (and "ready" unannounced) until then.
        """
        assert self.proc is not None
        old = psutil.Process(self.proc.pid).children()
        self.write_config(loading=False, torchserve=torchserve, inference_key=inference_key)
        self.signal(signal.SIGHUP)
        _, alive = psutil.wait_procs(old, timeout=timeout)
        if alive:  # the master keeps its old workers when it cannot load the new configuration
            raise RuntimeError(f"nginx did not switch to its ready configuration within {timeout:.0f} s")
        (self.prefix / SWITCHED).touch(mode=0o644)  # /health may answer 200 from now on

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """SIGQUIT: stop listening, finish requests in flight (at most shutdown_s), exit; SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(self.limits.shutdown_s + 5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 5  # its workers leave with the master; make sure
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
