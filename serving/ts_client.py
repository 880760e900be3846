"""The proxy's one pooled async client to TorchServe: predictions (inference API) and readiness (management API)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from serving.envelope import ApiError

log = logging.getLogger(__name__)

# At most this many requests in flight to TorchServe: well below its job_queue_size (config.properties), so a burst
# waits here (pool timeout below) instead of being refused with 503 by TorchServe.
MAX_IN_FLIGHT = 64
# ...and at most this many image bytes: TorchServe's Java frontend holds every queued request whole in its heap
# (vmargs -Xmx1g in config.properties), and 64 photos of 24 MiB would exhaust it.
MAX_IN_FLIGHT_BYTES = 128 * 2**20
OCTET = {"Content-Type": "application/octet-stream"}  # raw bytes; TorchServe would try to parse a form otherwise


class TorchServeClient:
    def __init__(self, inference_url: str, management_url: str, model_name: str, timeout_s: float = 90.0) -> None:
        self.model_name = model_name
        self.predict_url = f"{inference_url}/predictions/{model_name}"  # no version: the default version answers
        self.describe_url = f"{management_url}/models/{model_name}"
        self.budget = ByteBudget(MAX_IN_FLIGHT_BYTES)
        self.http = httpx.AsyncClient(
            # read timeout above TorchServe's responseTimeout (60 s), so TorchServe reports a stuck worker first
            timeout=httpx.Timeout(timeout_s, connect=5.0, pool=timeout_s),
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def predict(self, image: bytes) -> dict[str, Any]:
        """Image file bytes -> {"class", "index", "probability"}; ApiError with the status the client should see."""
        try:
            async with self.budget.hold(len(image)):
                r = await self.http.post(self.predict_url, content=image, headers=OCTET)
        except httpx.PoolTimeout as e:
            raise ApiError(503, "the service is overloaded (too many images in flight); retry shortly") from e
        except httpx.TimeoutException as e:
            raise ApiError(503, "the model did not answer in time; retry shortly") from e
        except httpx.TransportError as e:
            log.error("TorchServe unreachable: %s", e)
            raise ApiError(503, "the model server is not reachable; retry shortly") from e
        if r.status_code == 200:
            body = r.json()
            return {"class": str(body["class"]), "probability": float(body["probability"])}
        detail = _detail(r)
        if r.status_code == 400:  # the handler's per-request status: this image could not be decoded
            raise ApiError(400, detail)
        if r.status_code in (404, 503):  # no such model (version) / no worker / queue full
            raise ApiError(503, f"the model is not ready ({detail}); retry shortly")
        if detail.startswith(("Worker died", "Worker scaled down")):
            # The worker running this request's batch died (killed, crashed, out of memory or over responseTimeout:
            # 500, or 507 after a SIGKILL) and TorchServe starts another (minWorkers). Not retried here: a request
            # that crashes the worker would crash the next one too, and its batch-mates with it.
            log.warning("TorchServe lost a worker mid-batch (%d: %s)", r.status_code, detail)
            raise ApiError(503, "the model worker restarted while handling this request; retry shortly")
        log.error("TorchServe answered %d: %s", r.status_code, detail)
        raise ApiError(500, f"the model server failed ({r.status_code}: {detail})")

    async def ready(self) -> tuple[bool, dict[str, Any] | str]:
        """(True, {"model", "version", "workers_ready"}) when the default version has a READY worker."""
        try:
            r = await self.http.get(self.describe_url, timeout=5.0)
        except httpx.HTTPError as e:
            return False, f"the model server is not reachable ({type(e).__name__})"
        if r.status_code != 200:
            return False, f"the model {self.model_name} is not registered ({r.status_code})"
        info = r.json()[0]
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
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.limit)  # one image bigger than the budget still goes, alone
        async with self.changed:
            await self.changed.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            async with self.changed:
                self.used -= n
                self.changed.notify_all()


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300] or r.reason_phrase
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:300]
    return str(body)[:300]
