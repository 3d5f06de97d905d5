"""The documented predictor of OA2: the same model, with its model card and an input contract.

`/metadata` shows the card: owner, purpose, the dataset version, the training code's commit,
the input unit and each feature's range. `POST /predict` takes `{"unit", "data"}`: the unit
is required (422 without it, 422 `unknown_unit` for one it does not know), rows are converted
to the card's unit (cm) and checked against its ranges. A value out of range is still
predicted, but flagged in the reply (`alerts`, `X-Input-Alerts`), counted
(`nobody_knows_out_of_range_total{feature}`) and kept as an alert record on `GET /alerts`.
It refuses to start without a card that names its model's sha256.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from antipatterns.nobody_knows.units import (
    CM_PER_UNIT,
    FeatureRange,
    UnknownUnit,
    out_of_range,
    ranges_of,
    to_card_unit,
)
from patternkit.faults import Faults
from patternkit.models import ModelError, OnnxModel
from patternkit.predictor import apply_faults, check_rows
from patternkit.schemas import IRIS_ROW, PREDICTION_EXAMPLE, Row
from patternkit.service import (
    ApiError,
    ServiceState,
    add_fast_route,
    create_service,
    json_response,
    request_id,
    validation_error,
)
from patternkit.settings import PredictorSettings

log = logging.getLogger("nobody_knows.documented")

EXAMPLE = {"unit": "cm", "data": [IRIS_ROW]}


class DocumentedSettings(PredictorSettings):
    service_name: str = "documented"
    model_card: str = Field(..., description="the model card (model_card.json) of MODEL_PATH")
    alert_history: int = Field(200, gt=0, description="alert records kept for GET /alerts")


class UnitPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    unit: str = Field(..., max_length=16, description=f"one of {', '.join(CM_PER_UNIT)}")
    data: list[Row] = Field(..., min_length=1, description="rows of measurements in `unit`")
    request_id: str | None = Field(None, max_length=128)


class Served:
    """The model, its card and the alerts, in the lifespan state."""

    def __init__(self, model: OnnxModel, card: dict[str, Any], history: int) -> None:
        self.model = model
        self.card = card
        self.unit: str = card["input"]["unit"]
        self.ranges: list[FeatureRange] = ranges_of(card)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=history)


class Resources(TypedDict):
    served: Served


def load_card(cfg: DocumentedSettings, model: OnnxModel) -> dict[str, Any]:
    try:
        card: dict[str, Any] = json.loads(Path(cfg.model_card).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"no readable model card at {cfg.model_card}: {exc}") from exc
    named = card.get("model", {}).get("sha256")
    if named != model.manifest["sha256"]:
        raise ModelError(f"the model card {cfg.model_card} describes sha256 {named}, not this "
                         f"model ({model.manifest['sha256']})")
    if len(card["input"]["features"]) != model.n_features:
        raise ModelError("the model card's input features do not match the model's")
    return card


def create_app(settings: DocumentedSettings | None = None) -> FastAPI:
    cfg = settings or DocumentedSettings()
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        model = await asyncio.to_thread(OnnxModel, cfg.model_path)
        card = load_card(cfg, model)  # a ModelError stops the start: no card, no service
        for feature in card["input"]["features"]:  # each feature's series, at zero from start
            alerts.labels(feature["name"])
        state.model_version = model.version
        state.metadata.update(
            owner=card["owner"], purpose=card["purpose"], dataset=card["dataset"],
            code=card["code"], input={**card["input"], "units_accepted": list(CM_PER_UNIT)},
            model=model.manifest, model_card=cfg.model_card, n_features=model.n_features,
        )
        log.info("serving %s %s for %s (%s)", model.name, model.version, card["owner"]["team"],
                 card["purpose"])
        yield {"served": Served(model, card, cfg.alert_history)}

    app = create_service(cfg, title="nobody knows: the documented predictor", lifespan=lifespan)
    alerts = app.state.service.metrics.counter(
        "nobody_knows_out_of_range", "input values outside the model card's range",
        {"feature": ()}, stat="out_of_range.{feature}")
    flagged = app.state.service.metrics.counter(
        "nobody_knows_rows_flagged", "rows with at least one value out of range",
        stat="rows_flagged")

    async def predict(request: Request) -> Response:
        served: Served = request.state.served
        state: ServiceState = request.app.state.service
        try:
            req = UnitPredictRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(exc) from None
        X = check_rows(req.data, served.model.n_features, cfg.max_batch_rows)
        try:
            X = to_card_unit(X, req.unit, served.unit)
        except UnknownUnit as exc:
            raise ApiError(422, f"body.unit: {exc}; the model takes {served.unit}, converted "
                                "from any of these", "unknown_unit",
                           [{"loc": "body.unit", "msg": str(exc)}]) from None
        found = out_of_range(X, served.ranges)
        await apply_faults(faults)
        rid = req.request_id or request_id(request)
        reply = served.model.answer(X, state.served_by, rid)
        reply.update(unit=req.unit, converted_to=served.unit,
                     alerts=[f.view() for f in found])
        if found:
            rows = sorted({f.row for f in found})
            flagged.inc(len(rows))
            for f in found:
                alerts.labels(f.feature).inc()
            served.alerts.append({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                                  "request_id": rid, "unit": req.unit,
                                  "rows": len(req.data), "rows_flagged": len(rows),
                                  "values": [f.view() for f in found[:20]]})
            log.warning("request %s: %d of %d rows out of the card's range (unit %s), e.g. %s",
                        rid, len(rows), len(req.data), req.unit, found[0].view())
        response = json_response(reply)
        response.headers["x-input-alerts"] = str(len(found))
        return response

    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": UnitPredictRequest.model_json_schema(), "example": EXAMPLE}}},
            "responses": {"200": {"content": {"application/json": {"example": {
                **PREDICTION_EXAMPLE, "unit": "cm", "converted_to": "cm", "alerts": []}}}}}},
        responses={413: {"description": "batch too large"}, 422: {}},
    )

    @app.get("/alerts", tags=["alerts"])
    async def get_alerts(request: Request) -> Response:
        served: Served = request.state.served
        return json_response({"alerts": list(served.alerts)[::-1],
                              "kept": len(served.alerts), "limit": cfg.alert_history})

    return app
