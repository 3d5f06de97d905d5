"""The pred stage of S5: the classifier alone, `POST /predict` on already-scaled rows.

It is the template predictor (`patternkit.predictor`) over the classifier half of the
pipeline, publishing the artifact's `train_run_id` once it has loaded. It trusts its input to
be scaled: raw features are valid numbers to it and get confidently wrong answers, which is
why the proxy checks that prep and pred report the same `train_run_id` (/metadata,
`X-Train-Run-Id`).
"""

from __future__ import annotations

from fastapi import FastAPI

from patternkit import predictor
from patternkit.settings import PredictorSettings
from serving_patterns.prep_pred.lineage import publish_run_id


class PredSettings(PredictorSettings):
    """The template predictor's settings (MODEL_PATH, DELAY_MS, FAIL_MODE, ...), named pred."""

    service_name: str = "pred"


def create_app(settings: PredSettings | None = None) -> FastAPI:
    return predictor.create_app(
        settings or PredSettings(),
        on_load=lambda state, model: publish_run_id(state, model.manifest),
    )
