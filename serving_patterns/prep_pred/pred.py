"""The pred stage of S5: the classifier alone, `POST /predict` on already-scaled rows.

It is the template predictor's `/predict` (`patternkit.predictor.add_predict_route`) over the
classifier half of the pipeline, loaded in the lifespan. It trusts its input to be scaled:
raw features are valid numbers to it and get confidently wrong answers, which is why the proxy
checks that prep and pred report the same `train_run_id` (/metadata, `X-Train-Run-Id`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from patternkit.faults import Faults
from patternkit.models import OnnxModel
from patternkit.predictor import add_predict_route
from patternkit.service import ServiceState, create_service
from patternkit.settings import PredictorSettings
from serving_patterns.prep_pred.lineage import RunIdHeader, publish_run_id


class PredSettings(PredictorSettings):
    """The template predictor's settings (MODEL_PATH, DELAY_MS, FAIL_MODE, ...), named pred."""

    service_name: str = "pred"


def create_app(settings: PredSettings | None = None) -> FastAPI:
    cfg = settings or PredSettings()
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)
    holder: dict[str, OnnxModel] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        model = await asyncio.to_thread(OnnxModel, cfg.model_path)  # raises: no start
        publish_run_id(state, model.manifest)
        holder["model"] = model
        state.model_version = model.version
        state.metadata.update(model=model.manifest, model_path=str(model.path),
                              n_features=model.n_features, max_batch_rows=cfg.max_batch_rows)
        yield

    app = create_service(cfg, title="prep-pred: pred (classifier)", lifespan=lifespan)
    state: ServiceState = app.state.service
    app.add_middleware(RunIdHeader, state=state)
    add_predict_route(app, state, lambda: holder.get("model"), faults, cfg.max_batch_rows)
    return app
