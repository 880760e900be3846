"""The proxy: the product's HTTP API (SPEC.md, "POST /autotable/predict") in front of TorchServe's inference API.

    uvicorn is started by client_infer.py; the OpenAPI description is at GET /openapi.json (browsable at /docs).

Only these routes exist on the public port; TorchServe's management and metrics APIs stay on loopback.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from serving.body_limit import BodyLimitMiddleware, BodyTooLarge, too_large_message
from serving.envelope import ApiError, Envelope, PredictRequest, envelope, prediction
from serving.payload import read_predict_request
from serving.timeouts import BodyDeadlineMiddleware, BodyTimeout
from serving.ts_client import TorchServeClient

log = logging.getLogger(__name__)

MAX_BODY = 32 * 2**20  # bytes per request body: a 24 MiB image file after base64, or several smaller ones

_FORM = PredictRequest.model_json_schema()
_MULTIPART = {
    "type": "object",
    "required": ["content"],
    "properties": {
        "content": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "image file(s)"},
        "need_visual_data": {"type": "boolean", "default": True},
        "need_visual_result": {"type": "boolean", "default": True},
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _FORM},
            "application/x-www-form-urlencoded": {"schema": _FORM},
            "multipart/form-data": {"schema": _MULTIPART},
        },
    }
}
_ERRORS = {
    code: {"model": Envelope, "description": text}
    for code, text in {
        400: "bad request or undecodable image; `msg` says what to fix",
        413: f"request body over {MAX_BODY // 2**20} MiB",
        500: "unexpected failure",
        503: "the model is not ready or overloaded; retry",
    }.items()
}


class ProxyApp:
    """The ASGI app uvicorn serves: the two API routes answered directly -- the hot path, no router, no dependency
    injection, no exception middleware: each costs CPU on every request -- and everything else (the OpenAPI
    description, /docs, the 404 and 405 envelopes, lifespan) by the FastAPI app, which describes the same routes.
    `state` and `router` are the FastAPI app's (client_infer.py sets `state.loading`)."""

    def __init__(self, api: FastAPI, max_body: int) -> None:
        self.api = api
        self.state = api.state
        self.router = api.router
        # The same middlewares as the FastAPI app's, in the same order: deadline outside, size limit inside.
        self._predict = BodyDeadlineMiddleware(BodyLimitMiddleware(self._predict_route, max_body))
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path == "/autotable/predict" and method == "POST":
                return await self._predict(scope, receive, send)
            if path == "/health" and method == "GET":
                return await (await health(self.state))(scope, receive, send)
        await self.api(scope, receive, send)

    async def _predict_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await predict(Request(scope, receive), self.state, self.max_body)
        except ApiError as e:
            response = envelope(e.code, e.msg)
        except BodyTooLarge as e:
            response = envelope(413, too_large_message(e.limit))
        except BodyTimeout:
            raise  # BodyDeadlineMiddleware answers 408
        except Exception as e:
            log.exception("unexpected error on POST /autotable/predict")
            response = envelope(500, f"internal error ({type(e).__name__}); the service log has the details")
        await response(scope, receive, send)


async def predict(request: Request, state: State, max_body: int) -> JSONResponse:
    """Classify one image (`content` a base64 string) or several (a list: one result per image, in order)."""
    req = await read_predict_request(request, max_body)  # a bad request is a 400 even while loading
    if state.loading:
        raise ApiError(503, f"the model is not ready: {state.loading}; retry shortly")
    ts: TorchServeClient = state.ts
    if len(req.images) == 1:  # the common case: no gather, no extra task
        results: list = [await _one(ts, req.images[0], "content")]
    else:
        # All images at once: TorchServe's batching runs them together.
        results = await asyncio.gather(*(_one(ts, image, f"content[{i}]") for i, image in enumerate(req.images)))
    data = [prediction(r["class"], r["probability"], req.need_visual_data, req.need_visual_result) for r in results]
    return envelope(200, "ok", data)


async def _one(ts: TorchServeClient, image: bytes, where: str) -> dict:
    try:
        return await ts.predict(image)
    except ApiError as e:
        raise ApiError(e.code, _with_fix(f"{where}: {e.msg}") if e.code == 400 else e.msg) from e


async def health(state: State) -> JSONResponse:
    """200 while the model's default version has a ready worker, else 503 (for load balancers)."""
    if state.loading:
        return envelope(503, f"the model is not ready: {state.loading}")
    ready, info = await state.ts.ready()
    return envelope(200, "ok", [info]) if ready else envelope(503, str(info))


def create_app(inference_url: str, management_url: str, model_name: str, max_body: int = MAX_BODY) -> ProxyApp:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ts = TorchServeClient(inference_url, management_url, model_name)
        yield
        await app.state.ts.aclose()

    app = FastAPI(
        title="SimSiam image classifier",
        summary=f"Top-1 class of images with the SimSiam model {model_name}, served by TorchServe",
        version="1.0",
        lifespan=lifespan,
        redoc_url=None,
        # No 307 to the slash-less path: its Location would echo the client's Host header (an open redirect), and a
        # wrong path should get the 404 envelope naming the right one.
        redirect_slashes=False,
    )
    # While client_infer.py waits for TorchServe to load the model, the API already listens and answers 503 with
    # this reason (SPEC: "503 while the model is not ready") instead of refusing connections.
    app.state.loading = None
    app.add_middleware(BodyLimitMiddleware, max_body=max_body)
    app.add_middleware(BodyDeadlineMiddleware)  # a body trickled in slower than it allows gets 408

    # Answered by ProxyApp; declared here so that the OpenAPI description and /docs show them.
    @app.post("/autotable/predict", response_model=Envelope, responses=_ERRORS, openapi_extra=_REQUEST_BODY)
    async def predict_route(request: Request) -> JSONResponse:
        """Classify one image (`content` a base64 string) or several (a list: one result per image, in order)."""
        return await predict(request, request.app.state, max_body)

    @app.get("/health", response_model=Envelope, responses={503: _ERRORS[503]})
    async def health_route(request: Request) -> JSONResponse:
        """200 while the model's default version has a ready worker, else 503 (for load balancers)."""
        return await health(request.app.state)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return envelope(e.code, e.msg)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, e: BodyTooLarge) -> JSONResponse:
        return envelope(413, too_large_message(e.limit))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; the API is POST /autotable/predict and GET /health"
        elif e.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}; use {(e.headers or {}).get('Allow', 'POST')}"
        else:
            msg = str(e.detail)
        response = envelope(e.status_code, msg)
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return envelope(400, f"bad request: {e.errors()}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return envelope(500, f"internal error ({type(e).__name__}); the service log has the details")

    return ProxyApp(app, max_body)


def _with_fix(msg: str) -> str:
    # The handler's decode errors say what is wrong; add how to fix it where they don't.
    return msg if "send" in msg or "downscale" in msg else f"{msg}; send a complete jpg, png, bmp, webp or tif file"
