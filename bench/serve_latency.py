"""Latency of one request, sequentially: through the proxy (POST /autotable/predict, JSON + base64) and direct to
TorchServe's inference API (raw bytes), for the same ~224 px JPEG. Starts client_infer.py on free ports, stops it.

    SIMSIAM_RUNS_DIR=/tmp/bench-runs .venv/bin/python client_train.py --dataset_path /tmp/demo --device cpu \
        --trial_name bench --annotation_data "{'advance_settings': {'epochs': 1, 'input_size': 224}}"
    .venv/bin/python -m bench.serve_latency --model_path /tmp/bench-runs/models/<uuid4> --used_model SimSiam_bench

Prints p50 / p90 / mean in ms per path; requests alternate between the paths so both see the same load.
The difference is the proxy's cost (JSON, base64, header check, one more hop).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
from PIL import Image

from serving.readiness import wait_until_healthy

REPO = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="model folder from client_train.py")
    p.add_argument("--used_model", required=True, help="its model name")
    p.add_argument("--device", default="cpu", help="(default: %(default)s)")
    p.add_argument("--requests", type=int, default=50, help="timed requests per path (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="JPEG side in pixels (default: %(default)s)")
    return p


def jpeg(side: int) -> bytes:
    im = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def timed(sends: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, list[float]]:
    """n timed requests per path, the paths interleaved so that both see the same load on a shared machine."""
    for _ in range(warmup):
        for send in sends.values():
            send()
    out: dict[str, list[float]] = {name: [] for name in sends}
    for _ in range(n):
        for name, send in sends.items():
            t0 = time.perf_counter()
            send()
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


def report(name: str, ms: list[float]) -> None:
    q = statistics.quantiles(ms, n=10)
    print(f"{name:<34} p50 {statistics.median(ms):7.2f} ms   p90 {q[8]:7.2f} ms   mean {statistics.fmean(ms):7.2f} ms")


def main(args: argparse.Namespace) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SIMSIAM_TS_PORTS": "free"}
    cmd = [sys.executable, str(REPO / "client_infer.py"), "--model_path", args.model_path]
    cmd += ["--used_model", args.used_model, "--device", args.device, "--service_port", str(port)]
    with tempfile.TemporaryDirectory(prefix="serve-latency-") as tmp:
        log = Path(tmp) / "client_infer.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            return measure(args, f"http://127.0.0.1:{port}", proc, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def measure(args: argparse.Namespace, url: str, proc: subprocess.Popen, log: Path) -> int:
    if wait_until_healthy(url, proc) is None:
        print(log.read_text()[-3000:], file=sys.stderr)
        return 1
    inference = re.search(r"inference (http://127\.0\.0\.1:\d+)", log.read_text()).group(1)
    image = jpeg(args.size)
    body = {"content": base64.b64encode(image).decode(), "need_visual_data": True, "need_visual_result": True}
    print(f"{args.used_model} on {args.device}, {args.size}x{args.size} JPEG ({len(image)} bytes), "
          f"{args.requests} sequential requests after {args.warmup} warm-up, {os.cpu_count()} CPUs")  # fmt: skip
    with requests.Session() as http:

        def via_proxy() -> None:
            r = http.post(f"{url}/autotable/predict", json=body, timeout=60)
            assert r.status_code == 200, r.text

        def direct() -> None:
            r = http.post(f"{inference}/predictions/{args.used_model}", data=image, timeout=60,
                          headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            assert r.status_code == 200, r.text

        paths = {"proxy   POST /autotable/predict": via_proxy, "direct  POST /predictions/<model>": direct}
        for name, ms in timed(paths, args.requests, args.warmup).items():
            report(name, ms)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
