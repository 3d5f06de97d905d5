"""The load balancer of S1: spreads `/predict` over the predictor replicas in turn.

Each call goes to the next replica; a replica that refuses connections is skipped, so losing
one replica costs capacity, not answers. The reply is the replica's own, including its
`X-Served-By`, which is how a user sees the balancing. The Open Inference Protocol's `/v2/...`
paths are balanced the same way, each passed through as is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from patternkit.oip import add_oip_passthrough
from patternkit.proxy import Reply, RoundRobin, Upstream, path_as_is, split_urls
from patternkit.schemas import PREDICT_OPENAPI, PredictResponse
from patternkit.service import ServiceState, add_fast_route, create_service
from patternkit.settings import ServiceSettings


class Resources(TypedDict):
    balancer: RoundRobin


class LBSettings(ServiceSettings):
    service_name: str = "lb"
    backend_urls: str = Field(..., description="comma-separated predictor base URLs")
    backend_timeout_ms: int = Field(5000, gt=0)


async def predict(request: Request) -> Response:
    balancer: RoundRobin = request.state.balancer
    reply = await balancer.forward(request.state.upstream, request, "/predict")
    return reply.response()


async def forward_as_is(request: Request) -> Reply:
    balancer: RoundRobin = request.state.balancer
    return await balancer.forward(request.state.upstream, request, path_as_is(request))


def create_app(settings: LBSettings | None = None) -> FastAPI:
    cfg = settings or LBSettings()
    balancer = RoundRobin(split_urls(cfg.backend_urls))

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata["backends"] = balancer.urls
        yield {"balancer": balancer}

    app = create_service(cfg, title="web single: load balancer", lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.backend_timeout_ms / 1000)})
    add_fast_route(app, "/predict", predict, tags=["predict"], openapi_extra=PREDICT_OPENAPI,
                   responses={200: {"model": PredictResponse}, 502: {}, 504: {}})
    add_oip_passthrough(app, forward_as_is)
    return app
