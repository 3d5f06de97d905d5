"""The proxy of S12: one address in front of the servers stamped from the template.

`/models/{name}/{path}` goes to the server deployed as `name` (MODEL_URLS maps names to base
URLs), with the body, query, request id and the caller's `X-API-Key` passed on: each server
checks its own key, the proxy holds none. `GET /models` lists the names. An unknown name is a
404 listing the known ones; an unreachable or slow server is a 502 / 504 naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import ServiceSettings

PASS_BACK = ("content-type", "x-served-by", "x-model-version", "www-authenticate")


class ProxySettings(ServiceSettings):
    service_name: str = "proxy"
    model_urls: str = Field(..., description="name=base_url pairs, comma-separated")
    backend_timeout_ms: int = Field(5000, gt=0, description="per call to a model server")


def parse_model_urls(value: str) -> dict[str, str]:
    """`iris_lr=http://a:1,wine=http://b:2` -> {"iris_lr": "http://a:1", "wine": ...}."""
    routes: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        name, eq, url = pair.partition("=")
        if not eq or not name.strip() or not url.strip():
            raise ValueError(f"MODEL_URLS: expected name=url, got {pair!r}")
        routes[name.strip()] = url.strip().rstrip("/")
    if not routes:
        raise ValueError("MODEL_URLS names no model server")
    return routes


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()  # type: ignore[call-arg]
    routes = parse_model_urls(cfg.model_urls)
    timeout_s = cfg.backend_timeout_ms / 1000
    http: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        http["client"] = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 1.0))
        )
        state.metadata["models"] = routes
        yield
        await http["client"].aclose()

    app = create_service(cfg, title="serving template: proxy", lifespan=lifespan)

    @app.get("/models", tags=["models"])
    async def models() -> Response:
        return json_response({"models": sorted(routes)})

    @app.api_route("/models/{name}/{path:path}", methods=["GET", "POST"], tags=["models"])
    async def forward(name: str, path: str, request: Request) -> Response:
        base = routes.get(name)
        if base is None:
            raise ApiError(404, f"no model server named {name!r}; known: {', '.join(routes)}")
        url = f"{base}/{path}" + (f"?{request.url.query}" if request.url.query else "")
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        headers["x-request-id"] = request_id(request) or ""
        if "x-api-key" in request.headers:
            headers["x-api-key"] = request.headers["x-api-key"]
        try:
            reply = await http["client"].request(
                request.method, url, content=await request.body(), headers=headers
            )
        except httpx.TimeoutException:
            raise ApiError(504, f"model server {name} ({base}) did not answer within "
                                f"{cfg.backend_timeout_ms} ms", "backend_timeout") from None
        except httpx.TransportError as exc:
            raise ApiError(502, f"model server {name} ({base}) is unreachable: "
                                f"{type(exc).__name__}", "backend_unavailable") from None
        passed = {k: reply.headers[k] for k in PASS_BACK if k in reply.headers}
        return Response(reply.content, status_code=reply.status_code, headers=passed)

    return app
