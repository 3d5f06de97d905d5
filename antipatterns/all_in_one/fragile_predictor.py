"""Model B of SA2 and its deliberate faults, plus the standalone service that serves it.

`FragileModel` is model B with two documented fault knobs standing in for a real model bug:
a row whose first feature equals `POISON_VALUE` crashes whatever process serves it
(`os._exit`, like a segfault in a native library), and one equal to `HOG_VALUE` burns the CPU
for `HOG_MS` while holding the event loop. The monolith loads it next to A and C; in the fix,
`create_app` is the template predictor with this model, in a process of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import Field

from patternkit.faults import Faults
from patternkit.models import OnnxModel, Prediction
from patternkit.predictor import ModelSlot, Resources, add_predict_route
from patternkit.service import ServiceState, create_service
from patternkit.settings import PredictorSettings, ServiceSettings

log = logging.getLogger("antipatterns.all_in_one")

POISON_EXIT_CODE = 70  # the exit status of a process killed by the poison input


class FaultKnobs(ServiceSettings):
    """Model B's fault knobs; unset means off."""

    poison_value: float | None = Field(
        None, description="a row whose first feature equals this kills the serving process"
    )
    hog_value: float | None = Field(
        None, description="a row whose first feature equals this burns the CPU for HOG_MS"
    )
    hog_ms: int = Field(1500, ge=0, description="how long the CPU-hog input holds the process")


class FragileModel(OnnxModel):
    """Model B: an ONNX model that crashes or hogs the CPU on its trigger inputs."""

    def __init__(self, path: str | Path, knobs: FaultKnobs) -> None:
        super().__init__(path)
        self.poison = None if knobs.poison_value is None else np.float32(knobs.poison_value)
        self.hog = None if knobs.hog_value is None else np.float32(knobs.hog_value)
        self.hog_ms = knobs.hog_ms

    def predict(self, X: np.ndarray) -> Prediction:
        first = X[:, 0]
        if self.poison is not None and bool(np.any(first == self.poison)):
            log.critical(
                "model %s got the poison input (first feature %s): the process %d dies now",
                self.name, float(self.poison), os.getpid(),
            )
            os._exit(POISON_EXIT_CODE)
        if self.hog is not None and bool(np.any(first == self.hog)):
            log.warning("model %s got the CPU-hog input: busy for %d ms", self.name, self.hog_ms)
            end = time.perf_counter() + self.hog_ms / 1000
            while time.perf_counter() < end:  # pure CPU, holding the GIL and the event loop
                pass
        return super().predict(X)


class FragilePredictorSettings(PredictorSettings, FaultKnobs):
    """The template predictor's settings plus model B's fault knobs."""

    service_name: str = "b"


def create_app(settings: FragilePredictorSettings | None = None) -> FastAPI:
    """Model B alone: the template predictor's `/predict`, served from a `FragileModel`."""
    cfg = settings or FragilePredictorSettings()  # type: ignore[call-arg]
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)
    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        model = await asyncio.to_thread(FragileModel, cfg.model_path, cfg)
        state.model_version = model.version
        state.metadata.update(
            model=model.manifest, model_path=str(model.path), n_features=model.n_features,
            max_batch_rows=cfg.max_batch_rows, poison_value=cfg.poison_value,
            hog_value=cfg.hog_value, hog_ms=cfg.hog_ms,
        )
        log.info("loaded model %s %s from %s", model.name, model.version, model.path)
        yield {"model": ModelSlot(model)}

    app = create_service(cfg, title=f"{cfg.service_name} (model B, alone)", lifespan=lifespan)
    add_predict_route(app, faults, cfg.max_batch_rows)
    return app
