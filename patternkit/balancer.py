"""The round-robin load balancer: spreads `/predict` over the replicas of a predictor, per call.

Each call goes to the next backend in turn; one that refuses connections is skipped, so
losing a replica costs capacity, not answers. The reply is the backend's own, `X-Served-By`
included, which is how a user sees the balancing. The Open Inference Protocol's `/v2/...`
paths are balanced the same way, each passed through as is (`patternkit.oip`).

It balances calls, not connections: behind `uvicorn --workers 2` the workers share one
listening socket and the kernel hands each new connection to one of them, so clients that
open their keep-alive connections at once (Locust's users) can all land on one worker. Here
every call picks the next backend, and `/stats` `forwarded` (the `lb_forwarded` counter)
shows each backend's share. A backend that does not answer within `BACKEND_TIMEOUT_MS` is a
504 naming it; one that is down a 502. S1 (web single) and Q3 (loading test) run it as
`patternkit.balancer:create_app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field

from patternkit.oip import add_oip_passthrough
from patternkit.proxy import Reply, RoundRobin, Upstream, path_as_is, split_urls
from patternkit.schemas import PREDICT_OPENAPI, PredictResponse
from patternkit.service import ServiceState, add_fast_route, create_service
from patternkit.settings import ServiceSettings


class Resources(TypedDict):
    balancer: RoundRobin
    forwarded: Counter


class BalancerSettings(ServiceSettings):
    service_name: str = "lb"
    backend_urls: str = Field(..., description="comma-separated backend base URLs")
    backend_timeout_ms: int = Field(5000, gt=0, description="deadline of each forwarded call")


async def forward(request: Request, path: str) -> Reply:
    """Send the call to the next backend in turn and count it against that backend."""
    balancer: RoundRobin = request.state.balancer
    reply = await balancer.forward(request.state.upstream, request, path)
    request.state.forwarded.labels(reply.backend.removesuffix(path)).inc()
    return reply


async def predict(request: Request) -> Response:
    return (await forward(request, "/predict")).response()


async def forward_as_is(request: Request) -> Reply:
    return await forward(request, path_as_is(request))


def create_app(settings: BalancerSettings | None = None) -> FastAPI:
    """The balancer app (`patternkit.serve patternkit.balancer:create_app`)."""
    cfg = settings or BalancerSettings()
    balancer = RoundRobin(split_urls(cfg.backend_urls))

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata.update(backends=balancer.urls, backend_timeout_ms=cfg.backend_timeout_ms)
        yield {"balancer": balancer, "forwarded": forwarded}

    app = create_service(cfg, title=f"{cfg.service_name}: round-robin load balancer",
                         lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.backend_timeout_ms / 1000)})
    forwarded = app.state.service.metrics.counter(
        "lb_forwarded", "calls forwarded to each backend (/predict and /v2)",
        {"backend": balancer.urls}, stat="forwarded")
    add_fast_route(app, "/predict", predict, tags=["predict"], openapi_extra=PREDICT_OPENAPI,
                   responses={200: {"model": PredictResponse}, 413: {}, 422: {}, 502: {},
                              504: {}})
    add_oip_passthrough(app, forward_as_is)
    return app
