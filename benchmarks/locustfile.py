"""Locust user for the serving benchmark (used when wrk is not installed)."""

from __future__ import annotations

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

BODY = b'{"data": [[5.1, 3.5, 1.4, 0.2]]}'


class PredictUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        self.client.post("/predict", data=BODY, headers={"content-type": "application/json"})
