"""Calling a model backend from a proxy: one timed `/predict` call that fails by name.

`call_model` sends rows to a template predictor with a hard deadline and returns what it said
(model, version, served_by, labels, probabilities) and how long it took. Every failure
(timeout, refused connection, an error status, a malformed reply) becomes a `BackendFailed`:
an `ApiError` with a 502/503/504 naming the backend, never a 500. S6 chains these calls; S7
runs them in parallel and turns each failure into a named gap in a partial answer
(serving_patterns.microservice_vertical and microservice_horizontal).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from patternkit.proxy import Upstream, error_message
from patternkit.schemas import PredictResponse
from patternkit.service import ApiError


@dataclass(frozen=True)
class Backend:
    """A named model backend (a template predictor) at a base URL."""

    name: str
    url: str

    @property
    def predict_url(self) -> str:
        return self.url.rstrip("/") + "/predict"


def parse_backends(value: str) -> list[Backend]:
    """`name=url,name=url` -> backends, in order; a malformed list is a ValueError."""
    backends: list[Backend] = []
    for item in (part.strip() for part in value.split(",")):
        name, sep, url = item.partition("=")
        if not item or not sep or not name.strip() or not url.strip():
            raise ValueError(f"backend {item!r} is not name=url (in {value!r})")
        backends.append(Backend(name.strip(), url.strip().rstrip("/")))
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique: {names}")
    return backends


@dataclass
class ModelReply:
    """A backend's answer to one call, with the time the proxy waited for it."""

    backend: str
    model: str
    version: str
    served_by: str
    ms: float
    prediction: list[int]
    probabilities: list[list[float]]

    def trace(self, **extra: Any) -> dict[str, Any]:
        """Who answered and how fast, without the per-row outputs."""
        return {"name": self.backend, "served_by": self.served_by, "model": self.model,
                "version": self.version, "ms": self.ms, **extra}


class BackendFailed(ApiError):
    """A backend gave no usable answer; the message and `details` name it and say why."""

    def __init__(
        self, backend: Backend, status: int, error: str, reason: str, ms: float
    ) -> None:
        super().__init__(
            status, f"{backend.name}: {reason}", error,
            [{"backend": backend.name, "url": backend.url, "reason": reason}],
        )
        self.backend = backend
        self.reason = reason
        self.ms = ms

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "reason": self.reason,
                "url": self.backend.url, "ms": self.ms}


async def call_model(
    upstream: Upstream, backend: Backend, X: np.ndarray, rid: str | None, timeout_s: float
) -> ModelReply:
    """POST the rows `X` to the backend's /predict within `timeout_s`, or raise BackendFailed."""
    body = orjson.dumps({"data": X}, option=orjson.OPT_SERIALIZE_NUMPY)
    started = time.perf_counter()

    def took() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.timeout(timeout_s):
            reply = await upstream.call(
                "POST", backend.predict_url, body=body, rid=rid, timeout_s=timeout_s
            )
    except (TimeoutError, ApiError) as exc:
        if isinstance(exc, TimeoutError) or exc.status == 504:
            raise BackendFailed(
                backend, 504, "backend_timeout",
                f"no answer within {timeout_s * 1000:.0f} ms", took(),
            ) from None
        cause = exc.message.rsplit(": ", 1)[-1]  # e.g. connection refused
        raise BackendFailed(
            backend, 502, exc.error, f"unreachable at {backend.url} ({cause})", took()
        ) from None
    ms = took()
    if reply.status != 200:
        status = 503 if reply.status == 503 else 502
        raise BackendFailed(
            backend, status, "backend_error",
            f"answered {reply.status}: {error_message(reply.body)}", ms,
        )
    try:
        out = PredictResponse.model_validate_json(reply.body)
    except ValidationError as exc:
        raise BackendFailed(
            backend, 502, "backend_bad_reply", f"sent a malformed reply: {exc.errors()[0]}", ms
        ) from None
    if len(out.prediction) != len(X):
        raise BackendFailed(
            backend, 502, "backend_bad_reply",
            f"answered {len(out.prediction)} rows for {len(X)}", ms,
        )
    return ModelReply(backend.name, out.model, out.version, out.served_by, ms,
                      out.prediction, out.probabilities)
