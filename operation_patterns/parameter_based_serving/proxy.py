"""The proxy of O6: parameters decide which model answers, how, and whether at all.

Its `ServingParams` (ACTIVE_MODEL, ACTIVATE, RETRY, TIMEOUT_SECOND, THRESHOLDS, ALLOW_LABELS)
come from the environment at start, then from `PUT /config` or the config file (CONFIG_FILE,
watched), all through one `patternkit.runtime_config.RuntimeConfig`: validated as a whole,
refused by field name when bad, logged and audited (`GET /config/history`), published on
`/metadata`. Each `/predict` reads the current parameters once: off, it answers the disabled
default without a backend call; on, it calls the active model with retries inside the time
budget, then turns rows under the model's threshold or off the allow-list into "unknown".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from operation_patterns.parameter_based_serving.params import (
    DISABLED,
    REASONS,
    ServingParams,
    label_rows,
)
from patternkit.backends import (
    RemoteModel,
    RetriesFailed,
    call_model_retrying,
    input_width,
    parse_backends,
    watch_models,
)
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream
from patternkit.runtime_config import ConfigRejected, RuntimeConfig, add_config_routes
from patternkit.schemas import PREDICT_OPENAPI, with_examples
from patternkit.service import (
    ServiceState,
    add_fast_route,
    background,
    create_service,
    json_response,
    request_id,
)
from patternkit.settings import BatchSettings

log = logging.getLogger("parameter_based_serving.proxy")

MAX_TIMEOUT_S = 60.0  # the pool's own limit; TIMEOUT_SECOND is validated below it


class ParamSettings(BatchSettings, ServingParams):
    """The proxy's start-up settings: its backends and config file, and the parameters'
    starting values (ACTIVE_MODEL, ACTIVATE, RETRY, TIMEOUT_SECOND, THRESHOLDS as JSON,
    ALLOW_LABELS comma-separated)."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", protected_namespaces=(), frozen=False
    )

    service_name: str = "proxy"
    backends: str = Field(..., description="name=url,... the models the proxy may route to")
    config_file: str = Field("", description="a YAML/TOML/JSON file of parameters, watched")
    config_watch_s: float = Field(0.5, gt=0, description="how often the file's mtime is read")

    def params(self) -> dict[str, Any]:
        return self.model_dump(include=set(ServingParams.model_fields))


class Counts:
    """The proxy's counts, declared once (on /metrics, and on /stats at the same names)."""

    def __init__(self, state: ServiceState, names: Sequence[str]) -> None:
        m = state.metrics
        self.answered = m.counter("param_serving_answered", "predictions a model answered",
                                  {"backend": names}, stat="answered")
        self.failed = m.counter("param_serving_failed", "requests whose every attempt failed",
                                {"backend": names}, stat="failed")
        self.retries = m.counter("param_serving_retries", "attempts after a failed one",
                                 {"backend": names}, stat="retries")
        self.disabled = m.counter("param_serving_disabled",
                                  "requests answered with the disabled default (ACTIVATE=false)",
                                  stat="disabled")
        self.unknown: Counter = m.counter(
            "param_serving_unknown_rows", "rows answered unknown, by reason",
            {"reason": REASONS}, stat="unknown_rows",
        )


class Router:
    """What `/predict` reads: the parameters, the models and the counts."""

    def __init__(self, config: RuntimeConfig[ServingParams], models: list[RemoteModel],
                 upstream: Upstream, counts: Counts, max_rows: int) -> None:
        self.config = config
        self.models = {m.backend.name: m for m in models}
        self.upstream = upstream
        self.counts = counts
        self.max_rows = max_rows

    def classes(self, model: RemoteModel) -> list[str]:
        return classes_of(model)

    def labels(self) -> list[str]:
        """Every label a known model answers: what ALLOW_LABELS may name."""
        return sorted({c for m in self.models.values() for c in classes_of(m)})


def classes_of(model: RemoteModel) -> list[str]:
    """The class names of a predictor's model, from its /metadata (empty until known)."""
    return list(model.metadata.get("model", {}).get("classes") or [])


class Resources(TypedDict):
    router: Router
    config: RuntimeConfig[ServingParams]


def disabled_answer(n_rows: int, rid: str | None, version: int) -> dict[str, Any]:
    return {
        "prediction": [None] * n_rows,
        "labels": [DISABLED] * n_rows,
        "disabled": True,
        "message": "predictions are switched off (activate=false); no model was called",
        "served_by": None,
        "config_version": version,
        "request_id": rid,
    }


async def predict(request: Request) -> Response:
    router: Router = request.state.router
    config = router.config
    params = config.current  # one read: the whole request uses one version of the parameters
    version = config.version
    name = params.active_model
    model = router.models[name]
    n_features = model.n_features or input_width(list(router.models.values()))
    X, body_rid = parse_batch(await request.body(), n_features, router.max_rows)
    rid = body_rid or request_id(request)
    headers = {"x-config-version": str(version)}
    if not params.activate:
        router.counts.disabled.inc()
        return json_response(disabled_answer(len(X), rid, version), headers=headers)
    try:
        result = await call_model_retrying(
            router.upstream, model.backend, X, rid,
            attempts=params.retry, timeout_s=params.timeout_second,
        )
    except RetriesFailed as exc:
        router.counts.failed.labels(name).inc()
        router.counts.retries.labels(name).inc(len(exc.failures) - 1)
        exc.headers = headers
        raise
    reply = result.reply
    if result.failures:
        router.counts.retries.labels(name).inc(len(result.failures))
    router.counts.answered.labels(name).inc()
    threshold = params.threshold(name)
    indices, labels, reasons = label_rows(
        reply.prediction, reply.probabilities, router.classes(model), threshold,
        params.allow_labels,
    )
    for reason in reasons:
        if reason is not None:
            router.counts.unknown.labels(reason).inc()
    body = {
        "prediction": indices,
        "labels": labels,
        "unknown_reason": reasons,
        "probabilities": reply.probabilities,
        "model": reply.model,
        "version": reply.version,
        "served_by": reply.served_by,
        "backend": name,
        "threshold": threshold,
        "attempts": result.attempts,
        "config_version": version,
        "request_id": rid,
    }
    headers.update({"x-served-by": reply.served_by, "x-model-version": reply.version,
                    "x-attempts": str(result.attempts)})
    return json_response(body, headers=headers)


PREDICTION_EXAMPLE = {
    "prediction": [0], "labels": ["setosa"], "unknown_reason": [None],
    "probabilities": [[0.978716, 0.021283, 0.000001]], "model": "iris_lr", "version": "1.0.0",
    "served_by": "model_a", "backend": "model_a", "threshold": 0.6, "attempts": 1,
    "config_version": 0, "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9",
}


def create_app(settings: ParamSettings | None = None) -> FastAPI:
    cfg = settings or ParamSettings()
    backends = parse_backends(cfg.backends)
    names = [b.name for b in backends]
    upstream = Upstream(MAX_TIMEOUT_S)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        config = RuntimeConfig(
            ServingParams, cfg.params(), name="config", context={"backends": names},
            file=cfg.config_file or None, mode="merge", state=state,
        )
        with suppress(ConfigRejected):  # a bad file: logged and shown, the env values stay
            config.load_at_start()
        counts = Counts(state, names)
        state.metadata.update(backends={b.name: b.url for b in backends})

        def active_known(models: Sequence[RemoteModel]) -> bool:
            return any(m.known and m.backend.name == config.current.active_model
                       for m in models)

        async with watch_models(upstream, backends, state, ready_when=active_known) as models:
            router = Router(config, models, upstream, counts, cfg.max_batch_rows)
            config.context["labels"] = router.labels  # validators read it when they run
            async with background(config.watch(cfg.config_watch_s)):
                yield {"router": router, "config": config}

    app = create_service(cfg, title="parameter-based serving: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"],
        openapi_extra=with_examples(PREDICT_OPENAPI, response=PREDICTION_EXAMPLE),
        responses={200: {"description": "the active model's answer, or the disabled default"},
                   413: {}, 422: {}, 502: {}, 503: {}, 504: {}},
    )
    add_config_routes(app, "/config", "config", what="config",
                      example={"active_model": "model_b", "activate": True, "retry": 3})
    return app
