"""The proxy of QA1: Q2's online A/B proxy (`patternkit.abproxy`), with the offline ranking beside
the online one in its report.

The fix for "offline-only" is to judge the model where its value is made: the same split,
exposure log (`offline_only_prediction_log`, sqlalchemy through `patternkit.predlog`),
conversion events and always-valid report as Q2, with the KPI as a guardrail
(`GUARDRAIL_KPI=true`), so the guard rolls B back when B loses conversions beyond noise.
`GET /ab/report` adds `rankings`: the variants ranked by held-out accuracy (the trainer's
`offline_report.json`) and by online conversion rate, side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import Field

from patternkit.abproxy import ABSettings, create_ab_proxy
from patternkit.abstore import experiment_metadata

NAME = "offline_only"
METADATA = experiment_metadata(NAME)  # the pattern's tables, for the catalogue's checks


class OfflineOnlySettings(ABSettings):
    offline_report: str = Field(..., description="the trainer's offline_report.json")


class Rankings:
    """The report's `rankings` section; the offline report is read once it is there."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.offline: dict[str, Any] | None = None

    def __call__(self, report: dict[str, Any]) -> dict[str, Any]:
        if self.offline is None:
            self.offline = json.loads(self.path.read_text())
        models = self.offline["models"]
        variants = report["variants"]
        online = sorted(("a", "b"), key=lambda v: -(variants[v]["rate"] or 0.0))
        return {"rankings": {
            "offline": [{"rank": i + 1, "variant": v, "model": models[v]["model"],
                         "accuracy": models[v]["accuracy"]}
                        for i, v in enumerate(self.offline["ranking"])],
            "online": [{"rank": i + 1, "variant": v, "model": models[v]["model"],
                        "conversion_rate": variants[v]["rate"], "users": variants[v]["units"]}
                       for i, v in enumerate(online)],
            "agree": self.offline["ranking"] == online,
            "online_beyond_noise": report["effect"]["significant"],
        }}


def create_app(settings: OfflineOnlySettings | None = None) -> FastAPI:
    cfg = settings or OfflineOnlySettings()
    return create_ab_proxy(cfg, NAME, title="offline-only: the A/B proxy that catches it",
                           extra=Rankings(cfg.offline_report))
