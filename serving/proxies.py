"""Several proxy processes on one port, for machines whose cores one Python event loop cannot keep busy.

One proxy process costs about half a millisecond of CPU per request (docs/benchmarks.md, "Serving"): a core's
worth at some 2,000 requests/s, which a GPU pod's TorchServe can exceed. client_infer.py then binds the API port
once per proxy process with SO_REUSEPORT (the kernel spreads new connections evenly over the sockets, unlike one
shared accept queue, where the least busy process takes most of them) and serves the first socket itself; each
other socket goes to a child process running the same app (`serve_child`). The parent keeps TorchServe, the
start-up wait and the model's readiness, which the children read from one shared byte: every process answers
503 while the model loads and 200 once it is ready. A child that dies is restarted on its socket, whose queued
connections wait for it (the socket stays open in the parent). SIGTERM or SIGINT: children drain like the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized

log = logging.getLogger("client_infer")

PROXIES_ENV = "SIMSIAM_PROXY_PROCESSES"
CORES_PER_PROXY = 8  # below 8 cores one proxy process is enough: it is not the bottleneck next to the model
MAX_PROXIES = 4
_SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the parent's threads or loop


def proxy_count(cpus: int | None = None) -> int:
    """SIMSIAM_PROXY_PROCESSES, else one per 8 cores up to 4 (1 on a machine with fewer than 16 cores)."""
    if value := os.environ.get(PROXIES_ENV):
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{PROXIES_ENV}={value!r}: set a whole number of proxy processes, 1 or more")
        return int(value)
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, min(MAX_PROXIES, cpus // CORES_PER_PROXY))


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one address, each with its own accept queue (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ProxyChildren:
    """The child proxy processes, one per socket after the first; `ready` is the model's readiness they read."""

    def __init__(self, sockets: list[socket.socket], urls: tuple[str, str], model_name: str) -> None:
        self.sockets = sockets
        self.urls = urls
        self.model_name = model_name
        self.ready: Synchronized = _SPAWN.Value("b", 0, lock=False)  # one writer (this process): no lock needed
        self.procs: list[BaseProcess | None] = [None] * len(sockets)
        self.stopping = False

    def _start(self, i: int) -> None:
        proc = _SPAWN.Process(
            target=serve_child,
            args=(self.sockets[i], *self.urls, self.model_name, self.ready),
            name=f"proxy-{i + 2}",
            daemon=True,  # never outlives the parent, whatever way it ends
        )
        proc.start()
        self.procs[i] = proc

    def start(self) -> None:
        for i in range(len(self.sockets)):
            self._start(i)

    def set_ready(self) -> None:
        self.ready.value = 1

    def check(self) -> None:
        """Restart a child that died (its socket and queued connections are still here)."""
        for i, proc in enumerate(self.procs):
            if proc is not None and not self.stopping and proc.exitcode is not None:
                log.error("proxy process %s (pid %s) exited with %s; restarting it", proc.name, proc.pid, proc.exitcode)
                self._start(i)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (uvicorn finishes open requests first), then SIGKILL for any still running after `timeout`."""
        self.stopping = True
        alive = [p for p in self.procs if p is not None and p.exitcode is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(proc.pid, signal.SIGTERM)
        for proc in alive:
            proc.join(timeout)
            if proc.exitcode is None:
                log.warning("proxy process %s did not stop in %.0f s; killing it", proc.name, timeout)
                proc.kill()
                proc.join(5)


def serve_child(sock: socket.socket, inference_url: str, management_url: str, model_name: str, ready) -> None:
    """A child proxy process: the same app and server settings as the parent's, on its own socket."""
    import uvicorn
    import uvloop

    from jobs.cli import setup_logging
    from serving.app import create_app
    from serving.server import server_config

    setup_logging()
    app = create_app(inference_url, management_url, model_name)
    app.state.loading = None if ready.value else "TorchServe is loading it"
    server = uvicorn.Server(server_config(app, *sock.getsockname()[:2]))

    async def follow_readiness() -> None:
        while app.state.loading and not server.should_exit:
            if ready.value:
                app.state.loading = None
            await asyncio.sleep(0.05)

    async def main() -> None:
        follower = asyncio.create_task(follow_readiness())
        try:
            await server.serve(sockets=[sock])
        finally:
            follower.cancel()

    # SIGINT from a terminal's Ctrl-C reaches the whole process group: uvicorn has drained when it re-raises it.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(main())
