"""The legacy predictor of OA2: the template predictor with nothing to tell about itself.

It serves the same model file as the documented one, takes bare floats (`{"data": [[...]]}`,
no unit) and has no `/metadata` (404): nobody can ask it who owns it, what it was trained on
or which unit it expects. Sent inches instead of centimetres, it answers 200 with other
predictions and no sign that anything changed.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import BaseRoute

from patternkit.predictor import create_app as create_template
from patternkit.settings import PredictorSettings


class LegacySettings(PredictorSettings):
    service_name: str = "legacy"


def create_app(settings: LegacySettings | None = None) -> FastAPI:
    app = create_template(settings or LegacySettings())

    def kept(route: BaseRoute) -> bool:
        return getattr(route, "path", None) != "/metadata"

    app.router.routes[:] = [r for r in app.router.routes if kept(r)]  # nobody wrote it down
    return app
