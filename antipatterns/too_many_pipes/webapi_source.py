"""The fake web API of TA3: one of the three data stores, serving iris petal rows as JSON.

`GET /rows` answers `{"rows": [{"id", "petal_length", "petal_width", "species"}, ...]}` and
needs the bearer token API_TOKEN (as a real partner API would). Stopping this service is how
the tests break a source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.responses import Response
from pydantic import Field

from patternkit.models import load_dataset
from patternkit.service import ApiError, ServiceState, create_service, from_state, json_response
from patternkit.settings import ServiceSettings


class SourceSettings(ServiceSettings):
    service_name: str = "webapi"
    api_token: str = Field("pipes-demo-token", description="the bearer token GET /rows needs")


class Resources(TypedDict):
    rows: list[dict[str, Any]]
    token: str


router = APIRouter()


@router.get("/rows", tags=["source"], responses={401: {}})
async def rows(table: Annotated[list[dict[str, Any]], Depends(from_state("rows"))],
               token: Annotated[str, Depends(from_state("token"))],
               authorization: Annotated[str, Header()] = "") -> Response:
    if authorization != f"Bearer {token}":
        raise ApiError(401, "a bearer token is needed (Authorization: Bearer ...)",
                       "unauthorized")
    return json_response({"rows": table})


def create_app(settings: SourceSettings | None = None) -> FastAPI:
    cfg = settings or SourceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        X, y, _, classes = load_dataset("iris")
        table = [{"id": i, "petal_length": float(x[2]), "petal_width": float(x[3]),
                  "species": classes[int(label)]} for i, (x, label) in enumerate(zip(X, y,
                                                                                     strict=True))]
        yield {"rows": table, "token": cfg.api_token}

    app = create_service(cfg, title="fake web API source (TA3)", lifespan=lifespan)
    app.include_router(router)
    return app
