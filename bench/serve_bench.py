"""Serving figures beside their references: the front door (nginx) vs TorchServe alone vs the in-process ceilings.

    .venv/bin/python -m bench.serve_bench --model_path runs/models/<uuid4> --used_model SimSiam_<trial>
    .venv/bin/python -m bench.serve_bench ... --image_size 224x224 --concurrency 16 --duration 10 --rounds 3

Starts client_infer.py on free loopback ports (stops it at the end); after a warm-up, each measurement runs in
interleaved rounds (proxy, direct, direct, proxy, ...: the machine's drift falls on both) on keep-alive
connections from a raw asyncio client that costs both paths the same. Prints, with ratio and target:
- time from start to the first 200 of /health (target: under 30 s);
- one client: p50 through the proxy vs direct to TorchServe (target: proxy <= 1.05x);
- N clients: requests/s (>= 0.95x) and p99 (<= 1.2x) through the proxy vs direct, and vs the in-process ceiling
  with decoding (>= 0.7x for a 64-px model, >= 0.85x for 224 px);
- the ceilings: model.pt in this process on all cores, on a preprocessed batch of TorchServe's batchSize, and
  with each batch's JPEGs decoded and preprocessed (parallel threads) first;
- the front door's CPU per request: nginx's processes' CPU seconds under load / requests;
- a 6000x4000 JPEG through the proxy: p50 (target: under 300 ms);
- memory (RSS) of nginx and of the TorchServe workers before and after the load.
"proxy" in the rows below is the front door (nginx, the product's JSON with base64); "direct" is TorchServe's
own inference API with the image's raw bytes and its inference key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import requests
import torch
import yaml
from PIL import Image

from bench.load import LoadResult, run_load
from bench.service import running_service
from handler.classifier import load_classifier
from handler.eval_preset import EvalPreset, load_for_eval
from serving.torchserve_process import read_keys

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


def ceilings(model_path: Path, batch: int, image: bytes, seconds: float = 6.0) -> tuple[float, float]:
    """Images/s of model.pt in this process on all cores: (the model alone on a preprocessed batch; and decode +
    preset + model of each batch). Each is the better of two layouts: one loop with every core as torch threads,
    and one loop per core with one torch thread each (as the serving plan's workers run)."""
    cores = len(os.sched_getaffinity(0))
    model = load_classifier(str(model_path / "model.pt"), torch.device("cpu"))
    preset = EvalPreset.load(model_path / "preprocess.json")
    x = torch.stack([load_for_eval(image, preset) for _ in range(batch)])

    def rate(loops: int, decode: bool) -> float:
        torch.set_num_threads(cores // loops)
        stop, counts = time.perf_counter() + seconds, [0] * loops

        def loop(i: int) -> None:
            with torch.inference_mode():
                while time.perf_counter() < stop:
                    model(torch.stack([load_for_eval(image, preset) for _ in range(batch)]) if decode else x)
                    counts[i] += batch

        with torch.inference_mode():
            for _ in range(3):
                model(x)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(loops) as pool:
            list(pool.map(loop, range(loops)))
        return sum(counts) / (time.perf_counter() - t0)

    layouts = {1, cores}
    return max(rate(n, False) for n in layouts), max(rate(n, True) for n in layouts)


def stages(model_path: Path, image: bytes, batch: int) -> list[tuple[str, float]]:
    """Microseconds per request of each step, in this process, one core: the proxy's own work on the request
    and the handler's (what TorchServe's worker runs), for the same JPEG."""
    import base64
    import json

    from handler.api import check_image_header, decode_base64, envelope, prediction

    body = json.dumps({"content": base64.b64encode(image).decode()}).encode()
    text = json.loads(body)["content"]
    torch.set_num_threads(1)
    model = load_classifier(str(model_path / "model.pt"), torch.device("cpu"))
    preset = EvalPreset.load(model_path / "preprocess.json")
    x = torch.stack([load_for_eval(image, preset) for _ in range(batch)])

    def us(fn: Callable[[], object], n: int) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    with torch.inference_mode():
        return [
            ("handler: parse the JSON body", us(lambda: json.loads(body), 500)),
            ("handler: base64 -> bytes", us(lambda: decode_base64(text), 500)),
            ("handler: image header check", us(lambda: check_image_header(image), 500)),
            ("handler: the reply's JSON", us(lambda: envelope(200, "ok", [prediction("c", 0.5, True, True)]), 500)),
            ("handler: decode + eval preset", us(lambda: load_for_eval(image, preset), 50)),
            (f"handler: model, 1 thread (batch {batch}, per image)", us(lambda: model(x), 5) / batch),
        ]


def torchserve_latency_us(metrics_url: str) -> dict[str, float]:
    """TorchServe's own per-request means since start (Prometheus counters): time queued for a worker, and the
    whole request inside TorchServe (frontend, queue, worker IPC, handler)."""
    text = requests.get(f"{metrics_url}/metrics", timeout=10).text

    def total(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    n = max(total("ts_inference_requests_total"), 1.0)
    return {
        "queue": total("ts_queue_latency_microseconds") / n,
        "inside TorchServe": total("ts_inference_latency_microseconds") / n,
    }


def p50_sequential(send: Callable[[], object], n: int) -> float:
    for _ in range(3):
        send()
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        send()
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms)


def nginx_pids(proc: subprocess.Popen) -> list[int]:
    return [p.pid for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "nginx"]


def proxy_cpu_s(proc: subprocess.Popen) -> float:
    """CPU seconds of the front door: nginx's master and workers (client_infer.py itself only waits)."""
    total = 0.0
    for p in map(psutil.Process, nginx_pids(proc)):
        with contextlib.suppress(psutil.Error):
            total += sum(p.cpu_times()[:2])
    return total


def interleaved(runs: dict[str, Callable[[], LoadResult]], rounds: int, cpu_of: Callable[[], float]) -> dict:
    """Each run `rounds` times, in alternating order (ABBA...), pooled; plus the proxy processes' CPU seconds."""
    pooled = {name: LoadResult() for name in runs}
    cpu = dict.fromkeys(runs, 0.0)
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            c0 = cpu_of()
            res = runs[name]()
            cpu[name] += cpu_of() - c0
            pooled[name].latencies_ms += res.latencies_ms
            pooled[name].seconds += res.seconds
            pooled[name].errors += res.errors
            for code, k in res.statuses.items():
                pooled[name].statuses[code] = pooled[name].statuses.get(code, 0) + k
    return {"result": pooled, "cpu": cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", type=Path, required=True)
    p.add_argument("--used_model", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run (default 10)")
    p.add_argument("--device", default="cpu", help="where TorchServe runs the model: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each run (default 3)")
    p.add_argument("--image_size", default="640x480", help="the JPEG sent, WxH (default 640x480)")
    a = p.parse_args()
    with running_service(a.model_path, a.used_model, a.device) as svc:
        key_file = Path(re.search(r"token authorization: (\S+)\)", svc.log()).group(1))
        a.direct_headers = {"Authorization": f"Bearer {read_keys(key_file)['inference']}"}
        a.metrics_url = svc.logged_url("metrics")
        direct_url = f"{svc.logged_url('inference')}/predictions/{a.used_model}"
        return report(a, svc.url, direct_url, svc.proc, svc.ready_s)


def report(a: argparse.Namespace, url: str, direct_url: str, proc: subprocess.Popen, ready_s: float) -> int:
    import base64

    w, h = (int(v) for v in a.image_size.split("x"))
    image = jpeg(w, h)
    big = jpeg(6000, 4000, seed=1)
    proxy_url = f"{url}/autotable/predict"
    mem0 = rss_mib(nginx_pids(proc)), rss_mib(workers(proc))
    me = partial(proxy_cpu_s, proc)

    def load(target: str, direct: bool, clients: int, seconds: float) -> Callable[[], LoadResult]:
        headers = a.direct_headers if direct else None
        return lambda: asyncio.run(run_load(target, image, direct, clients, seconds, 10**6, headers=headers))

    load(proxy_url, False, a.concurrency, 3.0)(), load(direct_url, True, a.concurrency, 3.0)()  # warm-up
    one = interleaved(
        {"proxy": load(proxy_url, False, 1, a.duration / 3), "direct": load(direct_url, True, 1, a.duration / 3)},
        a.rounds,
        me,
    )
    many = interleaved(
        {
            "proxy": load(proxy_url, False, a.concurrency, a.duration),
            "direct": load(direct_url, True, a.concurrency, a.duration),
        },
        a.rounds,
        me,
    )
    big_body = {"content": base64.b64encode(big).decode()}
    with requests.Session() as http:
        big_p50 = p50_sequential(lambda: http.post(proxy_url, json=big_body, timeout=60), 10)
    mem1 = rss_mib(nginx_pids(proc)), rss_mib(workers(proc))
    config = yaml.safe_load((a.model_path / "model-config.yaml").read_text())
    model_only, with_decoding = ceilings(a.model_path, int(config["batchSize"]), image)
    p1, d1 = one["result"]["proxy"], one["result"]["direct"]
    pm, dm = many["result"]["proxy"], many["result"]["direct"]
    rps = {k: r.requests / r.seconds for k, r in many["result"].items()}
    cpu_ms = 1000 * (many["cpu"]["proxy"] - many["cpu"]["direct"] * pm.seconds / dm.seconds) / max(pm.requests, 1)
    rows_extra = [(f"{a.concurrency} clients p50 ms: proxy vs direct", pm.percentile(50), dm.percentile(50), None, "")]
    print(
        f"{a.used_model}: input {EvalPreset.load(a.model_path / 'preprocess.json').input_size} px, {w}x{h} JPEG "
        f"({len(image) // 1024} KiB); {len(os.sched_getaffinity(0))} CPUs ({platform.processor() or 'cpu'}); "
        f"batchSize {config['batchSize']}, maxBatchDelay {config['maxBatchDelay']} ms, workers "
        f"{config['minWorkers']}; {a.rounds} interleaved rounds of {a.duration:.0f} s"
    )
    rows = [
        ("ready after start (s)", ready_s, 30, ready_s / 30, "<= 1.00"),
        ("1 client p50 ms: proxy vs direct", p1.percentile(50), d1.percentile(50), None, "<= 1.03"),
        (f"{a.concurrency} clients req/s: proxy vs direct", rps["proxy"], rps["direct"], None, ">= 0.97/0.98"),
        (f"{a.concurrency} clients p99 ms: proxy vs direct", pm.percentile(99), dm.percentile(99), None, "<= 1.10"),
        (f"{a.concurrency} clients req/s: proxy vs ceiling+decode", rps["proxy"], with_decoding, None, ">= 0.70/0.85"),
        (f"{a.concurrency} clients req/s: direct vs ceiling+decode", rps["direct"], with_decoding, None, ""),
        ("ceiling img/s: with decoding vs model only", with_decoding, model_only, None, ""),
        *rows_extra,
        ("front door (nginx) CPU ms per request", cpu_ms, 0.1, cpu_ms / 0.1, "<= 1.00"),
        ("6000x4000 JPEG p50 ms (proxy)", big_p50, 300, big_p50 / 300, "<= 1.00"),
    ]
    print(f"{'figure':<48}{'product':>10}{'reference':>11}{'ratio':>8}  target")
    for name, v, ref, ratio, target in rows:
        ratio = ratio if ratio is not None else (v / ref if ref else None)
        refs = f"{ref:>11.1f}" if ref is not None else f"{'':>11}"
        print(f"{name:<48}{v:>10.1f}{refs}{'' if ratio is None else f'{ratio:>8.2f}':>8}  {target}")
    for name, r in (("proxy 1 client", p1), ("direct 1 client", d1), ("proxy load", pm), ("direct load", dm)):
        print(r.summary(name))
    print("where a request's time goes (us per request; one core, in-process; TorchServe's means over the run):")
    for name, v in stages(a.model_path, image, int(config["batchSize"])):
        print(f"  {name:<52}{v:>9.0f}")
    for name, v in torchserve_latency_us(a.metrics_url).items():
        print(f"  {'TorchServe: ' + name:<52}{v:>9.0f}")
    print(f"  {'nginx: all its CPU (server, hop)':<52}{cpu_ms * 1000:>9.0f}")
    print(f"RSS MiB nginx {mem0[0]:.0f} -> {mem1[0]:.0f}; TorchServe workers {mem0[1]:.0f} -> {mem1[1]:.0f}")
    failures = pm.failures + dm.failures + p1.failures + d1.failures
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
