"""The routing rules of O7: which model answers a request, decided by the request's condition.

`Rules` is the rules file (`rules.yaml`), validated with pydantic. Named rules are tried in
the file's order, and the first whose conditions all hold picks the backend. The conditions
are an hour window (`hours: [start, end)`, wrapping past midnight when start > end), a
`region` list and a `device` list. A request no rule matches goes to `default`, or gets a 400
when there is none. `Condition` is what a request says: its hour (from the body, from the
`X-Client-Time` header, or from the `clock` time zone the rules name), region and device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from patternkit.service import ApiError

NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
DEFAULT_RULE = "default"


def _backends(info: ValidationInfo) -> list[str] | None:
    names = (info.context or {}).get("backends")
    return list(names) if names else None


def _check_backend(value: str | None, info: ValidationInfo) -> str | None:
    names = _backends(info)
    if value is not None and names is not None and value not in names:
        raise ValueError(f"no backend named {value!r}; backends: {', '.join(names)}")
    return value


class Rule(BaseModel):
    """One rule: conditions that must all hold, and the backend that answers then."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field(..., description="the backend (a name in BACKENDS) that answers")
    hours: tuple[int, int] | None = Field(
        None, description="[start, end): 0-23 and 1-24; start > end wraps past midnight"
    )
    region: list[str] | None = Field(None, min_length=1, description="any of these regions")
    device: list[str] | None = Field(None, min_length=1, description="any of these devices")

    @field_validator("backend")
    @classmethod
    def _backend_known(cls, value: str, info: ValidationInfo) -> str:
        _check_backend(value, info)
        return value

    @field_validator("hours")
    @classmethod
    def _window(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return None
        start, end = value
        if not (0 <= start <= 23 and 1 <= end <= 24):
            raise ValueError(f"[{start}, {end}]: start must be 0-23 and end 1-24")
        if start == end % 24:
            raise ValueError(f"[{start}, {end}]: start and end are the same hour")
        return value

    @field_validator("region", "device")
    @classmethod
    def _lower(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [v.strip().lower() for v in value]

    @model_validator(mode="after")
    def _some_condition(self) -> Rule:
        if self.hours is None and self.region is None and self.device is None:
            raise ValueError("a rule needs at least one condition: hours, region or device")
        return self

    def matches(self, condition: Condition) -> bool:
        if self.hours is not None:
            if condition.hour is None:
                return False
            start, end = self.hours
            inside = start <= condition.hour < end if start < end else (
                condition.hour >= start or condition.hour < end)
            if not inside:
                return False
        if self.region is not None and condition.region not in self.region:
            return False
        return self.device is None or condition.device in self.device


class Rules(BaseModel):
    """The rules file: named rules in order, the default backend, and the fallback clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = Field(
        None, description="the backend for a request no rule matches (none: a 400)"
    )
    clock: str | None = Field(
        None, description="time zone whose clock gives the hour a request does not (none: "
        "only the request's own hour counts)",
    )
    rules: dict[str, Rule] = Field(..., min_length=1, description="tried in order")

    @field_validator("default")
    @classmethod
    def _default_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_backend(value, info)

    @field_validator("clock", mode="before")
    @classmethod
    def _clock(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        if isinstance(value, str) and value.upper() != "UTC":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("rules")
    @classmethod
    def _names(cls, value: dict[str, Rule]) -> dict[str, Rule]:
        for name in value:
            if not re.match(NAME, name) or name == DEFAULT_RULE:
                raise ValueError(f"rule name {name!r}: letters, digits, _ or -, not "
                                 f"{DEFAULT_RULE!r}")
        return value

    def zone(self) -> tzinfo | None:
        if self.clock is None:
            return None
        return UTC if self.clock.upper() == "UTC" else ZoneInfo(self.clock)

    def route(self, condition: Condition) -> tuple[str, str] | None:
        """(rule name, backend) for the condition: the first rule that matches, else
        ("default", the default backend), else None."""
        for name, rule in self.rules.items():
            if rule.matches(condition):
                return name, rule.backend
        if self.default is not None:
            return DEFAULT_RULE, self.default
        return None


@dataclass(frozen=True)
class Condition:
    """What a request says about itself; `hour_from` says where its hour came from."""

    hour: int | None
    hour_from: str  # request (its body or query), x-client-time, clock or none
    region: str | None
    device: str | None

    def view(self) -> dict[str, Any]:
        return {"hour": self.hour, "hour_from": self.hour_from, "region": self.region,
                "device": self.device}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.view().items() if k != "hour_from")


def client_hour(value: str) -> int:
    """The hour of an `X-Client-Time` header: an ISO 8601 time of day or date-time, read as
    the client's own wall clock (its offset, if any, says where that is)."""
    text = value.strip()
    try:
        return datetime.fromisoformat(text).hour
    except ValueError:
        pass
    try:
        return time.fromisoformat(text).hour
    except ValueError:
        raise ApiError(
            422, f"header X-Client-Time: expected an ISO 8601 time such as "
            f"2026-05-01T08:30:00+09:00 or 08:30, got {text[:40]!r}", "validation_error",
            [{"loc": "header.x-client-time", "msg": "not an ISO 8601 time"}],
        ) from None


def condition_of(
    hour: int | None, region: str | None, device: str | None, client_time: str | None,
    zone: tzinfo | None,
) -> Condition:
    """The request's condition: its own hour, else the one of X-Client-Time, else from
    the rules' clock, else none."""
    if hour is not None:
        source = "request"
    elif client_time:
        hour, source = client_hour(client_time), "x-client-time"
    elif zone is not None:
        hour, source = datetime.now(zone).hour, "clock"
    else:
        source = "none"
    return Condition(hour, source, region.strip().lower() if region else None,
                     device.strip().lower() if device else None)
