"""The proxy: the product's HTTP API (SPEC.md, "POST /autotable/predict") in front of TorchServe's inference API.

    uvicorn is started by client_infer.py; the OpenAPI description is at GET /openapi.json (browsable at /docs).

Only these routes exist on the public port; TorchServe's management and metrics APIs stay on loopback.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.body_limit import BodyLimitMiddleware, BodyTooLarge, too_large_message
from serving.envelope import ApiError, Envelope, PredictRequest, envelope, prediction
from serving.payload import read_predict_request
from serving.timeouts import BodyDeadlineMiddleware
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


def create_app(inference_url: str, management_url: str, model_name: str, max_body: int = MAX_BODY) -> FastAPI:
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

    @app.post("/autotable/predict", response_model=Envelope, responses=_ERRORS, openapi_extra=_REQUEST_BODY)
    async def predict(request: Request) -> JSONResponse:
        """Classify one image (`content` a base64 string) or several (a list: one result per image, in order)."""
        req = await read_predict_request(request, max_body)  # a bad request is a 400 even while loading
        if request.app.state.loading:
            raise ApiError(503, f"the model is not ready: {request.app.state.loading}; retry shortly")
        ts: TorchServeClient = request.app.state.ts
        # All images at once: TorchServe's batching (batchSize 8, maxBatchDelay 10 ms) runs them together.
        results = await asyncio.gather(*(ts.predict(image) for image in req.images), return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, ApiError):
                where = "content" if len(results) == 1 else f"content[{i}]"
                raise ApiError(r.code, _with_fix(f"{where}: {r.msg}") if r.code == 400 else r.msg)
            if isinstance(r, BaseException):
                raise r
        data = [prediction(r["class"], r["probability"], req.need_visual_data, req.need_visual_result) for r in results]
        return envelope(200, "ok", data)

    @app.get("/health", response_model=Envelope, responses={503: _ERRORS[503]})
    async def health(request: Request) -> JSONResponse:
        """200 while the model's default version has a ready worker, else 503 (for load balancers)."""
        if request.app.state.loading:
            return envelope(503, f"the model is not ready: {request.app.state.loading}")
        ready, info = await request.app.state.ts.ready()
        return envelope(200, "ok", [info]) if ready else envelope(503, str(info))

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

    return app


def _with_fix(msg: str) -> str:
    # The handler's decode errors say what is wrong; add how to fix it where they don't.
    return msg if "send" in msg or "downscale" in msg else f"{msg}; send a complete jpg, png, bmp, webp or tif file"
