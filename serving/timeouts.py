"""Deadlines for slow clients: a request head and body that trickle in (or never come) cannot hold a connection.

uvicorn closes only idle keep-alive connections after a response (5 s). Without these, a client that connects and
sends nothing, or sends its headers or body a byte at a time (slowloris), would keep its connection and the
proxy's buffers forever. Other clients are never blocked by one (every connection is its own coroutine); this
bounds what many slow ones can hold. The limits follow Apache's
`RequestReadTimeout header=20-40,MinRate=500 body=20,MinRate=500` in spirit: a fixed time for the head, and for
the body a grace period that grows with the bytes received.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.envelope import envelope
from serving.http_middleware import HttpMiddleware

log = logging.getLogger(__name__)
HEAD_TIMEOUT_S = 10.0  # request line + headers (a few hundred bytes: one packet for any real client)
BODY_GRACE_S = 20.0  # the body's first seconds...
BODY_MIN_RATE = 32 * 1024  # ...then at least this many bytes/s on average (a 32 MiB body may take ~17 min)


def _timeout_message(what: str) -> str:
    return f"the request {what} did not arrive in time; send the whole request at once (after connecting)"


class HeadDeadline(asyncio.Protocol):
    """uvicorn's httptools protocol, wrapped (not subclassed: it reads none of its state): a deadline for the
    request head, from the connection's start and from the first byte of each later request.

    The wrapper follows the byte stream with its own httptools parser (heads only, microseconds) and tells where
    a head begins and ends. A connection that sends nothing within HEAD_TIMEOUT_S of connecting is closed; one
    whose head is still incomplete HEAD_TIMEOUT_S after its first byte gets a 408 envelope, then is closed. An idle
    keep-alive connection after a response is uvicorn's own `timeout_keep_alive`; a slow body is
    BodyDeadlineMiddleware's. Pass the class as `uvicorn.Config(http=HeadDeadline)`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.inner = HttpToolsProtocol(*args, **kwargs)
        self.loop = kwargs.get("_loop") or asyncio.get_event_loop()
        # Its own callbacks object: httptools looks callbacks up by name, and this class forwards unknown names to
        # uvicorn's protocol, whose on_url, on_body... must never be called twice.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(_HeadEvents(self))
        self.timer: asyncio.TimerHandle | None = None
        self.in_head = False  # a head has begun and is not complete
        self.refused = False  # an HTTP version this service does not speak (httptools accepts HTTP/0.9)
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol, forwarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()
        self.inner.connection_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self._stop_following()  # uvicorn answers 400 and closes; nothing left to time
            except httptools.HttpParserUpgrade:
                self._stop_following()
        if self.refused:
            return  # answered and closing; uvicorn never sees it
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # uvicorn's server calls these on its protocols (graceful shutdown)
    def shutdown(self) -> None:
        self._cancel()
        self.inner.shutdown()

    def __getattr__(self, name: str) -> Any:  # anything else uvicorn asks of its protocol
        return getattr(self.inner, name)

    # what the wrapper's own parser reports (through _HeadEvents)
    def on_message_begin(self) -> None:
        self.in_head = True
        self._arm()

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._cancel()
        if self.parser is not None and self.parser.get_http_version() not in ("1.0", "1.1"):
            # "GET /" alone is HTTP/0.9 to httptools, and uvicorn would route it: refuse what is not HTTP/1.x.
            self.refused = True
            self._stop_following()
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 25\r\nconnection: close\r\n\r\nonly HTTP/1.x is served\r\n"
                )
                self.transport.close()

    def _arm(self) -> None:
        self._cancel()
        self.timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _stop_following(self) -> None:
        self.parser = None
        self.in_head = False
        self._cancel()

    def _head_timeout(self) -> None:
        self.timer = None
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.in_head:  # part of a head came: say why it is closed
            body = envelope(408, _timeout_message("headers")).body
            t.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
        log.info("closing a connection: no complete request head within %.0f s", HEAD_TIMEOUT_S)
        t.close()


class _HeadEvents:
    """The two httptools callbacks HeadDeadline needs, and no others."""

    def __init__(self, owner: HeadDeadline) -> None:
        self.on_message_begin = owner.on_message_begin
        self.on_headers_complete = owner.on_headers_complete


class BodyTimeout(Exception):
    pass


class BodyDeadlineMiddleware(HttpMiddleware):
    """408 (envelope, connection closed) when a body arrives slower than BODY_GRACE_S + bytes / BODY_MIN_RATE."""

    def __init__(self, app: ASGIApp, grace_s: float = BODY_GRACE_S, min_rate: float = BODY_MIN_RATE) -> None:
        super().__init__(app)
        self.grace_s = grace_s
        self.min_rate = min_rate

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        start, received, done, responded = loop.time(), 0, False, False

        async def timed_receive() -> Message:
            nonlocal received, done
            if done:  # the body is in: later receives wait for a disconnect, which has no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(start + self.grace_s + received / self.min_rate):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            received += len(message.get("body", b""))
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout:
            if responded:
                raise
            response = envelope(408, _timeout_message(f"body ({received} bytes so far)"))
            response.headers["connection"] = "close"  # uvicorn then closes the socket instead of reading on
            await response(scope, receive, send)
