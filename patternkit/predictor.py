"""The template predictor: one ONNX model behind `POST /predict`, reused by most patterns.

`create_app()` reads `PredictorSettings` (MODEL_PATH, INSTANCE_NAME, DELAY_MS, FAIL_MODE, ...),
loads the model in the lifespan (503 on /ready until then) and serves
`{"data": [[...], ...]}` -> `{"prediction", "probabilities", "model", "version", "served_by"}`,
and the same model over the Open Inference Protocol v2 (`/v2/...`, `patternkit.oip`).
With MODEL_REPO_URL it downloads the model MODEL_NAME and MODEL_VERSION name instead and can
swap it at runtime (`patternkit.loader`, O2); with BUNDLE_MANIFEST its model is checked to be
the one of the bundle it was unpacked from (`patternkit.bundle`, O1). Patterns that need
another model-backed endpoint reuse `add_predict_route`. With PREDICTION_LOG_URL every
/predict answer is also a record of the prediction log (`patternkit.predlog`: a Redis stream
or a table), off the request path (O4).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from patternkit.faults import Faults, InjectedFault
from patternkit.models import ModelError, OnnxModel
from patternkit.oip import add_oip_routes
from patternkit.predlog import PredictionLog, open_log
from patternkit.schemas import PREDICT_OPENAPI, PredictRequest, PredictResponse
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
from patternkit.settings import PredictorSettings

log = logging.getLogger("patternkit.predictor")

class Resources(TypedDict):
    model: ModelSlot
    plog: NotRequired[PredictionLog | None]  # PREDICTION_LOG_URL's log (the template)


@asynccontextmanager
async def registration(cfg: PredictorSettings, state: ServiceState) -> AsyncIterator[None]:
    """With REGISTRY_URL: this server in the service registry (`patternkit.discovery`) while
    it is ready, as `service:<INSTANCE_NAME>` with ADVERTISE_URL, its model and version."""
    if not cfg.registry_url:
        yield
        return
    from patternkit.discovery import registered

    def describe() -> dict[str, object] | None:
        if not state.ready:
            return None
        model = state.metadata.get("model") or {}
        return {"url": cfg.advertise_url, "service": cfg.service_name,
                "model": model.get("name") or cfg.model_name,
                "version": state.model_version}

    async with registered(cfg.registry_url, cfg.served_by, cfg.registry_ttl_s,
                          describe) as reg:
        state.metrics.computed("registry", reg.stats)
        yield


@asynccontextmanager
async def prediction_log(
    cfg: PredictorSettings, state: ServiceState
) -> AsyncIterator[PredictionLog | None]:
    """The log of every prediction PREDICTION_LOG_URL names (None without it): a record per
    /predict (rows, labels, probabilities, model, version, time in the model) of kind
    `prediction`, its counts on /metrics and under `prediction_log` on /stats."""
    if not cfg.prediction_log_url:
        yield None
        return
    async with open_log(cfg, state) as plog:
        yield plog


def parse_batch(body: bytes, n_features: int, max_rows: int) -> tuple[np.ndarray, str | None]:
    """Validate a predict body: JSON shape, finite numbers, row width, batch size."""
    try:
        req = PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return check_rows(req.data, n_features, max_rows), req.request_id


def check_rows(data: list[list[float]], n_features: int, max_rows: int) -> np.ndarray:
    """A validated body's rows as a float32 array, after the batch size and row width checks
    (for a service whose body holds more than a PredictRequest)."""
    if len(data) > max_rows:
        raise ApiError(
            413, f"batch of {len(data)} rows exceeds the limit of {max_rows} (MAX_BATCH_ROWS)"
        )
    for i, row in enumerate(data):
        if len(row) != n_features:
            raise ApiError(
                422,
                f"body.data.{i}: expected {n_features} features, got {len(row)}",
                "validation_error",
                [{"loc": f"body.data.{i}", "msg": f"expected {n_features} features"}],
            )
    return np.asarray(data, dtype=np.float32)


async def apply_faults(faults: Faults) -> None:
    """DELAY_MS, then FAIL_MODE's injected failure as a 500 `injected_fault` (a served call)."""
    try:
        await faults.apply()
    except InjectedFault as exc:
        raise ApiError(500, str(exc), "injected_fault") from None


@dataclass
class ModelSlot:
    """The model a route serves, in the lifespan state: empty until it has loaded."""

    model: OnnxModel | None = None


def add_predict_route(
    app: FastAPI,
    faults: Faults,
    max_rows: int,
    path: str = "/predict",
    slot: str = "model",
    log: bool = False,
) -> None:
    """Register the shared `/predict` endpoint on `app` for the model in the lifespan state's
    `slot` (a `ModelSlot`); with `log`, each answer is recorded in the state's `plog`."""
    state: ServiceState = app.state.service

    async def predict(request: Request) -> Response:
        model = getattr(request.state, slot).model
        if model is None:
            why = f": {state.unready_reason}" if state.unready_reason else " yet"
            raise ApiError(503, f"{state.served_by} has no model loaded{why}", "not_ready")
        X, rid = parse_batch(await request.body(), model.n_features, max_rows)
        await apply_faults(faults)
        if not log:
            return json_response(model.answer(X, state.served_by, rid or request_id(request)))
        began = time.perf_counter()
        out = model.answer(X, state.served_by, rid or request_id(request))
        plog: PredictionLog | None = request.state.plog
        if plog is not None:  # an O(1) append; the rows as sent (float32 widened, rounded)
            plog.record(X.astype(np.float64).round(6), {
                "prediction": out["prediction"], "probabilities": out["probabilities"]},
                model=out["model"], version=out["version"], request_id=out["request_id"],
                latency_ms=round((time.perf_counter() - began) * 1000, 3),
                fields={"kind": "prediction"}, extra={"served_by": state.served_by})
        return json_response(out)

    add_fast_route(
        app, path, predict, ["POST"],
        tags=["predict"], response_model=PredictResponse, openapi_extra=PREDICT_OPENAPI,
        responses={413: {"description": "body or batch too large"}, 422: {}, 503: {}},
    )


def create_app(
    settings: PredictorSettings | None = None,
    on_load: Callable[[ServiceState, OnnxModel], object] | None = None,
) -> FastAPI:
    """The template predictor app (uvicorn --factory patternkit.predictor:create_app).

    The model loads in the background after start-up: `/health` answers at once, `/ready`,
    `/predict` and `/v2/health/ready` answer 503 until the model is in memory. A model that
    cannot be loaded (missing, tampered: sha256 mismatch), or that `on_load` refuses with a
    ModelError, is logged and stops the process. `on_load` lets a pattern publish more about
    the model. With MODEL_REPO_URL the model comes from a model repository instead
    (`patternkit.loader`): a refused one keeps the process up and unready, the reason on
    /ready and /metadata, and `POST /admin/load` swaps versions.
    """
    cfg = settings or PredictorSettings()
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms, cfg.delay_blocks)
    if cfg.model_repo_url:  # imported here: aiohttp costs every other predictor ~0.5 s
        from patternkit.loader import create_loading_app

        return create_loading_app(cfg, faults, on_load)

    async def load(state: ServiceState, slot: ModelSlot) -> None:
        try:
            model = await asyncio.to_thread(OnnxModel, cfg.model_path)
            if cfg.bundle_manifest:
                from patternkit.bundle import check_bundle

                state.metadata["bundle"] = check_bundle(
                    model.manifest, cfg.bundle_manifest, cfg.bundle_sha256)
            if on_load is not None:
                on_load(state, model)
        except (ModelError, OSError, RuntimeError) as exc:
            log.critical("cannot load the model, stopping: %s", exc)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if cfg.load_delay_ms:
            await asyncio.sleep(cfg.load_delay_ms / 1000)
        slot.model = model
        state.model_version = model.version
        state.metadata.update(
            model=model.manifest, model_path=str(model.path),
            n_features=model.n_features, max_batch_rows=cfg.max_batch_rows,
        )
        gc.freeze()  # start-up objects never die: keep them out of every later GC pass
        state.ready = True
        log.info("loaded model %s %s from %s", model.name, model.version, model.path)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        slot = ModelSlot()
        async with background(load(state, slot)), prediction_log(cfg, state) as plog, \
                registration(cfg, state):
            yield {"model": slot, "plog": plog}

    app = create_service(
        cfg, title=f"{cfg.service_name} (predictor)", lifespan=lifespan, auto_ready=False
    )
    add_predict_route(app, faults, cfg.max_batch_rows, log=bool(cfg.prediction_log_url))
    add_oip_routes(app, faults, cfg.max_batch_rows)
    return app
