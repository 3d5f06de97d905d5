"""The proxy of S5 (D2): one `POST /predict` runs retrieve -> prep -> pred, stage by stage.

A body of `{"ids": [...]}` starts at the retrieve stage (rows of the feature table); a body of
`{"data": [[...]]}` (raw features) skips it. The reply carries the prediction, the stages that
ran with their round-trip times (`stages`, `Server-Timing`) and the `train_run_id`, which must
be the same on the prep and pred replies or the answer is a 409 naming both. A stage that is
down is a 503 naming it (`X-Failed-Stage`), a slow one a 504; the user's own bad input is the
first stage's 4xx, passed on with the stage named.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patternkit.backends import timed_call
from patternkit.proxy import Reply, Upstream
from patternkit.schemas import Row, RowId, with_examples
from patternkit.service import (
    ApiError,
    Metrics,
    ServiceState,
    add_fast_route,
    background,
    create_service,
    json_response,
    request_id,
    validation_error,
)
from patternkit.settings import ServiceSettings
from serving_patterns.prep_pred.lineage import RUN_ID_HEADER

log = logging.getLogger("prep_pred.proxy")

STAGES = ("retrieve", "prep", "pred")
PATHS = {"retrieve": "/features", "prep": "/transform", "pred": "/predict"}
STAGE_HEADER = "x-failed-stage"


class ProxySettings(ServiceSettings):
    """Where the three stages are and how long the proxy waits for each."""

    service_name: str = "proxy"
    retrieve_url: str = Field(..., description="base URL of the retrieve stage")
    prep_url: str = Field(..., description="base URL of the prep stage (scaler)")
    pred_url: str = Field(..., description="base URL of the pred stage (classifier)")
    stage_timeout_ms: int = Field(2000, gt=0, description="per-stage call timeout")
    max_batch_rows: int = Field(1000, gt=0, description="more ids or rows get 413")


class PipelineRequest(BaseModel):
    """Either ids of stored feature rows or raw feature rows, not both."""

    model_config = ConfigDict(extra="forbid")

    ids: list[RowId] | None = Field(
        None, min_length=1, description="row ids of the feature table (runs retrieve)"
    )
    data: list[Row] | None = Field(
        None, min_length=1, description="raw feature rows (skips retrieve)"
    )
    request_id: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _one_source(self) -> PipelineRequest:
        if (self.ids is None) == (self.data is None):
            raise ValueError("send either `ids` (stored feature rows) or `data` (raw rows)")
        return self


PIPELINE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PipelineRequest.model_json_schema()}},
    },
}


def stage_json(stage: str, reply: Reply) -> Any:
    try:
        return reply.json()
    except orjson.JSONDecodeError:
        raise ApiError(502, f"stage {stage} answered {reply.status} without JSON",
                       "stage_error", headers={STAGE_HEADER: stage}) from None


def stage_error(reply: Reply) -> tuple[str, str, list[dict[str, Any]]]:
    """(error, message, details) of a stage's uniform JSON error, or of its raw body."""
    try:
        body = orjson.loads(reply.body)
        return str(body["error"]), str(body["message"]), list(body.get("details") or [])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "stage_error", reply.body[:200].decode(errors="replace"), []


class Stages:
    """Calls the stages on the service's pooled client, counts and times each call (declared
    once: on /metrics and, as `stages.<stage>.calls|failures`, on /stats) and names the stage
    on failure."""

    def __init__(self, cfg: ProxySettings, upstream: Upstream, metrics: Metrics) -> None:
        self.bases = {
            "retrieve": cfg.retrieve_url.rstrip("/"),
            "prep": cfg.prep_url.rstrip("/"),
            "pred": cfg.pred_url.rstrip("/"),
        }
        self.urls = {stage: self.bases[stage] + path for stage, path in PATHS.items()}
        self.timeout_s = cfg.stage_timeout_ms / 1000
        self.upstream = upstream
        self.calls = metrics.counter(
            "prep_pred_stage_calls", "stage calls made", {"stage": STAGES},
            stat="stages.{stage}.calls",
        )
        self.failures = metrics.counter(
            "prep_pred_stage_failures", "failed stage calls",
            {"stage": STAGES, "reason": ("timeout", "unreachable")},
            stat="stages.{stage}.failures",
        )
        self.seconds = metrics.histogram(
            "prep_pred_stage_duration_seconds", "round trip of one stage call", {"stage": STAGES},
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.mismatches = metrics.counter(
            "prep_pred_train_run_mismatches", "prep and pred from different runs",
            stat="train_run_mismatches",
        )

    async def all_ready(self) -> bool:
        async def ready(base: str) -> bool:
            try:
                reply = await self.upstream.call("GET", base + "/ready", timeout_s=1.0)
            except ApiError:
                return False
            return reply.status == 200

        return all(await asyncio.gather(*(ready(b) for b in self.bases.values())))

    async def run_ids(self) -> dict[str, str | None]:
        """The train_run_id that prep and pred report on /metadata (None if unreadable)."""
        found: dict[str, str | None] = {}
        for stage in ("prep", "pred"):
            try:
                reply = await self.upstream.call("GET", self.bases[stage] + "/metadata")
                meta: Any = reply.json()
                found[stage] = meta.get("train_run_id")
            except (ApiError, ValueError, AttributeError):
                found[stage] = None
        return found

    async def call(
        self, stage: str, payload: dict[str, Any], rid: str | None, trace: list[dict[str, Any]],
        *, user_input: bool,
    ) -> Reply:
        """POST `payload` to `stage`; a 200 comes back, anything else raises an ApiError.

        `user_input` says the payload is the caller's own data, so a 4xx is the caller's
        mistake and is passed on; a 4xx on another stage's output is a broken contract (502).
        """
        self.calls.labels(stage).inc()
        started = time.perf_counter()
        step: dict[str, Any] = {"stage": stage}
        trace.append(step)
        failed = {STAGE_HEADER: stage}
        try:
            reply, ms = await timed_call(
                self.upstream, "POST", self.urls[stage], body=orjson.dumps(payload), rid=rid
            )
        except ApiError as exc:
            reason = "timeout" if exc.error == "backend_timeout" else "unreachable"
            step.update(status=reason, ms=elapsed_ms(started))
            self.failures.labels(stage, reason).inc()
            if reason == "timeout":
                raise ApiError(
                    504, f"stage {stage} did not answer within {self.timeout_s * 1000:.0f} ms",
                    "stage_timeout", trace, failed,
                ) from None
            raise ApiError(503, f"stage {stage} is unavailable: {exc.message}",
                           "stage_unavailable", trace, failed) from None
        self.seconds.labels(stage).observe(ms / 1000)
        step.update(status=reply.status, ms=ms, served_by=reply.headers.get("x-served-by"))
        if reply.status == 200:
            return reply
        error, message, details = stage_error(reply)
        if reply.status < 500 and user_input:
            raise ApiError(reply.status, f"{stage}: {message}", error, details, failed)
        self.failures.labels(stage, str(reply.status)).inc()
        if reply.status < 500:
            raise ApiError(502, f"stage {stage} refused its input ({reply.status}: {message})",
                           "stage_contract", trace, failed)
        if reply.status == 503:
            raise ApiError(503, f"stage {stage} is unavailable (503: {message})",
                           "stage_unavailable", trace, failed)
        raise ApiError(502, f"stage {stage} failed ({reply.status}: {message})", "stage_error",
                       trace, failed)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def parse_request(body: bytes, max_rows: int) -> PipelineRequest:
    try:
        req = PipelineRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    n = len(req.ids or req.data or [])
    if n > max_rows:
        raise ApiError(413, f"batch of {n} rows exceeds the limit of {max_rows} (MAX_BATCH_ROWS)")
    return req


def stage_fields(stage: str, reply: Reply, *keys: str) -> dict[str, Any]:
    """The stage's JSON reply, which must hold `keys` (a 502 naming the stage if not)."""
    body = stage_json(stage, reply)
    missing = [k for k in keys if not isinstance(body, dict) or k not in body]
    if missing:
        raise ApiError(502, f"stage {stage} answered without `{missing[0]}`",
                       "stage_contract", headers={STAGE_HEADER: stage})
    fields: dict[str, Any] = body
    return fields


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    stages: Stages


def check_lineage(
    state: ServiceState, stages: Stages, prep: Reply, pred: Reply, trace: list[dict[str, Any]]
) -> str:
    """The train_run_id prep and pred both report, or a 409 naming both (a 502 if missing)."""
    ids = {"prep": prep.headers.get(RUN_ID_HEADER), "pred": pred.headers.get(RUN_ID_HEADER)}
    state.stats["train_run_ids"] = ids
    for stage, run_id in ids.items():
        if not run_id:
            raise ApiError(502, f"stage {stage} did not report its train_run_id",
                           "stage_contract", trace, {STAGE_HEADER: stage})
    if ids["prep"] != ids["pred"]:
        stages.mismatches.inc()
        raise ApiError(
            409,
            f"prep and pred come from different training runs: prep has train_run_id "
            f"{ids['prep']}, pred has {ids['pred']}; deploy both stages from one run",
            "train_run_mismatch",
            [*trace, {"train_run_ids": ids}],
        )
    return str(ids["pred"])


async def predict(request: Request) -> Response:
    started = time.perf_counter()
    cfg: ProxySettings = request.state.settings
    stages: Stages = request.state.stages
    req = parse_request(await request.body(), cfg.max_batch_rows)
    rid = request_id(request)
    trace: list[dict[str, Any]] = []
    data: Any = req.data
    if req.ids is not None:
        found = await stages.call("retrieve", {"ids": req.ids}, rid, trace, user_input=True)
        data = stage_fields("retrieve", found, "data")["data"]
    prep = await stages.call("prep", {"data": data}, rid, trace, user_input=req.ids is None)
    scaled = stage_fields("prep", prep, "data")["data"]
    pred = await stages.call("pred", {"data": scaled}, rid, trace, user_input=False)
    run_id = check_lineage(request.state.service, stages, prep, pred, trace)
    result = stage_fields("pred", pred, "prediction", "probabilities", "model", "version")
    timing = ", ".join(f"{s['stage']};dur={s['ms']}" for s in trace)
    return json_response(
        {
            "prediction": result["prediction"],
            "probabilities": result["probabilities"],
            "model": result["model"],
            "version": result["version"],
            "train_run_id": run_id,
            "ids": req.ids,
            "stages": trace,
            "total_ms": elapsed_ms(started),
            "request_id": req.request_id or rid,
        },
        headers={
            RUN_ID_HEADER: run_id,
            "x-model-version": str(result["version"]),
            "x-stages": ",".join(s["stage"] for s in trace),
            "server-timing": timing,
        },
    )


async def watch_start(state: ServiceState, stages: Stages) -> None:
    """Turn ready once every stage answers /ready, and say if prep and pred disagree."""
    while not await stages.all_ready():
        await asyncio.sleep(0.1)
    ids = state.stats["train_run_ids"] = await stages.run_ids()
    if ids["prep"] != ids["pred"]:
        log.warning("prep and pred come from different training runs (%s vs %s): "
                    "every /predict will be a 409", ids["prep"], ids["pred"])
    state.ready = True
    log.info("ready: every stage answers; train_run_ids %s", ids)


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    upstream = Upstream(cfg.stage_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        stages = Stages(cfg, upstream, state.metrics)
        state.stats["train_run_ids"] = {"prep": None, "pred": None}
        state.metadata.update(stages=stages.urls, stage_timeout_ms=cfg.stage_timeout_ms)
        async with background(watch_start(state, stages)):
            yield {"stages": stages}

    # ready (200 on /ready) once all three stages are: see watch_start()
    app = create_service(cfg, title="prep-pred: proxy (D2)", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    add_fast_route(
        app, "/predict", predict, ["POST"],
        tags=["predict"],
        openapi_extra=with_examples(PIPELINE_OPENAPI, request={"ids": [0, 50, 100]}, response={
            "prediction": [0, 1, 2],
            "probabilities": [[0.9787161, 0.021283133, 8.239201e-07],
                              [0.006914953, 0.7793863, 0.2136988],
                              [4.5029396e-05, 0.010619983, 0.989335]],
            "model": "iris_lr_on_scaled", "version": "1.0.0",
            "train_run_id": "run-20261201T211429Z-ad7c55", "ids": [0, 50, 100],
            "stages": [{"stage": s, "status": 200, "ms": ms, "served_by": s}
                       for s, ms in (("retrieve", 8.0), ("prep", 11.6), ("pred", 3.8))],
            "total_ms": 28.0, "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9"}),
        responses={404: {}, 409: {}, 413: {}, 422: {}, 502: {}, 503: {}, 504: {}},
    )
    return app
