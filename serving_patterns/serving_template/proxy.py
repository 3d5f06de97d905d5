"""The proxy of S12: one address in front of the servers stamped from the template.

`/models/{name}/{path}` goes to the server deployed as `name` (MODEL_URLS maps names to base
URLs), with the body, query, request id and the caller's `X-API-Key` passed on: each server
checks its own key, the proxy holds none. `GET /models` lists the names. An unknown name is a
404 listing the known ones; an unreachable or slow server is a 502 / 504 naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from patternkit.backends import parse_backends
from patternkit.proxy import Upstream, UpstreamDep
from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import ServiceSettings


class ProxySettings(ServiceSettings):
    service_name: str = "proxy"
    model_urls: str = Field(..., description="name=base_url pairs, comma-separated")
    backend_timeout_ms: int = Field(5000, gt=0, description="per call to a model server")


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    routes = {b.name: b.url for b in parse_backends(cfg.model_urls)}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        state.metadata["models"] = routes
        yield

    app = create_service(cfg, title="serving template: proxy", lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.backend_timeout_ms / 1000)})

    @app.get("/models", tags=["models"])
    async def models() -> Response:
        return json_response({"models": sorted(routes)})

    @app.api_route(
        "/models/{name}/{path:path}", methods=["POST"], tags=["models"],
        operation_id="forward_post", responses={404: {}, 502: {}, 504: {}},
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "object", "description": "the named server's own body"},
                "example": {"instances": [{"sepal_length": 5.1, "sepal_width": 3.5,
                                           "petal_length": 1.4, "petal_width": 0.2}]},
            }}},
            "responses": {"200": {"content": {"application/json": {"example": {
                "model": "iris_lr", "version": "1.0.0",
                "predictions": [{"label": "setosa", "class_id": 0, "probabilities": {
                    "setosa": 0.978716, "versicolor": 0.021283, "virginica": 1e-06}}],
                "served_by": "iris_lr", "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9",
                "template_version": "2.0.0"}}}}},
        },
    )
    @app.api_route("/models/{name}/{path:path}", methods=["GET"], tags=["models"],
                   operation_id="forward_get", responses={404: {}, 502: {}, 504: {}})
    async def forward(name: str, path: str, request: Request, upstream: UpstreamDep) -> Response:
        base = routes.get(name)
        if base is None:
            raise ApiError(404, f"no model server named {name!r}; known: {', '.join(routes)}")
        url = f"{base}/{path}" + (f"?{request.url.query}" if request.url.query else "")
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        if "x-api-key" in request.headers:
            headers["x-api-key"] = request.headers["x-api-key"]
        reply = await upstream.call(
            request.method, url, body=await request.body(), rid=request_id(request),
            headers=headers, name=f"model server {name}",
        )
        return reply.response()

    return app
