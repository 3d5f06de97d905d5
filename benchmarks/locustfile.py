"""Locust user for the benchmarks (used when wrk is not installed).

Each user POSTs `BENCH_BODY` to `BENCH_PATH` (default: one iris row to /predict) in a loop.
With `BENCH_VARY_TEMPLATE` every request gets a distinct body (`template % (tag, n)`, n from
one counter shared by all users), for cache MISS runs. With `BENCH_LATENCIES` every request
is recorded and written there as JSON when the test stops (unrounded response times in ms,
failures, the first and last completion times): locust's own CSV rounds times to whole
milliseconds, too coarse for sub-millisecond hops, and misses the last second's requests.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

from locust import constant, events, task
from locust.contrib.fasthttp import FastHttpUser

PATH = os.environ.get("BENCH_PATH", "/predict")
BODY = os.environ.get("BENCH_BODY", '{"data": [[5.1, 3.5, 1.4, 0.2]]}')
TEMPLATE = os.environ.get("BENCH_VARY_TEMPLATE")
TAG = int(os.environ.get("BENCH_VARY_TAG", "0"))
LATENCIES = os.environ.get("BENCH_LATENCIES")
HEADERS = {"content-type": "application/json"}
_counter = itertools.count(1)
_times: list[float] = []
_seen = {"failures": 0, "first": 0.0, "last": 0.0}


def body() -> str:
    if TEMPLATE is None:
        return BODY
    return TEMPLATE % (TAG, next(_counter))


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, **_: Any) -> None:
    now = time.perf_counter()
    if not _seen["first"]:
        _seen["first"] = now
    _seen["last"] = now
    if exception is None:
        _times.append(response_time)
    else:
        _seen["failures"] += 1


@events.test_stop.add_listener
def _dump(**_: Any) -> None:
    if LATENCIES:
        with open(LATENCIES, "w") as handle:
            json.dump({**_seen, "times": _times}, handle)


class PredictUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        self.client.post(PATH, data=body(), headers=HEADERS)
