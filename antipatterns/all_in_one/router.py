"""The fix of SA2: a small router in front of one service per model.

`POST /predict/{model}` forwards the body unchanged to that model's own predictor and passes
its reply through (validation errors included). A model whose service crashed, stalls or
fails costs only that model's route: a 502/503/504 naming it, while the other models keep
answering. `/stats` counts answered and failed calls per model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from patternkit.backends import Backend, parse_backends
from patternkit.predictor import PREDICT_OPENAPI
from patternkit.proxy import Reply, Upstream, error_message
from patternkit.schemas import PredictResponse
from patternkit.service import ApiError, ServiceState, create_service
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


def create_app(settings: RouterSettings | None = None) -> FastAPI:
    cfg = settings or RouterSettings()
    backends = {b.name: b for b in parse_backends(cfg.backends)}
    res: dict[str, Upstream] = {}
    counts: dict[str, dict[str, int]] = {name: {"answered": 0, "failed": 0} for name in backends}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        res["upstream"] = Upstream(cfg.backend_timeout_ms / 1000)
        state.stats["models"] = counts
        state.metadata.update(backends={b.name: b.url for b in backends.values()},
                              backend_timeout_ms=cfg.backend_timeout_ms)
        yield
        await res["upstream"].aclose()

    app = create_service(cfg, title="all-in-one fix: router to one service per model",
                         lifespan=lifespan)

    async def forward(backend: Backend, request: Request) -> Reply:
        details: list[dict[str, Any]] = [{"backend": backend.name, "url": backend.url}]
        try:
            reply = await res["upstream"].forward(request, backend.predict_url)
        except ApiError as exc:
            if exc.status == 504:
                raise ApiError(
                    504, f"model {backend.name} did not answer within "
                    f"{cfg.backend_timeout_ms} ms", exc.error, details,
                ) from None
            cause = exc.message.rsplit(": ", 1)[-1]  # e.g. connection refused, connection dropped
            raise ApiError(
                502, f"model {backend.name} gave no answer ({cause}) at {backend.url}",
                exc.error, details,
            ) from None
        if reply.status >= 500:
            raise ApiError(
                503 if reply.status == 503 else 502,
                f"model {backend.name} answered {reply.status}: {error_message(reply.body)}",
                "backend_error", details,
            )
        return reply

    @app.post(
        "/predict/{model}",
        tags=["predict"],
        openapi_extra=PREDICT_OPENAPI,
        responses={200: {"model": PredictResponse},
                   404: {"description": "no such model"}, 413: {}, 422: {},
                   502: {"description": "the model's service crashed or is down; named"},
                   504: {"description": "the model's service missed BACKEND_TIMEOUT_MS"}},
    )
    async def predict(model: str, request: Request) -> Response:
        backend = backends.get(model)
        if backend is None:
            raise ApiError(
                404, f"no model {model!r}; known models: {', '.join(backends)}", "unknown_model"
            )
        try:
            reply = await forward(backend, request)
        except ApiError:
            counts[model]["failed"] += 1
            raise
        counts[model]["answered"] += 1
        return reply.response()

    return app
