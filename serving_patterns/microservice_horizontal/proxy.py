"""The proxy of S7: asks every one-vs-rest model at once and merges their answers.

`POST /predict` validates the rows, then calls all backends in parallel (`asyncio.gather`),
each with its own deadline (`BACKEND_TIMEOUT_MS`), so the reply takes about as long as the
slowest model, not the sum. The label of a row is the backend whose positive-class probability
is highest. A backend that is slow, failing or down does not sink the request: the reply comes
at about the timeout, is marked incomplete and names what is missing (`"missing"`) and why
(`"errors"`). Only when no backend answers is it a 502/504 naming them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from patternkit.backends import (
    Backend,
    BackendFailed,
    ModelReply,
    RemoteModel,
    call_model,
    input_width,
    parse_backends,
    watch_models,
)
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import (
    ApiError,
    ServiceState,
    create_service,
    fast_route,
    json_response,
    request_id,
)
from patternkit.settings import BatchSettings


class FanOutSettings(BatchSettings):
    """Which models to ask (in class order) and how long to wait for each."""

    service_name: str = "proxy"
    backends: str = Field(
        ..., description="name=url,... of one-vs-rest predictors; the order is the class order"
    )
    backend_timeout_ms: int = Field(800, gt=0, description="deadline of each backend call")

    @field_validator("backends")
    @classmethod
    def _well_formed(cls, value: str) -> str:
        parse_backends(value)
        return value


def aggregate(
    n_rows: int, backends: list[Backend], replies: dict[str, ModelReply]
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): scores[row, k] is backend k's positive probability (-inf if missing)."""
    scores = np.full((n_rows, len(backends)), -np.inf)
    for k, backend in enumerate(backends):
        if backend.name in replies:
            scores[:, k] = np.asarray(replies[backend.name].probabilities)[:, 1]
    return scores.argmax(axis=1), scores


def create_app(settings: FanOutSettings | None = None) -> FastAPI:
    cfg = settings or FanOutSettings()
    backends = parse_backends(cfg.backends)
    names = [b.name for b in backends]
    timeout_s = cfg.backend_timeout_ms / 1000
    upstream = Upstream(timeout_s)

    @asynccontextmanager
    async def lifespan(
        app: FastAPI, state: ServiceState
    ) -> AsyncIterator[dict[str, list[RemoteModel]]]:
        state.metadata.update(backends={b.name: b.url for b in backends},
                              backend_timeout_ms=cfg.backend_timeout_ms, classes=names)
        # the row width comes from the models' /metadata: ready once one of them is known
        async with watch_models(upstream, backends, state) as models:
            yield {"models": models}

    app = create_service(cfg, title="microservice horizontal: fan-out proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    metrics = app.state.service.metrics  # on /metrics, and on /stats under "fanout"
    answers = metrics.counter("fanout_answers", "answers by completeness",
                              {"outcome": ("complete", "partial", "failed")})
    for outcome in ("complete", "partial", "failed"):
        metrics.view(f"fanout.{outcome}", answers.labels(outcome))
    missing = metrics.counter("fanout_missing", "answers that lacked a backend",
                              {"backend": names}, stat="fanout.missing")

    async def ask(backend: Backend, X: np.ndarray, rid: str | None) -> ModelReply | BackendFailed:
        try:
            return await call_model(upstream, backend, X, rid, timeout_s)
        except BackendFailed as exc:
            return exc

    @fast_route(
        app, "/predict",
        tags=["predict"],
        openapi_extra=PREDICT_OPENAPI,
        responses={200: {"content": {"application/json": {"example": {
                       "prediction": [0], "labels": ["setosa"], "complete": True,
                       "missing": [], "errors": {},
                       "models": {name: {"name": name, "served_by": name, "model": f"iris_{name}",
                                         "version": "1.0.0", "ms": 2.4, "prediction": [p],
                                         "probabilities": [probs]}
                                  for name, p, probs in (
                                      ("setosa", 1, [0.0123, 0.9877]),
                                      ("versicolor", 0, [0.8611, 0.1389]),
                                      ("virginica", 0, [0.9998, 0.0002]))},
                       "ms": 3.5, "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9"}}}},
                   413: {"description": "body or batch too large"}, 422: {},
                   502: {"description": "no backend answered; the message names them"},
                   504: {"description": "every backend missed BACKEND_TIMEOUT_MS"}},
    )
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        X, body_rid = parse_batch(await request.body(), input_width(request.state.models),
                                   cfg.max_batch_rows)
        rid = body_rid or request_id(request)
        results = await asyncio.gather(*(ask(b, X, rid) for b in backends))
        replies = {r.backend: r for r in results if isinstance(r, ModelReply)}
        failures = [r for r in results if isinstance(r, BackendFailed)]
        for failed in failures:
            missing.labels(failed.backend.name).inc()
        if not replies:
            answers.labels("failed").inc()
            timeouts = all(f.status == 504 for f in failures)
            raise ApiError(
                504 if timeouts else 502,
                "no model answered: " + "; ".join(f.message for f in failures),
                "backend_timeout" if timeouts else "no_backend_answered",
                [d for f in failures for d in f.details],
            )
        answers.labels("partial" if failures else "complete").inc()

        labels, _ = aggregate(len(X), backends, replies)
        return json_response({
            "prediction": labels,
            "labels": [names[i] for i in labels],
            "complete": not failures,
            "missing": [f.backend.name for f in failures],
            "errors": {f.backend.name: f.summary() for f in failures},
            "models": {
                name: {**r.trace(), "prediction": r.prediction, "probabilities": r.probabilities}
                for name, r in replies.items()
            },
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "request_id": rid,
        })

    return app
