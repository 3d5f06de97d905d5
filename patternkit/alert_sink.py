"""The alert sink: a webhook receiver for Alertmanager-style messages, and `GET /alerts`.

`POST /webhook` takes `{"status": ..., "alerts": [{"status", "labels", ...}, ...]}` (what
Alertmanager's webhook receiver and `patternkit.monitor.AlertPoster` send) and keeps each alert
with the time it arrived, newest last, up to MAX_ALERTS (the oldest dropped and counted).
`GET /alerts` lists them, filtered by `status`, `rule`, `source` and `since` (ISO 8601). A
production system sends these to Alertmanager, which groups, silences and routes them to a
pager; this sink only records what would have paged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypedDict

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from patternkit.service import ServiceState, create_service, json_response
from patternkit.settings import ServiceSettings


class SinkSettings(ServiceSettings):
    service_name: str = "alert_sink"
    max_alerts: int = Field(10_000, ge=1, description="alerts kept; older ones are dropped")


class Alert(BaseModel):
    """One alert of a webhook message: its status and labels are required, the rest kept."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(..., description="alertname, rule, severity, ...")


class WebhookMessage(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "version": "4", "status": "firing", "alerts": [{
            "status": "firing", "labels": {"alertname": "traffic_low", "rule": "traffic_low",
                                           "severity": "warning", "source": "live"},
            "value": 0.0, "threshold": 2.0,
            "window": {"start": "2026-01-01T00:00:00+00:00",
                       "end": "2026-01-01T00:00:05+00:00", "seconds": 5.0}}]}]})

    status: Literal["firing", "resolved"] = "firing"
    alerts: list[Alert] = Field(..., min_length=1, max_length=10_000)


class Resources(TypedDict):
    alerts: deque[dict[str, Any]]


def create_app(settings: SinkSettings | None = None) -> FastAPI:
    cfg = settings or SinkSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata.update(max_alerts=cfg.max_alerts)
        yield {"alerts": deque()}

    app = create_service(cfg, title="alert sink", lifespan=lifespan)
    metrics = app.state.service.metrics
    received = metrics.counter("alert_sink_received", "alerts received",
                               {"status": ("firing", "resolved")}, stat="received.{status}")
    dropped = metrics.counter("alert_sink_dropped", "alerts dropped beyond MAX_ALERTS",
                              stat="dropped")

    @app.post("/webhook", tags=["alerts"], responses={
        200: {"content": {"application/json": {"example": {"received": 1, "stored": 1}}}},
        422: {}})
    async def webhook(message: WebhookMessage, request: Request) -> Response:
        """Receive an Alertmanager-style webhook message; every alert in it is stored."""
        alerts: deque[dict[str, Any]] = request.state.alerts
        now = datetime.now(UTC).isoformat()
        for alert in message.alerts:
            if len(alerts) >= cfg.max_alerts:
                alerts.popleft()
                dropped.inc()
            alerts.append({**alert.model_dump(), "received_at": now})
            received.labels(alert.status).inc()
        return json_response({"received": len(message.alerts), "stored": len(alerts)})

    @app.get("/alerts", tags=["alerts"], responses={
        200: {"content": {"application/json": {"example": {"count": 1, "alerts": [{
            "status": "firing", "labels": {"alertname": "traffic_low", "rule": "traffic_low"},
            "value": 0.0, "threshold": 2.0, "received_at": "2026-01-01T00:00:06+00:00"}]}}}},
        422: {}})
    async def list_alerts(
        request: Request,
        status: Annotated[Literal["firing", "resolved"] | None, Query()] = None,
        rule: Annotated[str | None, Query(description="the rule (alertname)")] = None,
        source: Annotated[str | None, Query(description="`live`, or an evaluation's id")
                          ] = None,
        since: Annotated[datetime | None, Query(description="received at or after")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        """The alerts received, oldest first (the newest `limit` of those that match)."""
        after = None if since is None else (since.replace(tzinfo=UTC) if since.tzinfo is None
                                            else since.astimezone(UTC)).isoformat()
        found = [a for a in request.state.alerts
                 if (status is None or a["status"] == status)
                 and (rule is None or a["labels"].get("rule") == rule)
                 and (source is None or a["labels"].get("source") == source)
                 and (after is None or a["received_at"] >= after)]
        return json_response({"count": len(found), "alerts": found[-limit:]})

    return app
