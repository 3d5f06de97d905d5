"""The load plan and SLO gate file (TOML): what to send, for how long, and what must hold.

`[request]` is what each request is (path, row width, random batch sizes), `[closed]` the
closed-loop phase (N Locust users sending back to back: capacity), `[open]` the open-loop
phase (a constant arrival rate: latency at a given load), `[batch]` the batch size the
projection is for, and `[thresholds]` the gate, k6-style: `"open.p95" = "< 50"` fails the run
(exit code 99, as k6's) when the measured value breaks it. A threshold naming a metric that
does not exist is an error, not a silent pass (k6 issue #1526).
"""

from __future__ import annotations

import operator
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Phase = Literal["closed", "open"]
PHASES: tuple[Phase, ...] = ("closed", "open")

# what every phase measures (ms for latencies; p50..max over the successful requests)
PHASE_METRICS = {
    "requests": "answers received (any status)",
    "ok": "answers with a 2xx/3xx status",
    "errors": "answers with another status, and requests that got no answer",
    "error_rate": "errors / requests",
    "rps": "successful answers per second",
    "rows_per_s": "rows predicted per second",
    "p50": "median latency, ms (open loop: from the time the request was due)",
    "p95": "95th percentile latency, ms",
    "p99": "99th percentile latency, ms",
    "mean": "mean latency, ms",
    "max": "largest latency, ms",
    "ms_per_row": "service time per row, ms (sum of latencies / sum of rows)",
    "projected_s": "time for [batch] rows sent as these batches one after another, s",
    "cpu_ms_per_request": "server CPU per answered request, ms (with --pid)",
}
OPEN_METRICS = {
    "offered": "requests the schedule offered",
    "offered_rps": "the constant arrival rate offered",
    "sent": "requests sent on time",
    "dropped": "requests that could not be sent on time (no free user)",
    "dropped_rate": "dropped / offered",
    "achieved_rps": "successful answers per second of the schedule, against offered_rps",
    "service_p50": "median latency from the actual send, ms",
    "service_p95": "95th percentile latency from the actual send, ms",
    "service_p99": "99th percentile latency from the actual send, ms",
    "late_p99_ms": "99th percentile of how late requests were sent, ms",
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
CONDITION = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?\d+)?)\s*$")


class PlanError(ValueError):
    """A plan file that cannot be read or does not follow the schema."""


class RequestPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field("/predict", pattern=r"^/")
    features: int | None = Field(None, ge=1, description="row width; default: /metadata")
    batch: tuple[int, int] = Field((1, 100), description="rows per request: uniform in [a, b]")
    seed: int = 7
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError("expected [min, max] rows with 1 <= min <= max")
        return value


class ClosedPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: int = Field(4, ge=1, le=1000, description="concurrent users, back to back")
    seconds: int = Field(3, ge=0, le=3600, description="0 skips the phase")
    warmup_s: float = Field(0.5, ge=0, le=600, description="sent first, not measured")


class OpenPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float = Field(20.0, gt=0, description="requests per second offered")
    seconds: int = Field(0, ge=0, le=3600, description="0 skips the phase")
    users: int = Field(20, ge=1, le=1000, description="the most requests in flight")
    late_ms: float = Field(50.0, ge=0, description="a request not sent within this is dropped")
    warmup_s: float = Field(0.5, ge=0, le=600, description="sent first, not measured")


class BatchPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = Field(1_000_000, ge=1, description="rows of the batch the projection is for")


@dataclass(frozen=True)
class Threshold:
    """`metric op limit`, e.g. `open.p95 < 50`."""

    metric: str
    op: str
    limit: float

    @property
    def condition(self) -> str:
        return f"{self.op} {self.limit:g}"

    def holds(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.limit)


class LoadPlan(BaseModel):
    """A whole plan file."""

    model_config = ConfigDict(extra="forbid")

    request: RequestPlan = Field(default_factory=lambda: RequestPlan())
    closed: ClosedPlan = Field(default_factory=lambda: ClosedPlan())
    open: OpenPlan = Field(default_factory=lambda: OpenPlan())
    batch: BatchPlan = Field(default_factory=lambda: BatchPlan())
    thresholds: dict[str, str] = Field(default_factory=dict)

    @property
    def phases(self) -> list[Phase]:
        """The phases that run, in order."""
        return [p for p in PHASES if getattr(self, p).seconds > 0]

    @property
    def primary(self) -> Phase:
        """The phase the report's top-level figures come from: closed if it runs."""
        return self.phases[0]

    @model_validator(mode="after")
    def _checks(self) -> LoadPlan:
        if not self.phases:
            raise ValueError("no phase runs: set [closed] seconds or [open] seconds above 0")
        for key, text in self.thresholds.items():
            parse_threshold(key, text, self.phases)
        return self

    def gate(self) -> list[Threshold]:
        return [parse_threshold(k, v, self.phases) for k, v in self.thresholds.items()]

    def only(self, *phases: Phase) -> LoadPlan:
        """This plan with only `phases` running, and only their thresholds."""
        data = self.model_dump()
        for phase in PHASES:
            if phase not in phases:
                data[phase]["seconds"] = 0
        data["thresholds"] = {t.metric: t.condition for t in self.gate()
                              if t.metric.split(".")[0] in phases}
        return LoadPlan.model_validate(data)


def parse_threshold(key: str, text: str, phases: list[Phase]) -> Threshold:
    """`"open.p95" = "< 50"` -> Threshold; a ValueError naming what is wrong."""
    phase, dot, name = key.rpartition(".")
    if not dot:
        phase = phases[0]
    if phase not in PHASES:
        raise ValueError(f"thresholds.{key}: unknown phase {phase!r}; use closed. or open.")
    known = {**PHASE_METRICS, **(OPEN_METRICS if phase == "open" else {})}
    if name not in known:
        raise ValueError(f"thresholds.{key}: no metric {name!r} in the {phase} phase; "
                         f"known: {', '.join(known)}")
    if phase not in phases:
        raise ValueError(f"thresholds.{key}: the {phase} phase does not run ([{phase}] seconds)")
    match = CONDITION.match(str(text))
    if not match:
        raise ValueError(f"thresholds.{key}: {text!r} is not a condition like '< 250' "
                         "(operators <, <=, >, >=)")
    return Threshold(f"{phase}.{name}", match.group(1), float(match.group(2).replace("_", "")))


def load_plan(source: str | Path | Mapping[str, Any]) -> LoadPlan:
    """A plan from a TOML file (or an already parsed mapping); PlanError names the problem."""
    where = str(source) if not isinstance(source, Mapping) else "plan"
    try:
        data = source if isinstance(source, Mapping) else tomllib.loads(Path(source).read_text())
        return LoadPlan.model_validate(data)
    except OSError as exc:
        raise PlanError(f"{where}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{where}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise PlanError(f"{where}: {problems}") from None
