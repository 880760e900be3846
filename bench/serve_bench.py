"""Serving figures beside their references: proxy vs direct TorchServe vs the in-process batched ceiling.

    .venv/bin/python -m bench.serve_bench --model_path runs/models/<uuid4> --used_model SimSiam_<trial> \
        --concurrency 16 --duration 30

Starts client_infer.py on free loopback ports (stops it at the end) and prints:
- time from start to the first 200 of /health (target: under 30 s);
- one client, sequential: p50 through the proxy vs direct to TorchServe (target: proxy <= 1.15x direct);
- N concurrent clients: requests/s through the proxy vs direct (target >= 0.9x) and vs the ceiling (>= 0.6x);
- the ceiling: the same TorchScript model called in-process on batches of TorchServe's batchSize, all cores;
- a 6000x4000 JPEG through the proxy: p50 (target: under 300 ms);
- memory (RSS) of the proxy process and of the TorchServe workers before and after the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import requests
import torch
import yaml
from PIL import Image

from bench.load import run_load
from handler.eval_preset import EvalPreset, load_for_eval
from serving.readiness import wait_until_healthy
from serving.ts_config import free_port

REPO = Path(__file__).resolve().parent.parent


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth noise, so it compresses like a photograph, not like a flat colour)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def workers(proc: subprocess.Popen) -> list[int]:
    return [
        p.pid
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "model_service_worker" in " ".join(p.cmdline())
    ]


def ceiling(model_path: Path, batch: int, seconds: float = 10.0) -> float:
    """Images/s of model.pt on batches already preprocessed in memory, all cores: no HTTP, no decoding."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = torch.jit.load(str(model_path / "model.pt")).eval()
    preset = EvalPreset.load(model_path / "preprocess.json")
    x = torch.stack([load_for_eval(jpeg(224, 224, i), preset) for i in range(batch)])
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - t0)


def p50_sequential(send, n: int) -> float:
    for _ in range(3):
        send()
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        send()
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", type=Path, required=True)
    p.add_argument("--used_model", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per load run (default 30)")
    p.add_argument("--sequential", type=int, default=50, help="requests per sequential run (default 50)")
    a = p.parse_args()
    port = free_port()
    env = {**os.environ, "SIMSIAM_TS_PORTS": "free"}
    cmd = [
        sys.executable,
        str(REPO / "client_infer.py"),
        "--model_path",
        str(a.model_path),
        "--used_model",
        a.used_model,
        "--device",
        "cpu",
        "--service_port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        log = Path(tmp) / "client_infer.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            ready_s = wait_until_healthy(url, proc)
            if ready_s is None:
                print(log.read_text()[-3000:], file=sys.stderr)
                return 1
            inference = re.search(r"inference (http://127\.0\.0\.1:\d+)", log.read_text()).group(1)
            direct_url = f"{inference}/predictions/{a.used_model}"
            return report(a, url, direct_url, proc, ready_s)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def report(a: argparse.Namespace, url: str, direct_url: str, proc: subprocess.Popen, ready_s: float) -> int:
    import base64

    image = jpeg(224, 224)
    big = jpeg(6000, 4000, seed=1)
    body = {"content": base64.b64encode(image).decode(), "need_visual_data": True, "need_visual_result": True}
    big_body = {"content": base64.b64encode(big).decode(), "need_visual_data": True, "need_visual_result": True}
    octet = {"Content-Type": "application/octet-stream"}
    mem0 = rss_mib([proc.pid]), rss_mib(workers(proc))
    with requests.Session() as http:
        proxy_p50 = p50_sequential(lambda: http.post(f"{url}/autotable/predict", json=body, timeout=60), a.sequential)
        direct_p50 = p50_sequential(lambda: http.post(direct_url, data=image, headers=octet, timeout=60), a.sequential)
        big_p50 = p50_sequential(lambda: http.post(f"{url}/autotable/predict", json=big_body, timeout=60), 10)
    proxy = asyncio.run(run_load(f"{url}/autotable/predict", image, False, a.concurrency, a.duration, 10**6))
    direct = asyncio.run(run_load(direct_url, image, True, a.concurrency, a.duration, 10**6))
    mem1 = rss_mib([proc.pid]), rss_mib(workers(proc))
    config = yaml.safe_load((a.model_path / "model-config.yaml").read_text())
    ceil = ceiling(a.model_path, int(config["batchSize"]))
    proxy_rps, direct_rps = proxy.requests / proxy.seconds, direct.requests / direct.seconds
    print(
        f"{a.used_model}: input {EvalPreset.load(a.model_path / 'preprocess.json').input_size} px, "
        f"{len(os.sched_getaffinity(0))} CPUs, batchSize {config['batchSize']}, maxBatchDelay "
        f"{config['maxBatchDelay']} ms, minWorkers {config['minWorkers']}"
    )
    print(f"{'figure':<44}{'product':>12}{'reference':>12}{'ratio':>8}  target")
    print(f"{'ready after start (s)':<44}{ready_s:>12.1f}{30:>12}{ready_s / 30:>8.2f}  <= 1.00")
    print(
        f"{'1 client p50 ms: proxy vs direct':<44}{proxy_p50:>12.1f}{direct_p50:>12.1f}"
        f"{proxy_p50 / direct_p50:>8.2f}  <= 1.15"
    )
    print(
        f"{f'{a.concurrency} clients req/s: proxy vs direct':<44}{proxy_rps:>12.1f}{direct_rps:>12.1f}"
        f"{proxy_rps / direct_rps:>8.2f}  >= 0.90"
    )
    print(
        f"{f'{a.concurrency} clients req/s: proxy vs ceiling':<44}{proxy_rps:>12.1f}{ceil:>12.1f}"
        f"{proxy_rps / ceil:>8.2f}  >= 0.60"
    )
    print(f"{'6000x4000 JPEG p50 ms (proxy)':<44}{big_p50:>12.1f}{300:>12}{big_p50 / 300:>8.2f}  <= 1.00")
    print(proxy.summary("proxy load"))
    print(direct.summary("direct load"))
    print(f"RSS MiB proxy process {mem0[0]:.0f} -> {mem1[0]:.0f}; TorchServe workers {mem0[1]:.0f} -> {mem1[1]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
