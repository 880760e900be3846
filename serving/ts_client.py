"""The proxy's one pooled async client to TorchServe: predictions (inference API) and readiness (management API)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from serving.envelope import ApiError

log = logging.getLogger(__name__)

# At most this many requests in flight to TorchServe: well below its job_queue_size (config.properties), so a burst
# waits here instead of being refused with 503 by TorchServe.
MAX_IN_FLIGHT = 64
# ...and at most this many image bytes: TorchServe's Java frontend holds every queued request whole in its heap
# (vmargs -Xmx1g in config.properties), and 64 photos of 24 MiB would exhaust it.
MAX_IN_FLIGHT_BYTES = 128 * 2**20
# A request that finds no room within this time gets a prompt 503: a client learns at once that the service is
# overloaded (and can retry elsewhere), instead of sitting in a queue until its own timeout.
ADMISSION_WAIT_S = 5.0
OCTET = {"Content-Type": "application/octet-stream"}  # raw bytes; TorchServe would try to parse a form otherwise


class Overloaded(Exception):
    pass


class TorchServeClient:
    """aiohttp's pooled keep-alive connections (httpx's async pool costs several times the CPU per request:
    docs/benchmarks.md, "Where a request's time goes")."""

    def __init__(self, inference_url: str, management_url: str, model_name: str, timeout_s: float = 90.0) -> None:
        self.model_name = model_name
        self.predict_url = f"{inference_url}/predictions/{model_name}"  # no version: the default version answers
        self.describe_url = f"{management_url}/models/{model_name}"
        self.timeout_s = timeout_s
        self.budget = ByteBudget(MAX_IN_FLIGHT_BYTES)
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:  # made on first use, inside the running loop
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, keepalive_timeout=30),
                # read timeout above TorchServe's responseTimeout (60 s), so TorchServe reports a stuck worker first
                timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self.timeout_s),
                skip_auto_headers=("User-Agent",),
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    @asynccontextmanager
    async def admitted(self, n: int) -> AsyncIterator[None]:
        """A slot and `n` bytes of the in-flight budget, or Overloaded after ADMISSION_WAIT_S."""
        try:
            async with asyncio.timeout(ADMISSION_WAIT_S):
                await self.slots.acquire()
        except TimeoutError:
            raise Overloaded from None
        try:
            async with self.budget.hold(n, ADMISSION_WAIT_S):
                yield
        finally:
            self.slots.release()

    async def predict(self, image: bytes) -> dict[str, Any]:
        """Image file bytes -> {"class", "index", "probability"}; ApiError with the status the client should see."""
        try:
            async with self.admitted(len(image)), self.http.post(self.predict_url, data=image, headers=OCTET) as r:
                status, text = r.status, await r.text()
        except Overloaded as e:
            raise ApiError(503, "the service is overloaded (too many images in flight); retry shortly") from e
        except TimeoutError as e:  # aiohttp's read and connect timeouts are TimeoutErrors
            raise ApiError(503, "the model did not answer in time; retry shortly") from e
        except aiohttp.ClientError as e:
            log.error("TorchServe unreachable: %s", e)
            raise ApiError(503, "the model server is not reachable; retry shortly") from e
        if status == 200:
            body = json.loads(text)
            return {"class": str(body["class"]), "probability": float(body["probability"])}
        detail = _detail(text)
        if status == 400:  # the handler's per-request status: this image could not be decoded
            raise ApiError(400, detail)
        if status in (404, 503):  # no such model (version) / no worker / queue full
            raise ApiError(503, f"the model is not ready ({detail}); retry shortly")
        if detail.startswith(("Worker died", "Worker scaled down")):
            # The worker running this request's batch died (killed, crashed, out of memory or over responseTimeout:
            # 500, or 507 after a SIGKILL) and TorchServe starts another (minWorkers). Not retried here: a request
            # that crashes the worker would crash the next one too, and its batch-mates with it.
            log.warning("TorchServe lost a worker mid-batch (%d: %s)", status, detail)
            raise ApiError(503, "the model worker restarted while handling this request; retry shortly")
        log.error("TorchServe answered %d: %s", status, detail)
        raise ApiError(500, f"the model server failed ({status}: {detail})")

    async def ready(self) -> tuple[bool, dict[str, Any] | str]:
        """(True, {"model", "version", "workers_ready"}) when the default version has a READY worker."""
        try:
            async with self.http.get(self.describe_url, timeout=aiohttp.ClientTimeout(total=5.0)) as r:
                status, text = r.status, await r.text()
        except (aiohttp.ClientError, TimeoutError) as e:
            return False, f"the model server is not reachable ({type(e).__name__})"
        if status != 200:
            return False, f"the model {self.model_name} is not registered ({status})"
        info = json.loads(text)[0]
        ready = sum(w.get("status") == "READY" for w in info.get("workers", []))
        status = {"model": info.get("modelName"), "version": info.get("modelVersion"), "workers_ready": ready}
        if not ready:
            return False, f"the model {self.model_name} v{status['version']} has no ready worker"
        return True, status


class ByteBudget:
    """A semaphore counted in bytes: hold(n) waits until n more bytes fit under the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, n: int, wait_s: float | None = None) -> AsyncIterator[None]:
        """Overloaded when the bytes do not fit within `wait_s` seconds (None: wait as long as it takes)."""
        n = min(n, self.limit)  # one image bigger than the budget still goes, alone
        async with self.changed:
            try:
                async with asyncio.timeout(wait_s):
                    await self.changed.wait_for(lambda: self.used + n <= self.limit)
            except TimeoutError:
                raise Overloaded from None
            self.used += n
        try:
            yield
        finally:
            async with self.changed:
                self.used -= n
                self.changed.notify_all()


def _detail(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300] or "no detail"
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:300]
    return str(body)[:300]
