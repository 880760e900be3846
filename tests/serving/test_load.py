"""Load (issue 6): 16 clients for 60 s with a model version switch in the middle; opt in with -m load.

scripts/test.sh runs it as a second pytest run (about 2 minutes). bench/stress.py runs the same with a worker
kill on top and prints the figures for docs/reliability.md.
"""

from __future__ import annotations

import time

import pytest
import requests

from bench.stress import Stream, growth, jpeg, manage, rss_mib, switch_version

pytestmark = [pytest.mark.serving, pytest.mark.load]
CLIENTS, SECONDS, WARMUP = 16, 60.0, 10.0


def test_sixteen_clients_for_a_minute_with_a_version_switch(service, trained_model):
    """Zero failures, none lost, 2.0 serving at the end, and neither nginx nor TorchServe grows its memory by 10 %."""
    url, pid, image = f"{service.url}/autotable/predict", service.proc.pid, jpeg()
    with Stream(url, image, CLIENTS, max_requests=20_000, max_seconds=WARMUP) as warm:
        time.sleep(WARMUP)  # JIT, allocator pools and the JVM heap settle before the first memory sample
    assert warm.records and not warm.failures()
    mem0 = rss_mib(pid)
    with Stream(url, image, CLIENTS, max_requests=20_000, max_seconds=SECONDS + 120) as s:
        time.sleep(15)
        switch_s = switch_version(service.management_url, trained_model["model_path"])
        time.sleep(max(0.0, s.started + SECONDS - time.monotonic()))
    mem1 = rss_mib(pid)
    result = s.result()
    print(result.summary(f"{CLIENTS} clients, {result.seconds:.0f} s"))
    print(f"version switch under load: {switch_s:.1f} s")
    for role in ("nginx", "frontend", "workers", "torchserve"):
        print(f"RSS {role:<10} {mem0[role]:7.0f} -> {mem1[role]:7.0f} MiB ({growth(mem0, mem1, role):+.1%})")
    assert s.failures() == [] and s.lost() == 0 and s.sent == len(s.records)
    assert result.seconds >= SECONDS and result.requests >= 5 * SECONDS  # it did run: >= 5 req/s on 2 busy cores
    assert requests.get(f"{service.url}/health", timeout=10).json()["data"][0]["version"] == "2.0"
    assert [v["modelVersion"] for v in manage(service.management_url, "describe", "--version", "all")] == ["2.0"]
    # The JVM alone may grow its heap toward -Xmx; TorchServe as a whole (frontend + workers) must not leak.
    assert growth(mem0, mem1, "nginx") < 0.10 and growth(mem0, mem1, "torchserve") < 0.10, (mem0, mem1)
