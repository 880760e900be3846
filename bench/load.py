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
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

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


def request_bytes(url: str, body: bytes, direct: bool, headers: dict[str, str] | None = None) -> bytes:
    """One keep-alive POST, built once: the product's JSON (base64) or TorchServe's raw bytes."""
    u = urlparse(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if direct:
        payload, ctype = body, "application/octet-stream"
    else:
        doc = {"content": base64.b64encode(body).decode(), "need_visual_data": True, "need_visual_result": True}
        payload, ctype = json.dumps(doc).encode(), "application/json"
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
        f"{extra}\r\n"
    )
    return head.encode() + payload


async def run_load(
    url: str,
    body: bytes,
    direct: bool,
    concurrency: int,
    duration: float,
    max_requests: int,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """N keep-alive connections on raw asyncio streams, each sending the same prebuilt request and reading its
    Content-Length answer: the generator's own CPU per request is a few tens of microseconds, the same for both
    paths (an HTTP client library would share the 2 cores with the service and blur the comparison)."""
    check_loopback(url)
    u = urlparse(url)
    request = request_bytes(url, body, direct, headers)
    result = LoadResult()
    sent = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal sent
        reader = writer = None
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(u.hostname, u.port)
                writer.write(request)
                async with asyncio.timeout(timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
                    await reader.readexactly(length)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if re.search(rb"(?i)\r\nconnection:\s*close", head):
                    writer.close()
                    reader = writer = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError, AttributeError, ValueError):
                result.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
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
