"""The one entrypoint of S12: `create_app()` stamps a model server out of a config file.

`SERVING_CONFIG` names the model's YAML config and `MODEL_PATH` its ONNX artifact. The ML core
(`ml_core`: request schema, labels, artifact check) comes from the config; the non-ML layer is
the same for every model: the patternkit scaffold (request ids, probes, /metrics, JSON errors,
body limit) plus API-key auth. So every server has the same paths and envelopes, and reports
`TEMPLATE_VERSION` and its config on /metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field, ValidationError

from patternkit.models import ModelError, OnnxModel
from patternkit.schemas import ErrorBody
from patternkit.service import (
    ApiError,
    ServiceState,
    add_fast_route,
    create_service,
    json_response,
    request_id,
    validation_error,
)
from patternkit.settings import ServiceSettings
from serving_patterns.serving_template.auth import api_key_from_env, install_api_key
from serving_patterns.serving_template.config import load_config
from serving_patterns.serving_template.ml_core import check_artifact, contract, predict

log = logging.getLogger("serving_template.server")

TEMPLATE_VERSION = "2.0.0"


class TemplateSettings(ServiceSettings):
    """Only what the deployment decides; everything about the model is in the config file."""

    service_name: str = "model-server"
    serving_config: str = Field(..., description="path to the model's YAML config")
    model_path: str = Field(..., description="model directory (model.onnx + manifest.json)")


def create_app(settings: TemplateSettings | None = None) -> FastAPI:
    """A model server for the config in SERVING_CONFIG (uvicorn --factory ...server:create_app).

    A bad config, a missing API key env var or a model that disagrees with the config stops
    the server at start-up with a message naming the problem, rather than serving wrongly.
    """
    cfg = settings or TemplateSettings()
    loaded = load_config(cfg.serving_config)
    config = loaded.config
    key = api_key_from_env(config.auth.api_key_env, str(loaded.path))
    api = contract(config)
    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[dict[str, OnnxModel]]:
        try:
            model = await asyncio.to_thread(OnnxModel, cfg.model_path)
            check_artifact(config, model)
        except (ModelError, OSError, ValueError) as exc:
            log.critical("cannot serve %s: %s", loaded.path, exc)
            raise
        state.model_version = model.version
        state.metadata.update(
            template_version=TEMPLATE_VERSION,
            config=config.model_dump(mode="json"),
            config_path=str(loaded.path),
            config_migrated_from=loaded.migrated_from,
            model=model.manifest,
        )
        Gauge(
            "template_info", "which template and config this server runs",
            ["template_version", "schema_version", "model", "model_version"],
            registry=state.registry,
        ).labels(TEMPLATE_VERSION, str(config.schema_version), model.name, model.version).set(1)
        migrated = (f", migrated from schema_version {loaded.migrated_from}"
                    if loaded.migrated_from else "")
        log.info("template %s serves %s %s (%d features, %d classes) from %s%s",
                 TEMPLATE_VERSION, model.name, model.version, len(config.features),
                 len(config.classes), loaded.path, migrated)
        yield {"model": model}

    app = create_service(
        cfg, title=f"{config.model.name}: serving template", version=TEMPLATE_VERSION,
        lifespan=lifespan,
    )
    state: ServiceState = app.state.service
    install_api_key(app, key)
    served = Counter("template_predictions", "predicted instances by label", ["label"],
                     registry=state.registry)
    limit = config.limits.max_batch_rows

    async def predict_route(request: Request) -> Response:
        try:  # JSON whatever the content-type says, like every predictor in the catalogue
            body: Any = api.request.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(exc) from None  # 422 naming e.g. body.instances.0.petal_width
        if len(body.instances) > limit:
            raise ApiError(
                413, f"{len(body.instances)} instances exceed the limit of {limit} "
                     "(limits.max_batch_rows in this server's config)",
            )
        model: OnnxModel = request.state.model
        predictions = predict(config, model, api.rows(body))
        for p in predictions:
            served.labels(p["label"]).inc()
        return json_response({
            "model": model.name,
            "version": model.version,
            "predictions": predictions,
            "served_by": state.served_by,
            "request_id": body.request_id or request_id(request),
            "template_version": TEMPLATE_VERSION,
        })

    add_fast_route(
        app, "/predict", predict_route, ["POST"], tags=["predict"],
        response_model=api.response, openapi_extra=request_body(api.request),
        responses={code: {"model": ErrorBody} for code in (401, 413, 422)},
    )
    document_models(app, api.request)
    return app


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of /predict: a reference to the generated request model."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document_models(app: FastAPI, model: type[BaseModel]) -> None:
    """Add the generated request model (and its Instance) to the OpenAPI components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    base = app.openapi

    def openapi() -> dict[str, Any]:
        spec = base()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs)
        schemas[model.__name__] = schema
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
