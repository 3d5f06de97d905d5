"""The service scaffold every HTTP process of every pattern is built from.

`create_service` returns a FastAPI app with the operational surface users expect of a serving
framework: `/health` (live), `/ready` (503 until the lifespan has loaded what it needs),
`/metadata`, `/metrics` (Prometheus), `/stats` (hits and peak concurrency, so tests can prove
whether a backend was contacted), `X-Request-ID` / `X-Served-By` / `X-Model-Version` headers,
one JSON error shape for every 4xx/5xx, and a request body limit (413, refused unbuffered:
a refused body is read and discarded, up to DRAIN_FACTOR times the limit, so that a client
that sends its whole body before reading still gets the 413 instead of a reset connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from random import getrandbits
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patternkit.settings import ServiceSettings

log = logging.getLogger("patternkit.service")

Endpoint = Callable[[Request], Awaitable[Response]]

DRAIN_FACTOR = 4  # a refused body is read and dropped up to this many times MAX_BODY_BYTES
DRAIN_TIMEOUT_S = 10.0  # ... and for at most this long before the 413 goes out

OPS_PATHS = frozenset({"/health", "/ready", "/metadata", "/metrics", "/stats"})
STATUS_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """Raise anywhere in a request to answer with the uniform JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        error: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error or STATUS_ERRORS.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class BodyTooLarge(StarletteHTTPException):
    """The 413 of a body past MAX_BODY_BYTES.

    An HTTPException, not an ApiError: FastAPI re-raises those from its body parsing, where
    any other exception raised while reading the body becomes a 400.
    """

    def __init__(self, limit: int, size: int | None = None) -> None:
        seen = f"{size} bytes" if size is not None else "more"
        super().__init__(
            413, f"request body of {seen} exceeds the limit of {limit} bytes (MAX_BODY_BYTES)"
        )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson (numpy arrays allowed)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    message: str,
    error: str | None = None,
    details: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "error": error or STATUS_ERRORS.get(status, "error"),
        "message": message,
        "details": details or [],
        "request_id": request_id,
    }
    return json_response(body, status, headers)


class ServiceState:
    """Mutable, per-app facts: readiness, model version, metadata, counters and metrics."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.served_by = settings.served_by
        self.ready = False
        self.metadata: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._version: str | None = None
        self.version_header: tuple[bytes, bytes] | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # added to every response (set_header)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight_gauge = Gauge(
            "http_requests_in_flight", "requests being served", registry=self.registry
        )

        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # (method, path) -> (route, endpoint) of the fast routes the middleware calls itself
        self.fast_routes: dict[tuple[str, str], tuple[Route, Endpoint]] = {}

    def series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The (counter, histogram) children for a request kind, looked up once."""
        key = (method, route, status)
        found = self._series.get(key)
        if found is None:
            found = (self.requests.labels(method, route, str(status)),
                     self.latency.labels(method, route))
            self._series[key] = found
        return found

    def set_header(self, name: str, value: str) -> None:
        """Send `name: value` on every response from now on (e.g. an artifact's lineage)."""
        key = name.lower().encode("latin-1")
        self.headers = [(k, v) for k, v in self.headers if k != key]
        self.headers.append((key, value.encode("latin-1")))

    @property
    def model_version(self) -> str | None:
        return self._version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        self._version = version
        self.version_header = (b"x-model-version", version.encode()) if version else None


def request_id(request: Request) -> str | None:
    """The id the middleware gave this request (taken from X-Request-ID or generated)."""
    rid = request.scope.get("patternkit.request_id")
    return str(rid) if rid else None


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


class ServiceMiddleware:
    """Pure ASGI middleware: ids, identity headers, body limit, hits, concurrency, metrics."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self.limit = state.settings.max_body_bytes
        self.served_by = (b"x-served-by", state.served_by.encode())
        # fast routes are called from here only when no other middleware sits inside this one
        # (one that checks API keys, say): calling past it would skip its check
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
        extra = [(b"x-request-id", rid.encode("latin-1")), self.served_by]
        if state.version_header:
            extra.append(state.version_header)
        if state.headers:
            extra.extend(state.headers)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
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
        counted = path not in OPS_PATHS
        if counted:
            state.hits += 1
            state.in_flight += 1
            state.in_flight_gauge.inc()
            if state.in_flight > state.max_in_flight:
                state.max_in_flight = state.in_flight
        start = time.perf_counter()
        try:
            if length is not None and length > self.limit:
                await self._refuse(length, rid, waiting, scope, receive, send_wrapper)
            else:
                if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                    receive = self._limited(receive)
                fast = state.fast_routes.get((scope["method"], path)) if self.direct else None
                if fast is None:
                    await self.app(scope, receive, send_wrapper)
                else:
                    scope["route"] = fast[0]
                    await call_direct(fast[1], scope, receive, send_wrapper)
        finally:
            if counted:
                state.in_flight -= 1
                state.in_flight_gauge.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            count, latency = state.series(scope["method"], label, status)
            count.inc()
            latency.observe(time.perf_counter() - start)

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
        await error_response(413, err.detail, request_id=rid)(scope, receive, send)

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


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error", "message", "details", "request_id"}`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.message, exc.error, exc.details, request_id(request), exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": "body", "msg": "invalid request"}
        message = f"{first['loc']}: {first['msg']}" if first["loc"] else first["msg"]
        return error_response(422, message, "validation_error", details, request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(
            exc.status_code, str(exc.detail), request_id=request_id(request),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, f"internal error: {type(exc).__name__}", request_id=request_id(request)
        )


def validation_error(exc: ValidationError, prefix: str = "body") -> RequestValidationError:
    """Turn a pydantic ValidationError (e.g. from model_validate_json) into FastAPI's 422."""
    errors = []
    for e in exc.errors(include_url=False):
        loc = (prefix, *e["loc"]) if e["type"] != "json_invalid" else (prefix,)
        errors.append({**e, "loc": loc})
    return RequestValidationError(errors)


def ops_routes_last(app: FastAPI) -> None:
    """Match the service's own routes before probes and docs: routes are tried in order."""
    routes = app.router.routes
    ops = {*OPS_PATHS, app.openapi_url, app.docs_url, app.redoc_url, "/docs/oauth2-redirect"}
    routes[:] = sorted(routes, key=lambda r: getattr(r, "path", None) in ops)


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run `coro` as a task for the life of the block (a lifespan), cancelled at its end."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def call_direct(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """Run a fast route's endpoint from the service middleware itself, past the router and the
    exception layers (their cost is as much as a proxy's own work per request); an error goes
    to the app's own exception handler, as the exception middleware would send it."""
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


def add_fast_route(
    app: FastAPI, path: str, endpoint: Endpoint, methods: Sequence[str] = ("POST",), **doc: Any
) -> None:
    """Serve `path` with a plain Starlette route, documented in OpenAPI all the same.

    FastAPI's per-request parameter handling costs about 50 us here, as much as the rest of a
    prediction: hot paths take the `Request` and return a `Response` themselves, and `doc`
    (APIRoute arguments: response_model, openapi_extra, tags, ...) describes them in /docs.
    """
    async def tagged(request: Request) -> Response:
        request.scope["route"] = route  # FastAPI's router does not set it for plain routes
        return await endpoint(request)

    route = Route(path, tagged, methods=list(methods))
    app.router.routes.append(route)
    app.state.doc_routes.append(APIRoute(path, endpoint, methods=list(methods), **doc))
    if "{" not in path:  # a fixed path: the service middleware calls it without routing
        state: ServiceState = app.state.service
        for method in methods:
            state.fast_routes[(method, path)] = (route, endpoint)


def fast_route(
    app: FastAPI, path: str, methods: Sequence[str] = ("POST",), **doc: Any
) -> Callable[[Endpoint], Endpoint]:
    """`add_fast_route` as a decorator: `@fast_route(app, "/predict", tags=["predict"])`."""

    def register(endpoint: Endpoint) -> Endpoint:
        add_fast_route(app, path, endpoint, methods, **doc)
        return endpoint

    return register


def install_openapi(app: FastAPI) -> None:
    """OpenAPI from the app's routes plus the documented fast routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title, version=app.version,
                routes=[*app.routes, *app.state.doc_routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


Lifespan = Callable[[FastAPI, ServiceState], AbstractAsyncContextManager[None]]


def create_service(
    settings: ServiceSettings,
    *,
    title: str | None = None,
    lifespan: Lifespan | None = None,
    version: str = "0.1.0",
    auto_ready: bool = True,
) -> FastAPI:
    """A FastAPI app with the scaffold installed; `lifespan` loads what the service needs.

    The service turns ready once `lifespan` has entered, or, with `auto_ready=False`, when the
    service sets `state.ready = True` itself (e.g. after a model loads in the background, so
    that `/health` answers while `/ready` is still 503). It turns unready at shutdown.
    """
    state = ServiceState(settings)

    @asynccontextmanager
    async def scaffold_lifespan(app: FastAPI) -> AsyncIterator[None]:
        ops_routes_last(app)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s [" + state.served_by + "] %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call is noise
        if lifespan is None:
            state.ready = True
            log.info("%s ready", state.served_by)
            yield
        else:
            async with lifespan(app, state):
                if auto_ready:
                    state.ready = True
                log.info("%s started (ready=%s)", state.served_by, state.ready)
                yield
        state.ready = False
        log.info("%s shutting down", state.served_by)

    app = FastAPI(title=title or settings.service_name, version=version, lifespan=scaffold_lifespan)
    app.state.service = state
    app.state.doc_routes = []
    install_openapi(app)
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, state=state)

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        return json_response({"status": "ok", "served_by": state.served_by})

    @app.get("/ready", tags=["ops"])
    async def ready() -> Response:
        if not state.ready:
            return error_response(503, f"{state.served_by} is not ready", "not_ready")
        return json_response({"status": "ready", "served_by": state.served_by})

    @app.get("/metadata", tags=["ops"])
    async def metadata() -> Response:
        return json_response(
            {
                "service": state.name,
                "served_by": state.served_by,
                "ready": state.ready,
                "model_version": state.model_version,
                **state.metadata,
            }
        )

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats", tags=["ops"])
    async def stats() -> Response:
        return json_response(
            {
                "served_by": state.served_by,
                "hits": state.hits,
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                **state.stats,
            }
        )

    return app
