"""The monitor of O5: evaluates the rules over windows of the prediction log and posts alerts.

Every MONITOR_INTERVAL_S it reads the last WINDOW_S of `<LOG_PREFIX>_prediction_log` (ending
LOG_DELAY_S ago, so that rows still in a writer's buffer have landed), applies the rules of
RULES_FILE against the training distribution at REFERENCE_PATH (`patternkit.monitor`), moves
each alert through pending -> firing -> resolved (`for` windows) and posts what fired or
resolved to ALERT_URL, an Alertmanager-style webhook. `GET /windows` shows the recent windows'
measurements, `GET /alerts/active` the pending and firing alerts, `GET /rules` the rules.
`POST /evaluate` evaluates given windows now, in order, with alert states of their own (so a
test or an operator replays a time range without waiting for it, and without touching the
live states); what they fire is posted too, labelled with the evaluation's id as `source`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypedDict

import aiohttp
import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from patternkit.db import make_engine, show_url
from patternkit.monitor import (
    RULE_NAMES,
    AlertBook,
    AlertPoster,
    Reference,
    Rules,
    Window,
    WindowReport,
    as_utc,
    evaluate,
    read_window,
    window_data,
)
from patternkit.service import ApiError, ServiceState, background, create_service, json_response
from patternkit.settings import ServiceSettings

log = logging.getLogger("prediction_monitoring.monitor")

MAX_WINDOWS = 100  # windows one POST /evaluate may hold


class MonitorSettings(ServiceSettings):
    service_name: str = "monitor"
    database_url: str = Field(..., description="the prediction log's database ({db.url})")
    log_prefix: str = Field("prediction_monitoring", description="<prefix>_prediction_log")
    rules_file: str = Field(..., description="the rules (TOML)")
    reference_path: str = Field(..., description="the training distribution (reference.json "
                                                 "or the model folder holding it)")
    log_services: str = Field("", description="comma-separated services whose rows count "
                                              "(a log holding a proxy's and a predictor's row "
                                              "per request counts one); empty: all")
    alert_url: str = Field("", description="the alert sink's webhook; empty: alerts are only "
                                           "shown here")
    monitor_interval_s: float = Field(5.0, ge=0, description="seconds between evaluations; "
                                                             "0: only on request")
    window_s: float = Field(5.0, gt=0, description="the window each evaluation reads")
    log_delay_s: float = Field(2.0, ge=0, description="how far behind now a window ends")
    history: int = Field(200, ge=1, description="live windows kept for GET /windows")


class WindowSpan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> WindowSpan:
        if as_utc(self.end) <= as_utc(self.start):
            raise ValueError("end must be after start")
        return self


class EvaluateRequest(BaseModel):
    """Windows to evaluate in order, as one stream of consecutive windows."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"windows": [
        {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:05Z"},
        {"start": "2026-01-01T00:00:05Z", "end": "2026-01-01T00:00:10Z"}], "notify": True}]})

    windows: list[WindowSpan] = Field(..., min_length=1, max_length=MAX_WINDOWS)
    notify: bool = Field(True, description="post what fires or resolves to the alert sink")

    @model_validator(mode="after")
    def _in_order(self) -> EvaluateRequest:
        for i, (a, b) in enumerate(itertools.pairwise(self.windows), start=1):
            if as_utc(b.start) < as_utc(a.end):
                raise ValueError(f"windows.{i} starts before windows.{i - 1} ends")
        return self


@dataclass
class Live:
    """The loop's alert states, recent windows and counts."""

    book: AlertBook
    windows: deque[dict[str, Any]]
    evaluations: int = 0
    last_error: str = ""
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


@dataclass(frozen=True)
class Judge:
    """The rules and the training distribution, loaded at start-up, over one database."""

    rules: Rules
    ref: Reference
    engine: sa.Engine
    prefix: str
    services: tuple[str, ...] = ()

    def report(self, window: Window) -> WindowReport:
        """Read a window of the log and apply the rules (blocking: run it in a thread)."""
        rows = read_window(self.engine, self.prefix, window, services=self.services or None)
        return evaluate(window_data(rows, window, len(self.ref.features)), self.rules, self.ref)


class Resources(TypedDict):
    judge: Judge
    live: Live
    poster: AlertPoster
    session: aiohttp.ClientSession


def create_app(settings: MonitorSettings | None = None) -> FastAPI:
    cfg = settings or MonitorSettings()
    live_book: list[AlertBook] = []  # the live states, for the firing gauge read on scrape

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        rules = Rules.load(cfg.rules_file)  # a bad file stops the start with its field named
        ref = Reference.load(cfg.reference_path)
        engine = make_engine(cfg.database_url)
        services = tuple(s.strip() for s in cfg.log_services.split(",") if s.strip())
        judge = Judge(rules, ref, engine, cfg.log_prefix, services)
        live = Live(AlertBook(rules, "live"), deque(maxlen=cfg.history))
        live_book[:] = [live.book]
        poster = AlertPoster(cfg.alert_url)
        state.metadata.update(rules=rules.view(), reference=ref.summary(),
                              window_s=cfg.window_s, monitor_interval_s=cfg.monitor_interval_s,
                              log_delay_s=cfg.log_delay_s, alert_url=cfg.alert_url,
                              log_table=f"{cfg.log_prefix}_prediction_log",
                              log_services=list(services) or "all",
                              database=show_url(engine))
        state.stats["alert_posts"] = poster.stats()

        async def loop(session: aiohttp.ClientSession) -> None:
            while True:
                await asyncio.sleep(cfg.monitor_interval_s)
                end = datetime.now(UTC) - timedelta(seconds=cfg.log_delay_s)
                window = Window(end - timedelta(seconds=cfg.window_s), end)
                started = time.perf_counter()
                try:
                    report = await asyncio.to_thread(judge.report, window)
                except sa.exc.SQLAlchemyError as exc:
                    live.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.warning("cannot read the prediction log: %s", live.last_error)
                    continue
                alerts = live.book.step(report)
                live.evaluations += 1
                evaluations.labels("live").inc()
                live.windows.append({**report.view(), "alerts": [
                    {"status": a["status"], "rule": a["rule"]} for a in alerts],
                    "took_ms": round((time.perf_counter() - started) * 1000, 1)})
                for a in alerts:
                    notified.labels(a["rule"], a["status"]).inc()
                    log.warning("alert %s: %s", a["status"], a["annotations"]["summary"])
                await poster.post(alerts, session)
                state.stats["alert_posts"] = poster.stats()

        async with AsyncExitStack() as stack:
            stack.callback(engine.dispose)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            if cfg.monitor_interval_s > 0:
                await stack.enter_async_context(background(loop(session)))
            yield {"judge": judge, "live": live, "poster": poster, "session": session}

    app = create_service(cfg, title="prediction monitoring: monitor", lifespan=lifespan)
    metrics = app.state.service.metrics
    evaluations = metrics.counter("monitor_evaluations", "windows evaluated",
                                  {"source": ("live", "request")},
                                  stat="evaluations.{source}")
    metrics.gauge("monitor_alerts_firing", "live alerts firing now").set_function(
        lambda: sum(1 for st in live_book[0].states.values() if st.state == "firing")
        if live_book else 0)
    notified = metrics.counter("monitor_alerts", "alerts that fired or resolved",
                               {"rule": RULE_NAMES, "status": ("firing", "resolved")},
                               stat="alerts.{status}")

    @app.post("/evaluate", tags=["monitor"], responses={
        200: {"description": "each window's measurements and findings, and the alerts"},
        422: {}, 503: {"description": "the prediction log cannot be read"}})
    async def evaluate_windows(
        request: Request,
        body: EvaluateRequest | None = None,
        start: Annotated[datetime | None, Query(description="one window's start (ISO "
                                                            "8601), instead of a body")] = None,
        end: Annotated[datetime | None, Query(description="its end")] = None,
    ) -> Response:
        """Evaluate the windows given, in order, with alert states of their own."""
        if body is None:
            if start is None or end is None:
                raise ApiError(422, "give windows in the body, or start and end in the query",
                               "validation_error")
            body = EvaluateRequest(windows=[WindowSpan(start=start, end=end)])
        now = datetime.now(UTC)
        for i, span in enumerate(body.windows):
            if as_utc(span.end) > now:
                raise ApiError(422, f"windows.{i}.end is in the future: a window is evaluated "
                               "once it is over", "validation_error")
        live: Live = request.state.live
        judge: Judge = request.state.judge
        source = f"evaluate-{next(live.ids)}"
        book = AlertBook(judge.rules, source)
        out, alerts = [], []
        try:
            for span in body.windows:
                window = Window(as_utc(span.start), as_utc(span.end))
                report = await asyncio.to_thread(judge.report, window)
                evaluations.labels("request").inc()
                fired = book.step(report)
                alerts.extend(fired)
                out.append({**report.view(), "alerts": [
                    {"status": a["status"], "rule": a["rule"]} for a in fired],
                    "states": book.view()})
        except sa.exc.SQLAlchemyError as exc:
            raise ApiError(503, f"cannot read the prediction log: {type(exc).__name__}",
                           "log_unavailable") from None
        posted = None
        if body.notify and alerts:
            posted = await request.state.poster.post(alerts, request.state.session)
        return json_response({"evaluation": source, "windows": out, "alerts": alerts,
                              "posted": posted, "active": book.view()})

    @app.get("/windows", tags=["monitor"])
    async def windows(request: Request,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
        """The live loop's recent windows: measurements, findings, alerts, oldest first."""
        live: Live = request.state.live
        return json_response({"count": len(live.windows),
                              "windows": list(live.windows)[-limit:]})

    @app.get("/alerts/active", tags=["monitor"])
    async def active(request: Request) -> Response:
        """The live loop's pending and firing alerts."""
        live: Live = request.state.live
        return json_response({"evaluations": live.evaluations, "alerts": live.book.view(),
                              "posts": request.state.poster.stats()})

    @app.get("/rules", tags=["monitor"])
    async def get_rules(request: Request) -> Response:
        """The rules and thresholds in force, and the training distribution's summary."""
        judge: Judge = request.state.judge
        return json_response({"rules": judge.rules.view(), "window_s": cfg.window_s,
                              "monitor_interval_s": cfg.monitor_interval_s,
                              "reference": judge.ref.summary()})

    return app
