"""The balancer of Q3: spreads `/predict` over the predictor processes, call by call.

Separate predictor processes behind this proxy are how the pattern scales out, rather than
`uvicorn --workers 2`: there the workers share one listening socket and the kernel hands each
new connection to one of them, so Locust's users, which open their keep-alive connections
at once, can all land on one worker. Balancing calls, not connections, keeps the split even,
and `/stats` shows it: `forwarded` counts the calls each worker got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field

from patternkit.proxy import RoundRobin, Upstream, split_urls
from patternkit.schemas import PREDICT_OPENAPI, PredictResponse
from patternkit.service import ServiceState, add_fast_route, create_service
from patternkit.settings import ServiceSettings


class Resources(TypedDict):
    balancer: RoundRobin
    forwarded: Counter


class LBSettings(ServiceSettings):
    service_name: str = "lb"
    backend_urls: str = Field(..., description="comma-separated predictor base URLs")
    backend_timeout_ms: int = Field(10_000, gt=0)


async def predict(request: Request) -> Response:
    balancer: RoundRobin = request.state.balancer
    reply = await balancer.forward(request.state.upstream, request, "/predict")
    request.state.forwarded.labels(reply.backend.removesuffix("/predict")).inc()
    return reply.response()


def create_app(settings: LBSettings | None = None) -> FastAPI:
    cfg = settings or LBSettings()
    balancer = RoundRobin(split_urls(cfg.backend_urls))

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata["backends"] = balancer.urls
        yield {"balancer": balancer, "forwarded": forwarded}

    app = create_service(cfg, title="loading test: balancer", lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.backend_timeout_ms / 1000)})
    forwarded = app.state.service.metrics.counter(
        "lb_forwarded", "calls forwarded to each predictor process", {"backend": balancer.urls},
        stat="forwarded")
    add_fast_route(app, "/predict", predict, tags=["predict"], openapi_extra=PREDICT_OPENAPI,
                   responses={200: {"model": PredictResponse}, 413: {}, 422: {}, 502: {},
                              504: {}})
    return app
