"""The fix of TA2: the slim server, which is the template predictor and nothing else.

Serving code only: the API, input checks, the ONNX model run with onnxruntime and numpy, and
the answer. No training library is imported, no DWH is configured and there is no `/train`
route. `GET /debug/modules` (`modules.py`) shows what the process has imported.
"""

from __future__ import annotations

from fastapi import FastAPI

from antipatterns.training_code_in_serving.modules import add_modules_route
from patternkit.predictor import create_app as create_predictor
from patternkit.settings import PredictorSettings


class SlimSettings(PredictorSettings):
    service_name: str = "slim_server"


def create_app(settings: SlimSettings | None = None) -> FastAPI:
    """The template predictor plus `/debug/modules`."""
    app = create_predictor(settings or SlimSettings())
    add_modules_route(app)
    return app
