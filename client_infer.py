"""Serve a trained model: TorchServe on loopback + the product's HTTP API on 0.0.0.0:<service_port>.

    python client_infer.py --model_path runs/models/<uuid4> --used_model SimSiam_autotables-2503-train-1 \
        --device cpu --service_port 8080
    printf '{"content": "%s"}' "$(base64 -w0 flower.jpg)" |
        curl -s localhost:8080/autotable/predict -H 'Content-Type: application/json' -d @-

Stays in the foreground until SIGINT/SIGTERM, then stops TorchServe and leaves no process behind
(SPEC.md, "client_infer.py"; README.md, "Serving").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from jobs.cli import add_device, add_model_folder, setup_logging

log = logging.getLogger("client_infer")


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: stop the proxy, then TorchServe."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_folder(p)
    add_device(p)
    p.add_argument("--service_port", type=int, default=8080, help="port of the HTTP API (default: %(default)s)")
    p.add_argument("--host", type=str, default="0.0.0.0", help="address of the HTTP API (default: %(default)s)")
    return p


def resolve(name: str) -> tuple[str, int | None]:
    """(device, GPU index or None); "cuda" without a GPU falls back to CPU with a warning."""
    if name.strip().lower() == "cpu":
        return "cpu", None  # no torch import: the proxy process stays small and starts fast
    from jobs.device import resolve_device

    device = resolve_device(name)
    return str(device), (device.index or 0) if device.type == "cuda" else None


def _raise_stop(signum: int, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


async def _serve(
    app, host: str, port: int, ts, start_timeout: float, on_ready: Callable[[], None], proxies: int = 1
) -> int:
    """Listen at once and answer 503 while TorchServe loads the model (SPEC: "503 while the model is not ready"),
    then proxy until a signal (uvicorn drains open requests first) or until TorchServe dies (exit code 1).
    A model that cannot load raises TorchServeError after the proxy has stopped. With `proxies` > 1, as many
    processes serve the port (serving/proxies.py): this one and its children, which follow its readiness."""
    import uvicorn

    from serving.proxies import ProxyChildren, bind_sockets
    from serving.server import server_config
    from serving.torchserve_process import TorchServeCancelled

    config = server_config(app, host, port)
    server = uvicorn.Server(config)
    stopping = threading.Event()  # ends the start-up wait whichever way _serve leaves
    app.state.loading = "TorchServe is loading it"
    sockets = bind_sockets(host, port, proxies) if proxies > 1 else []
    children = ProxyChildren(sockets[1:], (ts.config.inference_url, ts.config.management_url), ts.model_name)
    children.start()
    task = asyncio.create_task(server.serve(sockets=sockets[:1] or None))
    loading = asyncio.create_task(
        asyncio.to_thread(ts.wait_ready, start_timeout, lambda: stopping.is_set() or server.should_exit)
    )
    died = False
    failed: BaseException | None = None
    waiting = {task, loading}  # loading leaves once it has ended, so a stop never spins on a finished task
    try:
        while not task.done():
            await asyncio.wait(waiting, timeout=0.5)
            if loading in waiting and loading.done():
                waiting = {task}
                if (error := loading.exception()) is None:
                    app.state.loading = None
                    children.set_ready()
                    on_ready()
                elif not isinstance(error, TorchServeCancelled):  # cancelled: a signal is already stopping us
                    failed = error  # the model cannot load: stop listening, report it below
                    server.should_exit = True
            elif not app.state.loading and not died and ts.poll() is not None:
                log.error("TorchServe exited unexpectedly; stopping the service. Its last lines:\n%s", ts.tail())
                died = server.should_exit = True
            children.check()
        await task  # uvicorn re-raises the signal it caught: _Stop comes out here
    finally:
        stopping.set()
        children.stop()
        for sock in sockets:
            sock.close()
        with contextlib.suppress(BaseException):
            await loading
    if failed is not None:
        raise failed
    return 1 if died else 0


def main(args: argparse.Namespace) -> int:
    setup_logging()
    from export.model_folder import ModelFolderError, open_model_folder

    try:
        model_dir = open_model_folder(args.model_path, args.used_model).path
    except ModelFolderError as e:
        log.error("%s", e)
        return 2
    if not (model_dir / f"{args.used_model}.mar").is_file():
        log.error("--model_path %s holds no %s.mar; train again to rebuild it", model_dir, args.used_model)
        return 2
    from serving.ts_config import port_is_free

    if not port_is_free(args.host, args.service_port):
        log.error("--service_port %d is taken on %s; choose a free port", args.service_port, args.host)
        return 2
    try:
        device, gpu_index = resolve(args.device)
    except ValueError as e:
        log.error("%s", e)
        return 2
    from serving.app import create_app
    from serving.plan import serving_plan
    from serving.proxies import proxy_count
    from serving.torchserve_process import TorchServeError, TorchServeProcess

    plan = serving_plan(gpus=0 if gpu_index is None else 1)
    try:
        proxies = proxy_count()
    except ValueError as e:
        log.error("%s", e)
        return 2
    ts = TorchServeProcess(
        model_dir,
        args.used_model,
        gpu_index=gpu_index,
        torch_threads=plan.threads,
        workers=plan.workers,
        always_free_ports=os.environ.get("SIMSIAM_TS_PORTS") == "free",  # tests: never collide with a live server
        reserved_ports=frozenset({args.service_port}),  # free now, bound by the proxy once TorchServe runs
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    try:
        ts.start()
        cfg = ts.config

        def on_ready() -> None:
            log.info(
                "model %s ready on %s (%d workers, %d torch threads each; %d proxy processes); "
                "API: http://%s:%d/autotable/predict; "
                "TorchServe (loopback only): inference %s, management %s, metrics %s/metrics",
                args.used_model,
                device,
                plan.workers,
                plan.threads,
                proxies,
                args.host,
                args.service_port,
                cfg.inference_url,
                cfg.management_url,
                cfg.metrics_url,
            )

        app = create_app(cfg.inference_url, cfg.management_url, args.used_model)
        start_timeout = float(os.environ.get("SIMSIAM_TS_START_TIMEOUT", "300"))
        import uvloop  # libuv's event loop: less CPU per request than asyncio's own

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(app, args.host, args.service_port, ts, start_timeout, on_ready, proxies))
    except _Stop as e:
        log.info("%s: stopping", e)
        return 0
    except TorchServeError as e:
        log.error("%s", e)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not interrupt the clean-up
            signal.signal(sig, lambda *_: log.warning("already stopping"))
        ts.stop()
        log.info("TorchServe stopped")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
