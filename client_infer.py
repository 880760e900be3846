"""Serve a trained model: TorchServe on loopback, nginx on 0.0.0.0:<service_port> speaking the product's HTTP API.

    python client_infer.py --model_path runs/models/<uuid4> --used_model SimSiam_autotables-2503-train-1 \
        --device cpu --service_port 8080
    printf '{"content": "%s"}' "$(base64 -w0 flower.jpg)" |
        curl -s localhost:8080/autotable/predict -H 'Content-Type: application/json' -d @-

nginx listens at once and answers 503 until the model has answered a probe image, then routes the API to
TorchServe (a graceful reload). Stays in the foreground until SIGINT/SIGTERM, then lets requests in flight
finish, stops nginx and TorchServe, and leaves no process behind (SPEC.md, "client_infer.py"; docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from jobs.cli import add_device, add_model_folder, setup_logging

log = logging.getLogger("client_infer")
SERVICE_FILE = "service.json"  # in the run folder: how `python -m serving.manage` finds this service


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
        return "cpu", None  # no torch import: this process stays small and starts fast
    from jobs.device import resolve_device

    device = resolve_device(name)
    return str(device), (device.index or 0) if device.type == "cuda" else None


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
    from serving.nginx import Nginx, nginx_binary
    from serving.plan import serving_plan
    from serving.torchserve_process import TorchServeCancelled, TorchServeError, TorchServeProcess
    from serving.ts_config import port_is_free

    if not port_is_free(args.host, args.service_port):
        log.error("--service_port %d is taken on %s; choose a free port", args.service_port, args.host)
        return 2
    try:
        device, gpu_index = resolve(args.device)
        nginx_binary()
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2

    # A signal only appends to this list: every wait below polls it, so a stop at any moment -- TorchServe half
    # started, the model loading -- runs the same clean-up, and no exception lands inside a child's start. Not a
    # threading.Event: its set() takes a lock that the main thread itself may hold inside wait() when the signal
    # arrives, and the process then hangs (seen: SIGTERM logged, nothing stopped).
    stopping: list[str] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopping.append(signal.Signals(signum).name))
    plan = serving_plan(gpus=0 if gpu_index is None else 1)
    ts = TorchServeProcess(
        model_dir,
        args.used_model,
        gpu_index=gpu_index,
        torch_threads=plan.threads,
        workers=plan.workers,
        always_free_ports=os.environ.get("SIMSIAM_TS_PORTS") == "free",  # tests: never collide with a live server
        reserved_ports=frozenset({args.service_port}),  # free now, bound by nginx
    )
    nginx: Nginx | None = None
    try:
        ts.start()
        cfg = ts.config
        nginx = Nginx(ts.run_dir, args.host, args.service_port, args.used_model)
        nginx.start()
        (ts.run_dir / SERVICE_FILE).write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "model": args.used_model,
                    "management": cfg.management_url,
                    "store": str(ts.run_dir / "model-store"),
                    "key_file": str(ts.key_file),
                }
            )
        )
        start_timeout = float(os.environ.get("SIMSIAM_TS_START_TIMEOUT", "300"))
        try:
            ts.wait_ready(start_timeout, lambda: bool(stopping))
        except TorchServeCancelled:
            return 0
        host = cfg.inference_url.split("//", 1)[1]
        nginx.ready(host, ts.keys()["inference"])
        log.info(
            "model %s ready on %s (%d workers, %d torch threads each); API: http://%s:%d/autotable/predict; "
            "TorchServe (loopback only, token authorization: %s): inference %s, management %s, metrics %s/metrics",
            args.used_model, device, plan.workers, plan.threads, args.host, args.service_port, ts.key_file,
            cfg.inference_url, cfg.management_url, cfg.metrics_url,
        )  # fmt: skip
        while not stopping:
            time.sleep(0.5)
            if ts.poll() is not None:
                log.error("TorchServe exited unexpectedly; stopping the service. Its last lines:\n%s", ts.tail())
                return 1
            if nginx.poll() is not None:
                log.error("nginx exited unexpectedly (code %s); stopping the service", nginx.poll())
                return 1
        return 0
    except (TorchServeError, RuntimeError, OSError) as e:
        log.error("%s", e)
        return 1
    finally:
        if stopping:
            log.info("%s: stopping", stopping[0])
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal changes nothing: the clean-up goes on
            signal.signal(sig, signal.SIG_IGN)
        if nginx is not None:
            nginx.stop()  # first: requests in flight finish while TorchServe still runs
            log.info("nginx stopped")
        ts.stop()
        log.info("TorchServe stopped")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
