"""Refuse request bodies over a size limit with 413, before reading them whole.

A declared Content-Length over the limit is refused before a byte of the body is read (uvicorn then discards the
rest, and a client that sent `Expect: 100-continue` never sends it). A chunked body is counted as it streams in
and refused as soon as it crosses the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.envelope import envelope
from serving.http_middleware import HttpMiddleware


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def too_large_message(limit: int) -> str:
    return (
        f"the request body is over the {limit // 2**20} MiB limit; send fewer or smaller images per request "
        "(base64 adds a third to the file size)"
    )


class BodyLimitMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        super().__init__(app)
        self.max_body = max_body

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await envelope(413, too_large_message(self.max_body))(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    # Raised inside the route's body read: the app's handler for it answers 413.
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, limited_receive, send)
