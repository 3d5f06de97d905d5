"""The web app of S2: `POST /checkout` waits for the predictor's class, then picks a step.

The call to the predictor is synchronous from the user's point of view: the reply is sent only
once the class is known. A predictor slower than `PRED_TIMEOUT_MS` ends the wait with a 504
that names the predictor, instead of holding the user's request open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from patternkit.backends import timed_call
from patternkit.proxy import Upstream, UpstreamDep, error_message
from patternkit.schemas import FiniteFloat
from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import ServiceSettings

NEXT_STEP = {0: "approve", 1: "manual_review", 2: "reject"}


class WebAppSettings(ServiceSettings):
    service_name: str = "webapp"
    predictor_url: str = Field(..., description="base URL of the predictor")
    pred_timeout_ms: int = Field(1000, gt=0, description="how long a checkout waits")


class Checkout(BaseModel):
    order_id: str = Field(..., min_length=1, max_length=64)
    features: Annotated[list[FiniteFloat], Field(min_length=4, max_length=4)]


def create_app(settings: WebAppSettings | None = None) -> FastAPI:
    cfg = settings or WebAppSettings()
    predict_url = cfg.predictor_url.rstrip("/") + "/predict"

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        state.metadata.update(predictor=cfg.predictor_url, pred_timeout_ms=cfg.pred_timeout_ms)
        yield

    app = create_service(cfg, title="synchronous: checkout web app", lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.pred_timeout_ms / 1000)})

    @app.post("/checkout", tags=["checkout"])
    async def checkout(order: Checkout, request: Request, upstream: UpstreamDep) -> Response:
        body = orjson.dumps({"data": [order.features]})
        reply, ms = await timed_call(
            upstream, "POST", predict_url, body=body, rid=request_id(request)
        )
        if reply.status != 200:
            raise ApiError(502, f"predictor answered {reply.status}: "
                                f"{error_message(reply.body)}", "backend_error")
        result = orjson.loads(reply.body)
        label = int(result["prediction"][0])
        return json_response(
            {
                "order_id": order.order_id,
                "predicted_class": label,
                "next_step": NEXT_STEP.get(label, "manual_review"),
                "model_version": result["version"],
                "prediction_ms": ms,
            }
        )

    return app
