"""The antipattern of TA2: the fat server, a predictor that carries the training code with it.

It serves the same model as the slim server with the same template code, but it imports the
training module (`training.py`: pandas, scikit-learn, skl2onnx, SQLAlchemy) at start-up, has
the DWH's address in its environment (`DWH_URL`) and exposes `POST /train`, which reads the
DWH, fits a model and exports it in the serving process. Every one of those costs memory and
start time, widens what the server can reach, and puts a heavy CPU job next to the requests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from antipatterns.training_code_in_serving import training  # the antipattern, in one line
from antipatterns.training_code_in_serving.modules import add_modules_route
from patternkit.db import show_url
from patternkit.predictor import create_app as create_predictor
from patternkit.service import ApiError, ServiceState
from patternkit.settings import PredictorSettings

TRAIN_EXAMPLE = {"model": "iris_lr", "version": "1.1.0", "rows_read": 150,
                 "dwh": "sqlite:///.runs/training_code_in_serving-.../dwh.sqlite",
                 "wrangling": "pandas", "metrics": {"accuracy": 0.9111, "n_train": 105,
                                                    "n_test": 45},
                 "sha256": "...", "model_dir": ".runs/.../trained/1.1.0", "seconds": 0.12}


class FatSettings(PredictorSettings):
    """The template predictor's settings plus what training needs."""

    service_name: str = "fat_server"
    dwh_url: str = Field(..., description="the DWH the training code reads (training-only)")
    train_dir: str = Field(..., description="where POST /train writes the models it trains")


class TrainRequest(BaseModel):
    version: str = Field("1.1.0", pattern=r"^\d{1,6}\.\d{1,6}\.\d{1,6}$",
                         description="the version of the model to train (X.Y.Z)")
    seed: int = Field(42, ge=0, description="the split's and the estimator's seed")


def create_app(settings: FatSettings | None = None) -> FastAPI:
    """The template predictor plus `/debug/modules` and `POST /train`."""
    cfg = settings or FatSettings()
    app = create_predictor(cfg)
    add_modules_route(app)
    state: ServiceState = app.state.service
    state.metadata.update(dwh=show_url(cfg.dwh_url), train_dir=cfg.train_dir)
    busy = asyncio.Lock()

    async def train(body: TrainRequest | None = None) -> dict[str, Any]:
        """Read the DWH, train a model and export it, in the serving process (one at a time)."""
        req = body or TrainRequest()
        if busy.locked():
            raise ApiError(409, "a training run is in progress; try again when it ends",
                           "training_in_progress")
        async with busy:
            result = await asyncio.to_thread(
                training.train, cfg.dwh_url, Path(cfg.train_dir) / req.version,
                req.version, req.seed)
        state.metadata["last_training"] = result
        return result

    app.post("/train", tags=["training"], responses={
        200: {"description": "trained and exported (not served)",
              "content": {"application/json": {"example": TRAIN_EXAMPLE}}},
        409: {"description": "another training run is in progress"},
    })(train)
    return app
