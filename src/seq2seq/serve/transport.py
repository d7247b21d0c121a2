"""The transport under the app: the request body limit (ASGI middleware) and uvicorn's h11
protocol with the connection guard, and `serve`, which runs them."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException

from seq2seq.config import DEFAULT_DEVICE, DEFAULT_PRECISION
from seq2seq.errors import check_integer
from seq2seq.serve.limits import Batching, Guard, Limits

LINGER_S = 2.0  # how long the rest of a refused body is read and dropped before closing

# The rest of a refused body is not read: the connection closes after the answer, or a
# client trickling bytes would hold it with no timer running.
CLOSE = {"Connection": "close"}


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app parses it,
    one whose next chunk takes over `body_timeout_s` gets 408; both close the connection.

    Checks Content-Length up front and counts streamed (chunked) bodies as they arrive.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int,
                 body_timeout_s: float = Guard.body_timeout_s):
        self.app, self.max_bytes, self.body_timeout_s = app, max_bytes, body_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if int(length or 0) > self.max_bytes:
            return await self._send_413(send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within "
                                         f"{self.body_timeout_s:g} s", CLOSE) from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message, CLOSE)
            return message

        await self.app(scope, counted, send)

    @property
    def message(self) -> str:
        return (f"request body is over the limit of {self.max_bytes} bytes "
                "(--max-body-bytes)")

    async def _send_413(self, send: Callable) -> None:
        body = json.dumps({"detail": self.message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8000,
          device: str = DEFAULT_DEVICE, precision: str = DEFAULT_PRECISION,
          limits: Limits | None = None, batching: Batching | None = None,
          guard: Guard | None = None, shortlist: str | None = None) -> None:
    """Load the checkpoints (several = an ensemble), with a vocabulary `shortlist` file if
    given (`Translator.load`), and serve them until interrupted.

    An entry point: it tunes the process for decoding (`seq2seq.device.setup_process`)."""
    import uvicorn

    from seq2seq.device import resolve_device, setup_process
    from seq2seq.serve.app import create_app  # the app's middleware comes from here
    from seq2seq.translator import Translator

    check_integer("port", port, 1, 65535, " (--port)")
    setup_process("decode", resolve_device(device))
    translator = Translator.load(models, device=device, precision=precision,
                                 shortlist=shortlist)
    app = create_app(translator, limits, batching, [str(m) for m in models], guard)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="info")).run()


def uvicorn_config(app: FastAPI, **kwargs):
    """uvicorn's config for `app`, with the connection guard of `app.state.guard`."""
    import uvicorn

    guard = app.state.guard
    protocol = type("GuardedProtocol", (_guarded_protocol(),),
                    {"max_connections": guard.max_connections,
                     "header_timeout_s": guard.header_timeout_s})
    return uvicorn.Config(app, http=protocol, timeout_keep_alive=guard.header_timeout_s,
                          **kwargs)


@functools.cache
def _guarded_protocol():
    """uvicorn's h11 protocol, plus: at `max_connections` a new connection takes the place
    of the one that has waited longest for a request head (idle after its last response,
    or slow to send its head), or is closed on arrival if every one has a request under
    way, so idle sockets cannot lock out clients that send requests; one that has not sent
    a whole request head within `header_timeout_s` of connecting (or of its last response)
    is closed (slow or partial headers); and one closed with its request body still
    arriving lingers (see `_Lingering`)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        max_connections = Guard.max_connections
        header_timeout_s = Guard.header_timeout_s
        _head_timer: asyncio.TimerHandle | None = None  # set while waiting for a head
        _waiting_since = 0.0

        def connection_made(self, transport) -> None:
            if len(self.connections) >= self.max_connections and not self._close_longest_idle():
                transport.close()
                self.transport = None
                return
            super().connection_made(_Lingering(transport, self))
            self._arm()

        def _close_longest_idle(self) -> bool:
            """Close the connection that has waited longest for a request head; False if
            every connection has a request under way."""
            idle = [c for c in self.connections if getattr(c, "_head_timer", None)]
            if not idle:
                return False
            longest = min(idle, key=lambda c: c._waiting_since)
            longest._disarm()
            longest.transport.close()
            return True

        def connection_lost(self, exc) -> None:
            if self.transport is None:  # refused on arrival
                return
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.lingering:  # the rest of a refused body
                return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_since = self.loop.time()
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    class _Lingering:
        """The connection's transport, except when it is closed while the client is still
        sending a request body (after a 413 or 408): closing with unread data would reset
        the connection and the client could lose the answer already sent. So it half-closes
        instead, the protocol drops what still arrives, and it closes after LINGER_S."""

        def __init__(self, transport, protocol: Guarded):
            self._transport, self._protocol = transport, protocol
            self.lingering = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

        def close(self) -> None:
            if (self.lingering or self._protocol.conn.their_state is not h11.SEND_BODY
                    or not self._transport.can_write_eof()):
                self._transport.close()
                return
            self.lingering = True
            self._transport.write_eof()
            self._transport.resume_reading()
            self._protocol.loop.call_later(LINGER_S, self._transport.close)

        def is_closing(self) -> bool:
            return self.lingering or self._transport.is_closing()

    return Guarded
