"""Calling a model backend from a proxy: one timed `/predict` call that fails by name.

`call_model` sends rows to a template predictor with a hard deadline and returns what it said
(model, version, served_by, labels, probabilities) and how long it took. Every failure
(timeout, refused connection, an error status, a malformed reply) becomes a `BackendFailed`:
an `ApiError` with a 502/503/504 naming the backend, never a 500. S6 chains these calls; S7
runs them in parallel and turns each failure into a named gap in a partial answer
(serving_patterns.microservice_vertical and microservice_horizontal);
`call_model_retrying` tries again after a failure within one deadline for every attempt
(O6's RETRY and TIMEOUT_SECOND).

`call_backend` is the timed call with that failure mapping under it (SA2's router passes the
replies on), `timed_call` the one timed HTTP call under all of them; `RemoteModel` is a
predictor as a proxy sees it: its version, input width and batch limit learned from its
`/metadata` and refreshed in the background (S8), so no proxy keeps its own way of knowing
them; `watch_models` and `input_width` do it for a proxy of several (S6, S7).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from patternkit.proxy import Reply, Upstream, error_message
from patternkit.schemas import PredictResponse
from patternkit.service import ApiError, ServiceState, background

log = logging.getLogger("patternkit.backends")


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
        self, backend: Backend, status: int, error: str, reason: str, ms: float,
        who: str | None = None, answered: int | None = None,
    ) -> None:
        super().__init__(
            status, f"{who or backend.name}: {reason}", error,
            [{"backend": backend.name, "url": backend.url, "reason": reason}],
        )
        self.backend = backend
        self.reason = reason
        self.ms = ms
        self.answered = answered  # the backend's own status, when it answered

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed: not after a timeout (the time is spent) nor
        after a 4xx (the backend refused the input, and would again)."""
        refused = self.answered is not None and 400 <= self.answered < 500
        return self.status != 504 and not refused

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "reason": self.reason,
                "url": self.backend.url, "ms": self.ms}


async def timed_call(
    upstream: Upstream, method: str, url: str, *, body: bytes | None = None,
    rid: str | None = None, timeout_s: float | None = None, name: str | None = None,
) -> tuple[Reply, float]:
    """One backend call and the milliseconds it took (502/504 ApiErrors as Upstream.call)."""
    started = time.perf_counter()
    reply = await upstream.call(method, url, body=body, rid=rid, timeout_s=timeout_s, name=name)
    return reply, round((time.perf_counter() - started) * 1000, 1)


async def call_backend(
    upstream: Upstream, backend: Backend, method: str, url: str, *, body: bytes | None = None,
    rid: str | None = None, timeout_s: float, who: str | None = None,
) -> tuple[Reply, float]:
    """One call to `backend` within `timeout_s`: its reply (below 500) and the milliseconds.

    No answer in time is a 504 `backend_timeout`, no answer at all (refused, dropped) a 502,
    a 5xx reply a 502 `backend_error` (a 503 stays a 503): each a `BackendFailed` whose
    message starts with `who` (default: the backend's name) and whose details name it.
    """
    started = time.perf_counter()

    def took() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.timeout(timeout_s):
            reply = await upstream.call(method, url, body=body, rid=rid, timeout_s=timeout_s)
    except (TimeoutError, ApiError) as exc:
        if isinstance(exc, TimeoutError) or exc.status == 504:
            raise BackendFailed(
                backend, 504, "backend_timeout",
                f"no answer within {timeout_s * 1000:.0f} ms", took(), who,
            ) from None
        cause = exc.message.rsplit(": ", 1)[-1]  # e.g. connection refused, connection dropped
        # refused: nothing listens there; dropped: it took the call and died before answering
        what = "gave no answer at" if cause == "connection dropped" else "unreachable at"
        raise BackendFailed(
            backend, 502, exc.error, f"{what} {backend.url} ({cause})", took(), who,
        ) from None
    ms = took()
    if reply.status >= 500:
        raise BackendFailed(
            backend, 503 if reply.status == 503 else 502, "backend_error",
            f"answered {reply.status}: {error_message(reply.body)}", ms, who, reply.status,
        )
    return reply, ms


async def call_model(
    upstream: Upstream, backend: Backend, X: np.ndarray, rid: str | None, timeout_s: float
) -> ModelReply:
    """POST the rows `X` to the backend's /predict within `timeout_s`, or raise BackendFailed."""
    body = orjson.dumps({"data": X}, option=orjson.OPT_SERIALIZE_NUMPY)
    reply, ms = await call_backend(
        upstream, backend, "POST", backend.predict_url, body=body, rid=rid, timeout_s=timeout_s
    )
    if reply.status != 200:
        raise BackendFailed(
            backend, 502, "backend_error",
            f"answered {reply.status}: {error_message(reply.body)}", ms, answered=reply.status,
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


@dataclass
class Retried:
    """A model's answer after `attempts` calls, and the failures before it."""

    reply: ModelReply
    failures: list[BackendFailed]

    @property
    def attempts(self) -> int:
        return len(self.failures) + 1


class RetriesFailed(BackendFailed):
    """Every attempt failed: the last failure's status and error, each attempt in `details`."""

    def __init__(self, backend: Backend, failures: list[BackendFailed], attempts: int,
                 timeout_s: float) -> None:
        last = failures[-1]
        if last.status == 504:
            reason = f"no answer within {timeout_s * 1000:.0f} ms"
        else:
            reason = last.reason
        super().__init__(
            backend, last.status, last.error,
            f"{reason} (attempt {len(failures)} of {attempts})",
            round(sum(f.ms for f in failures), 1), answered=last.answered,
        )
        self.failures = failures
        self.details = [{"attempt": i, "backend": backend.name, **f.summary()}
                        for i, f in enumerate(failures, 1)]


async def call_model_retrying(
    upstream: Upstream, backend: Backend, X: np.ndarray, rid: str | None, *,
    attempts: int, timeout_s: float,
) -> Retried:
    """`call_model` up to `attempts` times within one deadline of `timeout_s` for them all:
    the caller never waits longer than that. A failure is tried again at once while time is
    left, unless it is a timeout (the time is spent) or a 4xx (the input was refused);
    when no attempt succeeds, a `RetriesFailed` names the backend and lists each attempt."""
    deadline = time.perf_counter() + timeout_s
    failures: list[BackendFailed] = []
    while len(failures) < attempts:
        left = deadline - time.perf_counter()
        if left <= 0 and failures:
            break
        try:
            reply = await call_model(upstream, backend, X, rid, max(left, 0.001))
        except BackendFailed as exc:
            failures.append(exc)
            if not exc.retryable:
                break
            continue
        return Retried(reply, failures)
    raise RetriesFailed(backend, failures, attempts, timeout_s)


class RemoteModel:
    """A predictor's model as a proxy knows it, from the predictor's `/metadata`.

    `version`, `n_features` and `max_batch_rows` are None until the predictor has a model;
    `run()` (a lifespan background task) re-reads them every `refresh_s` once known, every
    0.2 s before, and keeps the last ones when a read fails. `on_change(old, new)` hears of a
    new version; `learn(version)` takes one seen on a reply (X-Model-Version).
    """

    def __init__(
        self, upstream: Upstream, url: str, *, refresh_s: float = 5.0,
        name: str = "predictor", on_change: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.backend = Backend(name, url.rstrip("/"))
        self.refresh_s = refresh_s
        self.on_change = on_change
        self.version: str | None = None
        self.n_features: int | None = None
        self.max_batch_rows: int | None = None
        self.metadata: dict[str, Any] = {}

    @property
    def known(self) -> bool:
        return self.version is not None and self.n_features is not None

    def learn(self, version: str) -> None:
        if version != self.version:
            old, self.version = self.version, version
            log.info("model version %s -> %s", old, version)
            if self.on_change is not None:
                self.on_change(old, version)

    async def refresh(self) -> bool:
        """Read `/metadata` once; True when the model is known (now or from before)."""
        url = f"{self.backend.url}/metadata"
        try:
            reply = await self.upstream.call("GET", url, timeout_s=2.0, name=self.backend.name)
            meta: Any = reply.json() if reply.status == 200 else {}
            version = meta.get("model_version")
            if not version:  # the predictor is still loading its model
                return self.known
            n_features = int(meta["model"]["input_schema"]["n_features"])
            rows = meta.get("max_batch_rows")
        except (ApiError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cannot read %s: %s", url, getattr(exc, "message", exc))
            return self.known
        self.metadata = meta
        self.n_features = n_features
        self.max_batch_rows = int(rows) if rows is not None else None
        self.learn(str(version))
        return True

    async def run(self) -> None:
        """Refresh for ever (cancel the task to stop)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # keep refreshing whatever happened this time
                log.exception("metadata refresh of %s failed", self.backend.url)
            await asyncio.sleep(self.refresh_s if self.known else 0.2)

    async def predict(self, X: np.ndarray, rid: str | None, timeout_s: float) -> ModelReply:
        """`call_model` on this predictor."""
        return await call_model(self.upstream, self.backend, X, rid, timeout_s)


@asynccontextmanager
async def watch_models(
    upstream: Upstream, backends: Sequence[Backend], state: ServiceState,
    ready_when: Callable[[Sequence[RemoteModel]], bool] | None = None,
) -> AsyncIterator[list[RemoteModel]]:
    """The backends as RemoteModels, refreshed in the background for the block (a lifespan);
    the service turns ready (200 on /ready) once one of them is known, or once `ready_when`
    says so (e.g. the one a proxy routes to). For a proxy of several predictors started with
    `auto_ready=False`."""
    models = [RemoteModel(upstream, b.url, name=b.name) for b in backends]

    async def refresh(model: RemoteModel) -> None:
        while not await model.refresh():
            await asyncio.sleep(0.2)
        if not state.ready and (ready_when is None or ready_when(models)):
            state.metadata["n_features"] = model.n_features  # the docs' example row follows it
            state.ready = True
            log.info("ready: %s %s takes %s features", model.backend.name, model.version,
                     model.n_features)
        await model.run()

    async with AsyncExitStack() as stack:
        for model in models:
            await stack.enter_async_context(background(refresh(model)))
        yield models


def input_width(models: Sequence[RemoteModel]) -> int:
    """The row width the first known model takes (they take the same rows); a 503 before."""
    for model in models:
        if model.n_features is not None:
            return model.n_features
    raise ApiError(503, "the proxy does not know the models' input width yet", "not_ready")
