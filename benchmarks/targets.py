"""What the pattern benchmark boots and measures: the stacks and the paths under load.

Each `StackSpec` is a pattern folder booted by `patternkit.topology.Stack`, with the
simulated model delay (`DELAY_MS`) turned off where a pattern's predictors have one, so a
figure is the pattern's own cost. Each `Target` is one measured row of the table: an HTTP path
at some connections (or the S4 batch job and onnxruntime), and the row its rate is divided by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.loadgen import Load
from patternkit.topology import Topology

VERSICOLOR = '{"data": [[7.0, 3.2, 4.7, 1.4]]}'  # not setosa: S6 runs both stages
VIRGINICA = '{"data": [[6.3, 3.3, 6.0, 2.5]]}'
NO_DELAY = {"DELAY_MS": "0"}
PREDICT = Load()  # one iris row to /predict
BATCH = ("S4", "ort")  # the rows measured by benchmarks/batchjob.py, not by a load generator


@dataclass(frozen=True)
class StackSpec:
    """A topology to boot: a pattern folder (or a built Topology) and its env overrides."""

    title: str
    topology: str | Callable[[], Topology]
    env: dict[str, dict[str, str]]


def bare_topology() -> Topology:
    """The bare FastAPI app of benchmarks/serving.py, alone: the HTTP ceiling."""
    return Topology.model_validate({
        "name": "bare", "id": "B", "title": "bare FastAPI", "summary": "the HTTP ceiling",
        "category": "serving", "entry": "bare",
        "services": {"bare": {"app": "benchmarks.bare_app:create_app", "ready": "/ready"}},
    })


def stack_specs(chunk_size: int) -> dict[str, StackSpec]:
    return {
        "web_single": StackSpec("S1 web_single", "serving_patterns/web_single", {}),
        "bare": StackSpec("bare FastAPI", bare_topology, {}),
        "microservice_vertical": StackSpec(
            "S6 microservice_vertical", "serving_patterns/microservice_vertical",
            {"stage1": NO_DELAY, "stage2": NO_DELAY}),
        "microservice_horizontal": StackSpec(
            "S7 microservice_horizontal", "serving_patterns/microservice_horizontal",
            {name: NO_DELAY for name in ("setosa", "versicolor", "virginica")}),
        "prediction_cache": StackSpec(
            "S8 prediction_cache", "serving_patterns/prediction_cache",
            {"predictor": NO_DELAY, "proxy": {"CACHE_TTL_S": "3600"}}),
        # the worker keeps its 1 s per job: only accepting jobs is measured
        "asynchronous": StackSpec("S3 asynchronous", "serving_patterns/asynchronous", {}),
        "batch": StackSpec(
            "S4 batch", "serving_patterns/batch",
            {"worker": {**NO_DELAY, "CHUNK_SIZE": str(chunk_size)},
             "scheduler": {"SCHEDULE_INTERVAL_S": "86400"}}),
    }


@dataclass(frozen=True)
class Target:
    """One row of the table; its ratio is its rate over `baseline`'s in the same round."""

    key: str
    pattern: str  # catalogue id, "-" for the references
    label: str
    stack: str
    service: str | None = None  # None: the stack's entry
    connections: int = 0  # 0: not an HTTP load (S4, onnxruntime)
    load: Load = PREDICT
    baseline: str | None = "direct"
    unit: str = "req/s"

    @property
    def conns(self) -> str:
        return str(self.connections) if self.connections else "-"


SHORT = {"direct": "predictor direct", "direct-1": "predictor direct", "ort": "onnxruntime"}


def all_targets(connections: int, chunk_size: int, batch_rows: int) -> list[Target]:
    """Every row, in the order of a round."""
    c = connections
    return [
        Target("direct", "-", "template predictor, called directly", "web_single", "predictor",
               c, baseline=None),
        Target("bare", "-", "bare FastAPI, constant JSON (the HTTP ceiling)", "bare", None, c),
        Target("S1", "S1", "web_single: lb > predictor (1 hop)", "web_single", None, c),
        Target("S6", "S6", "microservice_vertical: proxy > stage1 > stage2 (chain of 3)",
               "microservice_vertical", None, c, Load(body=VERSICOLOR)),
        Target("S7", "S7", "microservice_horizontal: proxy > 3 predictors (fan-out of 3)",
               "microservice_horizontal", None, c, Load(body=VIRGINICA)),
        Target("S8-hit", "S8", "prediction_cache: HIT (the same body every time)",
               "prediction_cache", None, c),
        Target("S8-miss", "S8", "prediction_cache: MISS (a distinct body every request)",
               "prediction_cache", None, c, Load(vary=True)),
        Target("S3", "S3", "asynchronous: POST /predict, job accepted (202)", "asynchronous",
               None, c, unit="jobs/s"),
        Target("direct-1", "-", "template predictor, called directly", "web_single",
               "predictor", 1, baseline=None),
        Target("S1-1", "S1", "web_single: lb > predictor (1 hop)", "web_single", None, 1,
               baseline="direct-1"),
        Target("S4", "S4", f"batch: a job of {batch_rows:,} rows in chunks of {chunk_size}",
               "batch", baseline="ort", unit="rows/s"),
        Target("ort", "-", f"onnxruntime session.run in-process, chunks of {chunk_size}",
               "batch", baseline=None, unit="rows/s"),
    ]
