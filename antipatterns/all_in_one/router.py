"""The fix of SA2: a small router in front of one service per model.

`POST /predict/{model}` forwards the body unchanged to that model's own predictor and passes
its reply through (validation errors included). A model whose service crashed, stalls or
fails costs only that model's route: a 502/503/504 naming it, while the other models keep
answering. `/stats` counts answered and failed calls per model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field, field_validator

from patternkit.backends import Backend, call_backend, parse_backends
from patternkit.predictor import PREDICT_OPENAPI
from patternkit.proxy import Upstream
from patternkit.schemas import PredictResponse
from patternkit.service import ApiError, ServiceState, create_service, request_id
from patternkit.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Which service serves which model, and how long to wait for it."""

    service_name: str = "router"
    backends: str = Field(..., description="model=url,... e.g. a=http://a:8000,b=...")
    backend_timeout_ms: int = Field(5000, gt=0, description="deadline of each forwarded call")

    @field_validator("backends")
    @classmethod
    def _well_formed(cls, value: str) -> str:
        parse_backends(value)
        return value


class Resources(TypedDict):
    """What the route reads from the lifespan state (`request.state.<name>`)."""

    backends: dict[str, Backend]
    calls: Counter  # by model and outcome: /stats "models"


async def predict(model: str, request: Request) -> Response:
    cfg: RouterSettings = request.state.settings
    backends: dict[str, Backend] = request.state.backends
    backend = backends.get(model)
    if backend is None:
        raise ApiError(
            404, f"no model {model!r}; known models: {', '.join(backends)}", "unknown_model"
        )
    try:
        reply, _ = await call_backend(
            request.state.upstream, backend, request.method, backend.predict_url,
            body=await request.body(), rid=request_id(request),
            timeout_s=cfg.backend_timeout_ms / 1000, who=f"model {backend.name}",
        )
    except ApiError:
        request.state.calls.labels(model, "failed").inc()
        raise
    request.state.calls.labels(model, "answered").inc()
    return reply.response()


def create_app(settings: RouterSettings | None = None) -> FastAPI:
    cfg = settings or RouterSettings()
    backends = {b.name: b for b in parse_backends(cfg.backends)}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata.update(backends={b.name: b.url for b in backends.values()},
                              backend_timeout_ms=cfg.backend_timeout_ms)
        calls = state.metrics.counter(
            "all_in_one_router_calls", "forwarded calls by model and outcome",
            {"model": list(backends), "outcome": ("answered", "failed")}, stat="models",
        )
        yield {"backends": backends, "calls": calls}

    app = create_service(cfg, title="all-in-one fix: router to one service per model",
                         lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.backend_timeout_ms / 1000)})
    app.post(
        "/predict/{model}",
        tags=["predict"],
        openapi_extra=PREDICT_OPENAPI,
        responses={200: {"model": PredictResponse},
                   404: {"description": "no such model"}, 413: {}, 422: {},
                   502: {"description": "the model's service crashed or is down; named"},
                   504: {"description": "the model's service missed BACKEND_TIMEOUT_MS"}},
    )(predict)
    return app
