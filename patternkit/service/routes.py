"""Routes the scaffold adds or shapes: fast routes, the ops routes, OpenAPI, route order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Route

from patternkit.schemas import PREDICT_EXAMPLE, predict_example
from patternkit.service.docs import DOCS_PATHS, complete_openapi
from patternkit.service.errors import error_response, json_response
from patternkit.service.middleware import OPS_PATHS
from patternkit.service.state import Endpoint, ServiceState


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


def with_example(doc: Any, example: dict[str, Any]) -> Any:
    """`doc` with every PREDICT_EXAMPLE in it replaced by `example`."""
    if doc == PREDICT_EXAMPLE:
        return example
    if isinstance(doc, dict):
        return {k: with_example(v, example) for k, v in doc.items()}
    if isinstance(doc, list):
        return [with_example(v, example) for v in doc]
    return doc


def install_openapi(app: FastAPI) -> None:
    """OpenAPI from the app's routes plus the documented fast routes, errors in one shape.

    The predict examples show the iris row until the service knows its model's input width
    (`n_features` in its metadata, set when a predictor loads a model or a proxy learns its
    backends') or is told it (DOCS_EXAMPLE_WIDTH); then a row of that width, so "Try it out"
    sends a valid request."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        state: ServiceState = app.state.service
        width = state.metadata.get("n_features") or state.settings.docs_example_width
        if app.openapi_schema is None or built.get("width") != width:
            doc = complete_openapi(get_openapi(
                title=app.title, version=app.version,
                routes=[*app.routes, *app.state.doc_routes],
            ))
            example = predict_example(width if isinstance(width, int) else None)
            app.openapi_schema = doc if example is PREDICT_EXAMPLE else with_example(doc, example)
            built["width"] = width
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def ops_routes_last(app: FastAPI) -> None:
    """Match the service's own routes before probes and docs: routes are tried in order."""
    routes = app.router.routes
    ops = {*OPS_PATHS, *DOCS_PATHS, app.openapi_url}
    routes[:] = sorted(routes, key=lambda r: getattr(r, "path", None) in ops)


def install_ops_routes(app: FastAPI, state: ServiceState) -> None:
    """`/health`, `/ready`, `/metadata`, `/metrics` and `/stats` (read from the registry)."""

    @app.get("/health", tags=["ops"])
    async def health() -> Response:
        return json_response({"status": "ok", "served_by": state.served_by})

    @app.get("/ready", tags=["ops"])
    async def ready() -> Response:
        if not state.ready:
            why = f": {state.unready_reason}" if state.unready_reason else ""
            return error_response(503, f"{state.served_by} is not ready{why}", "not_ready")
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
        return json_response(state.stats_view())
