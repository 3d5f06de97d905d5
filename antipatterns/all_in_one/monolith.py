"""The antipattern of SA2: one process serves all three models on `/predict/{a,b,c}`.

Model A (iris_lr), model B (iris_rf, a `FragileModel`) and model C (wine_lr) load together in
the lifespan and share one event loop, one release and one fate: B's poison input kills the
process, and with it A and C; B's CPU hog stalls A and C; and shipping a new B means
restarting the whole monolith, so A and C are down while it restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import Field

from antipatterns.all_in_one.fragile_predictor import FaultKnobs, FragileModel
from patternkit.faults import Faults
from patternkit.models import OnnxModel
from patternkit.predictor import ModelSlot, add_predict_route
from patternkit.service import ServiceState, create_service

log = logging.getLogger("antipatterns.all_in_one")

MODELS = ("a", "b", "c")


class MonolithSettings(FaultKnobs):
    """Where the three models live, and model B's fault knobs."""

    service_name: str = "monolith"
    model_a_path: str = Field(..., description="model A (iris_lr) directory")
    model_b_path: str = Field(..., description="model B (iris_rf) directory")
    model_c_path: str = Field(..., description="model C (wine_lr) directory")
    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")


def create_app(settings: MonolithSettings | None = None) -> FastAPI:
    """All three models in one app; ready once all three are loaded."""
    cfg = settings or MonolithSettings()  # type: ignore[call-arg]
    def load_all() -> dict[str, OnnxModel]:
        return {
            "a": OnnxModel(cfg.model_a_path),
            "b": FragileModel(cfg.model_b_path, cfg),
            "c": OnnxModel(cfg.model_c_path),
        }

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[dict[str, ModelSlot]]:
        models = await asyncio.to_thread(load_all)
        state.metadata.update(
            models={
                key: {"name": m.name, "version": m.version, "path": str(m.path),
                      "n_features": m.n_features}
                for key, m in models.items()
            },
            poison_value=cfg.poison_value, hog_value=cfg.hog_value, hog_ms=cfg.hog_ms,
        )
        for key, m in models.items():
            log.info("model %s: loaded %s %s from %s", key, m.name, m.version, m.path)
        yield {f"model_{key}": ModelSlot(m) for key, m in models.items()}

    app = create_service(cfg, title="all-in-one: the monolith (models A, B, C)", lifespan=lifespan)
    for key in MODELS:
        add_predict_route(
            app, Faults(), cfg.max_batch_rows, path=f"/predict/{key}", slot=f"model_{key}"
        )
    return app
