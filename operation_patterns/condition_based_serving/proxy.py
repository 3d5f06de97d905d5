"""The proxy of O7: a rules file decides, per request, which condition's model answers.

A request carries its rows and, optionally, its condition: `{"data": [...], "context":
{"hour": 8, "region": "europe", "device": "mobile"}}`, or its local time in an
`X-Client-Time` header. The rules (`rules.Rules`, read from RULES_FILE through a
`patternkit.runtime_config.RuntimeConfig` in "replace" mode) are watched: an edit reroutes
within about a second with no restart, a bad file is refused with the error named and the
old rules kept, and every change is logged and audited (`GET /rules/history`) and shown on
`/metadata`. The answer says which rule picked which model (`X-Route-Rule`, `X-Served-By`);
`GET /route` answers the same question without calling a model.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from operation_patterns.condition_based_serving.rules import Condition, Rules, condition_of
from patternkit.backends import (
    Backend,
    RemoteModel,
    call_model,
    input_width,
    parse_backends,
    watch_models,
)
from patternkit.predictor import check_rows
from patternkit.proxy import Upstream
from patternkit.runtime_config import ConfigRejected, RuntimeConfig, add_config_routes
from patternkit.schemas import IRIS_ROW, PREDICT_EXAMPLE, PredictRequest, with_examples
from patternkit.service import (
    ApiError,
    ServiceState,
    add_fast_route,
    background,
    create_service,
    json_response,
    request_id,
    validation_error,
)
from patternkit.settings import BatchSettings

log = logging.getLogger("condition_based_serving.proxy")

WORD = r"^[A-Za-z][A-Za-z0-9_ -]*$"


class ConditionSettings(BatchSettings):
    """The proxy: its backends (one per condition), the rules file and the call deadline."""

    service_name: str = "proxy"
    backends: str = Field(..., description="name=url,... the models the rules may name")
    rules_file: str = Field(..., description="the rules (YAML, TOML or JSON), watched")
    rules_watch_s: float = Field(0.5, gt=0, description="how often the file's mtime is read")
    backend_timeout_ms: int = Field(2000, gt=0, description="a slower model call is a 504")


class Context(BaseModel):
    """What a request says about its condition; every field optional."""

    model_config = ConfigDict(extra="forbid")

    hour: int | None = Field(None, ge=0, le=23, strict=True, description="the client's hour")
    region: str | None = Field(None, min_length=1, max_length=64, pattern=WORD)
    device: str | None = Field(None, min_length=1, max_length=64, pattern=WORD)


CONDITION_EXAMPLE: dict[str, Any] = {"data": [IRIS_ROW], "context": {"hour": 8, "region": "europe"}}


class ConditionRequest(PredictRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [CONDITION_EXAMPLE]})

    context: Context | None = Field(None, description="the request's condition")


class Router:
    """What the routes read: the rules, the models by backend name, the counts."""

    def __init__(self, rules: RuntimeConfig[Rules], models: list[RemoteModel],
                 upstream: Upstream, state: ServiceState, cfg: ConditionSettings) -> None:
        self.rules = rules
        self.models = models
        self.backends: dict[str, Backend] = {m.backend.name: m.backend for m in models}
        self.upstream = upstream
        self.timeout_s = cfg.backend_timeout_ms / 1000
        self.max_rows = cfg.max_batch_rows
        names = list(self.backends)
        metrics = state.metrics
        self.routed = metrics.counter("condition_serving_routed", "requests routed, by backend",
                                      {"backend": names}, stat="routed")
        self.failed = metrics.counter("condition_serving_failed",
                                      "routed requests whose model call failed",
                                      {"backend": names}, stat="failed")
        self.unmatched = metrics.counter(
            "condition_serving_unmatched", "requests no rule matched, with no default (400)",
            stat="unmatched",
        )

    def choose(self, condition: Condition) -> tuple[str, str, int]:
        """(rule, backend, rules version) for a condition, or a 400 naming it."""
        rules = self.rules.current  # one read: a request is routed by one version
        version = self.rules.version
        choice = rules.route(condition)
        if choice is None:
            self.unmatched.inc()
            raise ApiError(
                400, f"no rule matches {condition.describe()}, and the rules have no default",
                "no_matching_rule", [{"condition": condition.view(),
                                      "rules": list(rules.rules), "rules_version": version}],
            )
        return *choice, version


class Resources(TypedDict):
    router: Router
    rules: RuntimeConfig[Rules]


def parse_request(body: bytes) -> ConditionRequest:
    try:
        return ConditionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def predict(request: Request) -> Response:
    router: Router = request.state.router
    req = parse_request(await request.body())
    X = check_rows(req.data, input_width(router.models), router.max_rows)
    ctx = req.context or Context()
    condition = condition_of(ctx.hour, ctx.region, ctx.device,
                             request.headers.get("x-client-time"), router.rules.current.zone())
    rule, name, version = router.choose(condition)
    rid = req.request_id or request_id(request)
    try:
        reply = await call_model(router.upstream, router.backends[name], X, rid,
                                 router.timeout_s)
    except ApiError:
        router.failed.labels(name).inc()
        raise
    router.routed.labels(name).inc()
    body = {
        "prediction": reply.prediction,
        "probabilities": reply.probabilities,
        "model": reply.model,
        "version": reply.version,
        "served_by": reply.served_by,
        "rule": rule,
        "backend": name,
        "condition": condition.view(),
        "rules_version": version,
        "request_id": rid,
    }
    return json_response(body, headers={
        "x-served-by": reply.served_by, "x-model-version": reply.version,
        "x-route-rule": rule, "x-rules-version": str(version),
    })


async def route(
    request: Request,
    hour: Annotated[int | None, Query(ge=0, le=23, description="the client's hour")] = None,
    region: Annotated[str | None, Query(max_length=64, pattern=WORD)] = None,
    device: Annotated[str | None, Query(max_length=64, pattern=WORD)] = None,
    x_client_time: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """Which rule and model a request with this condition would get (no model is called)."""
    router: Router = request.state.router
    condition = condition_of(hour, region, device, x_client_time, router.rules.current.zone())
    rule, name, version = router.choose(condition)
    return json_response({"rule": rule, "backend": name, "condition": condition.view(),
                          "rules_version": version})


PREDICTION_EXAMPLE: dict[str, Any] = {
    "prediction": [0], "probabilities": [[0.978716, 0.021283, 0.000001]], "model": "iris_lr",
    "version": "1.0.0", "served_by": "noon", "rule": "default", "backend": "noon",
    "condition": {"hour": None, "hour_from": "none", "region": None, "device": None},
    "rules_version": 0, "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9",
}
PREDICT_DOC: dict[str, Any] = {  # "Try it out" sends the iris row; the schema shows a context
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": ConditionRequest.model_json_schema(), "example": PREDICT_EXAMPLE}}},
}


def create_app(settings: ConditionSettings | None = None) -> FastAPI:
    cfg = settings or ConditionSettings()
    backends = parse_backends(cfg.backends)
    names = [b.name for b in backends]
    upstream = Upstream(cfg.backend_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        try:
            rules = RuntimeConfig.from_file(Rules, cfg.rules_file, name="rules",
                                            context={"backends": names}, state=state)
        except ConfigRejected as exc:
            log.critical("cannot start without valid rules: %s", exc.message)
            raise
        state.metadata.update(backends={b.name: b.url for b in backends})
        async with watch_models(upstream, backends, state) as models:
            router = Router(rules, models, upstream, state, cfg)
            async with background(rules.watch(cfg.rules_watch_s)):
                yield {"router": router, "rules": rules}

    app = create_service(cfg, title="condition-based serving: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"],
        openapi_extra=with_examples(PREDICT_DOC, response=PREDICTION_EXAMPLE),
        responses={200: {"description": "the answer of the model the rules picked"},
                   400: {"description": "no rule matches and there is no default"},
                   413: {}, 422: {}, 502: {}, 503: {}, 504: {}},
    )
    app.get("/route", tags=["rules"], summary="the rule and model a condition gets",
            responses={400: {"description": "no rule matches and there is no default"}})(route)
    add_config_routes(app, "/rules", "rules", writable=False, what="rules")
    return app
