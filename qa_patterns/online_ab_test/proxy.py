"""The proxy of Q2: the online A/B proxy of `patternkit.abproxy`, wired to this pattern's tables.

It splits users between the variants A and B (`AB_WEIGHT_B` percent to B, sticky by a hash of
`X-User-ID`), logs every exposure to `online_ab_test_prediction_log` (sqlalchemy, through
`patternkit.predlog`), stores conversions (`POST /events`) in `online_ab_test_events`, starts a
phase in `online_ab_test_phases` on every `PUT /config`, and serves `/ab/report` (SRM,
always-valid test, power, guardrails), `/ab/decision` and the guard that rolls B back.
"""

from __future__ import annotations

from fastapi import FastAPI

from patternkit.abproxy import ABSettings, create_ab_proxy
from patternkit.abstore import experiment_metadata

NAME = "online_ab_test"
METADATA = experiment_metadata(NAME)  # the pattern's tables, for the catalogue's checks


def create_app(settings: ABSettings | None = None) -> FastAPI:
    return create_ab_proxy(settings or ABSettings(), NAME, title="online A/B test: proxy")
