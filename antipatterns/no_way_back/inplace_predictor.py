"""The antipattern's predictor: one model path, overwritten in place by every deploy.

MODEL_PATH is the only model there is. A deploy copies the new `model.onnx` and
`manifest.json` over the files there and calls `POST /admin/reload`, which loads whatever
MODEL_PATH holds now; the model it replaces is gone from disk. `POST /admin/rollback` has
nothing to go back to: a 409 `no_previous_version` that names what was overwritten, when,
and what recovery needs (a retrain from the data and code, then a deploy of that). The
server remembers what it served before (name, version, sha256), never its bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from patternkit.faults import Faults
from patternkit.models import ModelError, OnnxModel
from patternkit.oip import add_oip_routes
from patternkit.predictor import ModelSlot, Resources, add_predict_route
from patternkit.service import ApiError, ServiceState, create_service, json_response
from patternkit.settings import PredictorSettings

log = logging.getLogger("antipatterns.no_way_back.inplace_predictor")

RETRAIN = "python -m antipatterns.no_way_back.trainer --retrain --out <folder>"


def described(model: OnnxModel) -> dict[str, Any]:
    return {"model": model.name, "version": model.version,
            "sha256": str(model.manifest["sha256"]),
            "accuracy": model.manifest.get("metrics", {}).get("accuracy")}


class InPlace:
    """The served model and what the server remembers of the ones that were overwritten."""

    def __init__(self, cfg: PredictorSettings, state: ServiceState, slot: ModelSlot) -> None:
        self.cfg = cfg
        self.state = state
        self.slot = slot
        self.lock = asyncio.Lock()
        self.overwritten: list[dict[str, Any]] = []  # what each reload replaced (no bytes)
        state.metadata["overwritten"] = self.overwritten
        self.reloads = state.metrics.counter(
            "inplace_reloads", "reloads of MODEL_PATH, by outcome", {"outcome": ("loaded",
                                                                                  "failed")},
            stat="reloads")
        self.refused = state.metrics.counter(
            "inplace_rollbacks_refused", "rollbacks asked for: none possible",
            stat="rollbacks_refused")

    def serve(self, model: OnnxModel) -> None:
        self.slot.model = model
        self.state.model_version = model.version
        self.state.metadata.update(model=model.manifest, model_path=str(model.path),
                                   n_features=model.n_features)
        self.state.ready = True

    async def reload(self) -> dict[str, Any]:
        async with self.lock:
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(OnnxModel, self.cfg.model_path)
            except (ModelError, OSError, RuntimeError) as exc:
                self.reloads.labels("failed").inc()
                raise ApiError(422, f"cannot load what {self.cfg.model_path} holds: {exc}; "
                                    "still serving the model loaded before",
                               "unloadable_model") from None
            old = self.slot.model
            self.serve(model)
            self.reloads.labels("loaded").inc()
            if old is not None:
                self.overwritten.append({**described(old), "replaced_by": model.version,
                                         "at": datetime.now(UTC).isoformat(timespec="seconds")})
        log.warning("reloaded %s: now %s %s%s", self.cfg.model_path, model.name, model.version,
                    f", {old.version} is gone" if old is not None else "")
        return {"status": "reloaded", **described(model),
                "previous": old.version if old is not None else None,
                "load_ms": round((time.perf_counter() - started) * 1000, 1)}

    def rollback(self) -> None:
        """Always a 409: one path, overwritten in place, keeps no earlier version."""
        self.refused.inc()
        served = self.slot.model
        now = f"{served.name} {served.version}" if served is not None else "nothing"
        if self.overwritten:
            last = self.overwritten[-1]
            what = (f"the deploy at {last['at']} copied {now} over {last['model']} "
                    f"{last['version']} (sha256 {last['sha256'][:12]}) and kept no copy")
        else:
            what = "no earlier model was ever kept"
        raise ApiError(409, f"no previous version: {self.cfg.model_path} holds {now} only; "
                            f"{what}. Recovery means retraining it from its data and code "
                            f"({RETRAIN}) and deploying that, while {now} keeps serving",
                       "no_previous_version")


def inplace_of(request: Request) -> InPlace:
    found: InPlace = request.state.inplace
    return found


class InPlaceResources(Resources):
    inplace: InPlace


def create_app(settings: PredictorSettings | None = None) -> FastAPI:
    """The in-place predictor (uvicorn --factory ...inplace_predictor:create_app)."""
    cfg = settings or PredictorSettings(service_name="inplace_predictor")
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[InPlaceResources]:
        slot = ModelSlot()
        inplace = InPlace(cfg, state, slot)
        inplace.serve(await asyncio.to_thread(OnnxModel, cfg.model_path))
        log.info("serving %s from its one path %s", state.model_version, cfg.model_path)
        yield {"model": slot, "plog": None, "inplace": inplace}

    app = create_service(cfg, title="inplace_predictor (one model path, overwritten by deploys)",
                         lifespan=lifespan, auto_ready=False)
    add_predict_route(app, faults, cfg.max_batch_rows)
    add_oip_routes(app, faults, cfg.max_batch_rows)

    async def reload(request: Request) -> Response:
        """Load whatever MODEL_PATH holds now (a deploy has just copied over it)."""
        return json_response(await inplace_of(request).reload())

    async def rollback(request: Request) -> Response:
        """There is no previous version: always a 409 that says why and what recovery needs."""
        inplace_of(request).rollback()
        return json_response({})  # pragma: no cover - rollback always raises

    app.post("/admin/reload", tags=["admin"], responses={
        422: {"description": "what MODEL_PATH holds cannot be loaded"}})(reload)
    app.post("/admin/rollback", tags=["admin"], responses={
        409: {"description": "no previous version: it was overwritten"}})(rollback)
    return app
