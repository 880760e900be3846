"""Deadlines for slow clients: a request head and body that trickle in (or never come) cannot hold a connection.

uvicorn closes only idle keep-alive connections (5 s). Without these, a client that connects and sends nothing,
or sends its headers or body a byte at a time (slowloris), would keep its connection and the proxy's buffers
forever. Other clients are never blocked by one (every connection is its own coroutine); this bounds what many
slow ones can hold. The limits follow Apache's `RequestReadTimeout header=20-40,MinRate=500 body=20,MinRate=500`
in spirit: a fixed time for the head, and for the body a grace period that grows with the bytes received.
"""

from __future__ import annotations

import asyncio

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.envelope import envelope

HEAD_TIMEOUT_S = 10.0  # request line + headers (a few hundred bytes: one packet for any real client)
BODY_GRACE_S = 20.0  # the body's first seconds...
BODY_MIN_RATE = 32 * 1024  # ...then at least this many bytes/s on average (a 32 MiB body may take ~17 min)


def _timeout_message(what: str) -> str:
    return f"the request {what} did not arrive in time; send the whole request at once (after connecting)"


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head, counted from the connection or last response.

    A connection that sent nothing by then is closed; one that sent part of a head gets a 408 envelope first.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        self._arm()  # before super(): it may start a pipelined request, which must not inherit a stale deadline
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self._head_timer is not None and self.cycle is not self._waiting_after:
            self._cancel()  # a new request's head is in; its body has BodyDeadlineMiddleware's deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._cancel()
        self._waiting_after = self.cycle  # the head is complete once uvicorn has started a newer cycle
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def _cancel(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.cycle is not self._waiting_after:
            return
        partial = self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]
        if partial and self.conn.our_state is h11.IDLE:
            body = envelope(408, _timeout_message("headers")).body  # the same JSON as every other answer
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            self.transport.write(
                self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
            )
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.logger.info("closing %s: no complete request head within %.0f s", self.client, HEAD_TIMEOUT_S)
        self.transport.close()


class BodyTimeout(Exception):
    pass


class BodyDeadlineMiddleware:
    """408 (envelope, connection closed) when a body arrives slower than BODY_GRACE_S + bytes / BODY_MIN_RATE."""

    def __init__(self, app: ASGIApp, grace_s: float = BODY_GRACE_S, min_rate: float = BODY_MIN_RATE) -> None:
        self.app = app
        self.grace_s = grace_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
