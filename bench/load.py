"""Closed-loop load generator for the product API (or TorchServe directly), loopback only, bounded.

    .venv/bin/python -m bench.load --url http://127.0.0.1:8080/autotable/predict --image x.jpg \
        --concurrency 16 --duration 60 --max_requests 20000

N async clients each send one request, wait for the answer, send the next, until `--duration` seconds or
`--max_requests` requests. Prints requests/s, p50/p95/p99 latency and the count of non-200 answers.
`--direct` posts the raw image bytes (TorchServe's /predictions/<model>) instead of the product's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # transport errors (connection refused, timeouts)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def failures(self) -> int:
        return self.errors + sum(n for code, n in self.statuses.items() if code != 200)

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else float("nan")

    def summary(self, name: str) -> str:
        rps = self.requests / self.seconds if self.seconds else 0.0
        return (
            f"{name:<22} {self.requests:>7} req {rps:>8.1f} req/s  p50 {self.percentile(50):7.1f}  "
            f"p95 {self.percentile(95):7.1f}  p99 {self.percentile(99):7.1f} ms  failures {self.failures}"
        )


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise SystemExit(f"refusing to load {host}: this generator only targets loopback addresses")


async def run_load(
    url: str, body: bytes, direct: bool, concurrency: int, duration: float, max_requests: int, timeout: float = 60.0
) -> LoadResult:
    check_loopback(url)
    result = LoadResult()
    if direct:
        kwargs = {"content": body, "headers": {"Content-Type": "application/octet-stream"}}
    else:
        kwargs = {
            "json": {"content": base64.b64encode(body).decode(), "need_visual_data": True, "need_visual_result": True}
        }
    sent = 0
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(url, **kwargs)
                result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1
            except httpx.HTTPError:
                result.errors += 1
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        result.seconds = time.monotonic() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--direct", action="store_true", help="post raw bytes (TorchServe) instead of the product JSON")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--max_requests", type=int, default=100_000)
    a = p.parse_args()
    r = asyncio.run(run_load(a.url, a.image.read_bytes(), a.direct, a.concurrency, a.duration, a.max_requests))
    print(r.summary("direct" if a.direct else "proxy"))
    print(f"statuses: {r.statuses}, transport errors: {r.errors}, mean {statistics.fmean(r.latencies_ms):.1f} ms")


if __name__ == "__main__":
    main()
