"""Calling backends from a proxy or web app: one pooled aiohttp session, timeouts, clear errors.

`Upstream` forwards a request body to a backend URL, propagates `X-Request-ID`, and turns a
timeout into a 504 and an unreachable backend into a 502, both naming the backend, so that no
proxy in the catalogue answers a backend failure with a 500. `RoundRobin` spreads calls over
replicas and skips one that refuses connections.

aiohttp, not httpx, because a hop is on every request: here an `httpx.AsyncClient` call costs
~3 ms and tops out near 220 req/s at 16 concurrent calls, an aiohttp one ~0.7 ms and ~1,300
req/s (../shared/FACTS.md). httpx stays in tests and scripts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated

import aiohttp
import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from patternkit.service import ApiError, from_state, request_id

PASS_HEADERS = frozenset({"content-type", "www-authenticate", "retry-after"})


def passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The backend's reply headers a proxy passes on: its `x-*` ones (identity, version,
    lineage, cache) and a few standard ones; not its request id, which is the caller's."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        k = key.lower()
        if k in PASS_HEADERS or (k.startswith("x-") and k != "x-request-id"):
            out[k] = value
    return out


def error_message(body: bytes) -> str:
    """The `message` of a service's JSON error body (the `error` of an Open Inference Protocol
    one), else the start of the body as text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        if "message" in parsed:
            return str(parsed["message"])
        if isinstance(parsed.get("error"), str):
            return str(parsed["error"])
    return body[:200].decode("utf-8", "replace")


def failure_cause(exc: aiohttp.ClientError) -> str:
    """What went wrong on the wire, in words a user reads in a 502 (not a class name)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        return "connection refused" if refused else f"cannot connect ({exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
                  | aiohttp.ClientPayloadError):
        return "connection dropped"
    return type(exc).__name__


def path_as_is(request: Request) -> str:
    """The request's path and query string, to forward unchanged to a backend."""
    query: bytes = request.scope.get("query_string", b"")
    path: str = request.scope["path"]
    return f"{path}?{query.decode('latin-1')}" if query else path


def split_urls(value: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("no backend URL given")
    return urls


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    backend: str

    def json(self) -> object:
        return orjson.loads(self.body)

    def response(self) -> Response:
        """Pass the backend's reply through (status, body and identity headers)."""
        return Response(self.body, status_code=self.status, headers=self.headers)


class Upstream:
    """A pooled async HTTP client for one or more backends; open it in the lifespan.

    The session is made on first use (inside the event loop) and closed by `aclose()` or
    `async with`. Idle pooled connections are dropped after KEEPALIVE_S, before uvicorn's own
    5 s keep-alive ends them, so a call never lands on a connection the backend is closing.
    """

    KEEPALIVE_S = 3.0

    def __init__(self, timeout_s: float, max_connections: int = 100) -> None:
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._timeout = self._client_timeout(timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _client_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 1.0))

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0,
                keepalive_timeout=self.KEEPALIVE_S,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        rid: str | None = None,
        timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
        name: str | None = None,
    ) -> Reply:
        """One call; `name` (e.g. the backend's role) goes into error messages with the URL."""
        sent = {"content-type": "application/json", **(headers or {})}
        if rid:
            sent["x-request-id"] = rid
        timeout = self._timeout if timeout_s is None else self._client_timeout(timeout_s)
        try:
            async with self.session.request(
                method, url, data=body, headers=sent, timeout=timeout
            ) as resp:
                content = await resp.read()
                return Reply(resp.status, content, passed_headers(resp.headers), url)
        except TimeoutError:  # aiohttp's timeouts subclass it (asyncio.TimeoutError on 3.11)
            who = f"{name} at {url}" if name else url
            limit = self.timeout_s if timeout_s is None else timeout_s
            raise ApiError(
                504, f"backend {who} did not answer within {limit * 1000:.0f} ms",
                "backend_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            who = f"{name} at {url}" if name else url
            raise ApiError(
                502, f"backend {who} is unreachable: {failure_cause(exc)}", "backend_unavailable"
            ) from None

    async def forward(self, request: Request, url: str, timeout_s: float | None = None) -> Reply:
        """Send the incoming request's body to `url` with the same method."""
        return await self.call(
            request.method, url, body=await request.body(), rid=request_id(request),
            timeout_s=timeout_s,
        )


UpstreamDep = Annotated[Upstream, Depends(from_state("upstream"))]
"""A route's `upstream`: the client `create_service(upstreams={"upstream": ...})` opened."""


class RoundRobin:
    """Cycle over backend base URLs."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._cycle = itertools.cycle(range(len(urls)))

    def order(self) -> list[str]:
        """All backends, starting with the next one in turn (for failover)."""
        start = next(self._cycle)
        return self.urls[start:] + self.urls[:start]

    async def forward(self, upstream: Upstream, request: Request, path: str) -> Reply:
        """Forward to the next backend; on a refused connection try the others in turn."""
        last: ApiError | None = None
        for base in self.order():
            try:
                return await upstream.forward(request, base + path)
            except ApiError as exc:
                if exc.error != "backend_unavailable":
                    raise
                last = exc
        assert last is not None
        raise ApiError(502, f"no backend is reachable; last: {last.message}", last.error)
