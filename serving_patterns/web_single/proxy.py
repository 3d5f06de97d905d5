"""The load balancer of S1: spreads `/predict` over the predictor replicas in turn.

Each call goes to the next replica; a replica that refuses connections is skipped, so losing
one replica costs capacity, not answers. The reply is the replica's own, including its
`X-Served-By`, which is how a user sees the balancing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from patternkit.proxy import RoundRobin, Upstream, split_urls
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import ServiceState, create_service, fast_route
from patternkit.settings import ServiceSettings


class LBSettings(ServiceSettings):
    service_name: str = "lb"
    backend_urls: str = Field(..., description="comma-separated predictor base URLs")
    backend_timeout_ms: int = Field(5000, gt=0)


def create_app(settings: LBSettings | None = None) -> FastAPI:
    cfg = settings or LBSettings()
    balancer = RoundRobin(split_urls(cfg.backend_urls))
    upstream: dict[str, Upstream] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        upstream["client"] = Upstream(cfg.backend_timeout_ms / 1000)
        state.metadata["backends"] = balancer.urls
        yield
        await upstream["client"].aclose()

    app = create_service(cfg, title="web single: load balancer", lifespan=lifespan)

    @fast_route(app, "/predict", tags=["predict"], openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request) -> Response:
        reply = await balancer.forward(upstream["client"], request, "/predict")
        return reply.response()

    return app
