"""The HTTP ceiling for the serving benchmark: a bare FastAPI endpoint returning a constant."""

from __future__ import annotations

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict() -> dict[str, object]:
        return {"prediction": [0], "probabilities": [[0.98, 0.02, 0.0]]}

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app
