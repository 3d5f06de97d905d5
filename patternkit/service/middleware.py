"""The one pure-ASGI middleware every request passes: ids, identity headers, the body limit,
hits, concurrency, metrics, the request-id log context, and the 500 of an unexpected error.

Fast routes (`patternkit.service.routes.fast_route`) are called from here directly
(`call_direct`), past the router and the exception layers. Nothing here allocates per request
what could be made once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from random import getrandbits

from fastapi import Request
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patternkit.logs import request_id_var
from patternkit.service.errors import BodyTooLarge
from patternkit.service.state import Endpoint, ServiceState

log = logging.getLogger("patternkit.service")
access = logging.getLogger("patternkit.access")

DRAIN_FACTOR = 4  # a refused body is read and dropped up to this many times MAX_BODY_BYTES
DRAIN_TIMEOUT_S = 10.0  # ... and for at most this long before the 413 goes out

OPS_PATHS = frozenset({"/health", "/ready", "/metadata", "/metrics", "/stats"})


class ServiceMiddleware:
    """Pure ASGI middleware: ids, identity headers, body limit, hits, concurrency, metrics."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self.limit = state.settings.max_body_bytes
        self.served_by = (b"x-served-by", state.served_by.encode())
        # fast routes are called from here only when nothing sits between this middleware and
        # the router's exception layer: a middleware added inside (e.g. S12's API key check)
        # must see every request, so then they are routed as usual
        self.direct = isinstance(app, ExceptionMiddleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        rid: str | None = None
        length: int | None = None
        waiting = False  # Expect: 100-continue: the body is not sent until it is read
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:128]
            elif key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif key == b"expect":
                waiting = value.lower() == b"100-continue"
        # random.getrandbits, not uuid4/os.urandom: a syscall per request costs ~10 us here
        rid = rid or f"{getrandbits(128):032x}"
        scope["patternkit.request_id"] = rid
        token = request_id_var.set(rid)
        extra = [(b"x-request-id", rid.encode("latin-1")), self.served_by]
        if state.version_header:
            extra.append(state.version_header)
        if state.headers:
            extra.extend(state.headers)
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                # a proxy passes its backend's identity through; add ours only when absent
                if any(k == b"x-served-by" for k, _ in headers):
                    headers.append(extra[0])
                else:
                    headers.extend(extra)
                message["headers"] = headers
            await send(message)

        path = scope["path"]
        method = scope["method"]
        counted = path not in OPS_PATHS
        if counted:
            state.hits += 1
            state.in_flight += 1
            if state.in_flight > state.max_in_flight:
                state.max_in_flight = state.in_flight
        start = time.perf_counter()
        try:
            if length is not None and length > self.limit:
                await self._refuse(length, rid, waiting, scope, receive, send_wrapper)
            else:
                if length is None and method in ("POST", "PUT", "PATCH"):
                    receive = self._limited(receive)
                fast = state.fast_routes.get((method, path)) if self.direct else None
                if fast is None:
                    await self.app(scope, receive, send_wrapper)
                else:
                    scope["route"] = fast[0]
                    await call_direct(fast[1], scope, receive, send_wrapper)
        except Exception as exc:
            # an unexpected error: logged with its traceback, answered in the JSON shape with
            # the request id and identity headers (unless the response had already begun)
            log.exception("unhandled error on %s %s", method, path,
                          extra={"route": route_label(scope), "status": 500})
            if started:
                raise
            response = state.error_reply(path, 500, f"internal error: {type(exc).__name__}", rid)
            await response(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            if counted:
                state.in_flight -= 1
            label = route_label(scope)
            count, latency = state.series(method, label, status)
            count.inc()
            latency.observe(elapsed)
            if access.isEnabledFor(logging.INFO):
                access.info("%s %s %d %.1f ms", method, path, status, elapsed * 1000,
                            extra={"route": label, "status": status,
                                   "latency_ms": round(elapsed * 1000, 3)})
            request_id_var.reset(token)

    async def _refuse(
        self, length: int, rid: str, waiting: bool, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """413 for a body whose Content-Length is past the limit, without handing it to the app.

        A client may send its whole body before it reads, and a connection closed on unread
        data is reset under the 413 (uvicorn closes at once when the client sent
        `Connection: close` or spoke HTTP/1.0): so the body is read and dropped first, when it
        is within the drain bound. Past the bound, or for a client waiting on
        `Expect: 100-continue` (it sends nothing until told), the 413 goes out unread.
        """
        bound = self.limit * DRAIN_FACTOR
        if not waiting and length <= bound:
            await drain(receive, bound)
        err = BodyTooLarge(self.limit, length)
        await self.state.error_reply(scope["path"], 413, err.detail, rid)(scope, receive, send)

    def _limited(self, receive: Receive) -> Receive:
        """Count a body sent without Content-Length and refuse it past the limit (its rest is
        discarded up to the drain bound)."""
        seen = 0
        limit = self.limit

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body", False):
                        await drain(receive, limit * DRAIN_FACTOR - seen)
                    raise BodyTooLarge(limit)
            return message

        return limited_receive


def route_label(scope: Scope) -> str:
    """The matched route's path template (the metrics label), or `unmatched`."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


async def drain(receive: Receive, upto: int) -> None:
    """Read and drop the rest of a request body until its end, `upto` bytes, DRAIN_TIMEOUT_S
    or a disconnect, whichever comes first. Nothing is kept: each chunk goes as it arrives."""
    seen = 0
    with suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while seen <= upto:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                seen += len(message.get("body", b""))


async def call_direct(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """Run a fast route's endpoint from the service middleware itself, past the router and the
    exception layers (their cost is as much as a proxy's own work per request); a known error
    goes to the app's own exception handler, as the exception middleware would send it, and an
    unexpected one to the middleware's 500."""
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except Exception as exc:
        handlers = scope["app"].exception_handlers
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
        if handler is None:
            raise
        response = await handler(request, exc)
    await response(scope, receive, send)
