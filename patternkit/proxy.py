"""Calling backends from a proxy or web app: one pooled httpx client, timeouts, clear errors.

`Upstream` forwards a request body to a backend URL, propagates `X-Request-ID`, and turns a
timeout into a 504 and an unreachable backend into a 502, both naming the backend, so that no
proxy in the catalogue answers a backend failure with a 500. `RoundRobin` spreads calls over
replicas and skips one that refuses connections.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import httpx
import orjson
from fastapi import Request
from fastapi.responses import Response

from patternkit.service import ApiError, request_id

PASS_HEADERS = frozenset({"content-type", "www-authenticate", "retry-after"})


def passed_headers(headers: httpx.Headers) -> dict[str, str]:
    """The backend's reply headers a proxy passes on: its `x-*` ones (identity, version,
    lineage, cache) and a few standard ones; not its request id, which is the caller's."""
    return {
        k: v for k, v in headers.items()
        if k in PASS_HEADERS or (k.startswith("x-") and k != "x-request-id")
    }


def error_message(body: bytes) -> str:
    """The `message` of a service's JSON error body, else the start of the body as text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "message" in parsed:
        return str(parsed["message"])
    return body[:200].decode("utf-8", "replace")


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
    """A pooled async HTTP client for one or more backends; open it in the lifespan."""

    def __init__(self, timeout_s: float, max_connections: int = 100) -> None:
        self.timeout_s = timeout_s
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 1.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

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
        who = f"{name} at {url}" if name else url
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else httpx.Timeout(timeout_s)
        try:
            resp = await self.client.request(
                method, url, content=body, headers=sent, timeout=timeout
            )
        except httpx.TimeoutException:
            limit = self.timeout_s if timeout_s is None else timeout_s
            raise ApiError(
                504, f"backend {who} did not answer within {limit * 1000:.0f} ms",
                "backend_timeout",
            ) from None
        except httpx.TransportError as exc:
            raise ApiError(
                502, f"backend {who} is unreachable: {type(exc).__name__}", "backend_unavailable"
            ) from None
        return Reply(resp.status_code, resp.content, passed_headers(resp.headers), url)

    async def forward(self, request: Request, url: str, timeout_s: float | None = None) -> Reply:
        """Send the incoming request's body to `url` with the same method."""
        return await self.call(
            request.method, url, body=await request.body(), rid=request_id(request),
            timeout_s=timeout_s,
        )


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
