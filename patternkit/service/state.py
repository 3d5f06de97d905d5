"""What a service knows about itself: readiness, model version, metadata, stats and metrics.

`ServiceState` is made by `create_service`, held by the middleware and the ops routes, and
handed to the pattern's lifespan; routes reach it as `request.state.service` (`ServiceDep`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import Route

from patternkit.service.errors import error_response
from patternkit.service.metrics import Metrics, merge
from patternkit.settings import ServiceSettings

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorShape = Callable[[int, str, str | None], Response]
"""A protocol's own error body: (status, message, request id) -> the response."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServiceState:
    """Mutable, per-app facts: readiness, model version, metadata, counters and metrics.

    Counts belong in `metrics` (declared once with a `stat` path, shown on /stats and
    /metrics alike); `stats` holds the other facts /stats shows (settings, flags, ids).
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.served_by = settings.served_by
        self.ready = False
        self.unready_reason: str | None = None  # why /ready is 503, shown there (e.g. loading)
        self.metadata: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._version: str | None = None
        self.version_header: tuple[bytes, bytes] | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # added to every response (set_header)
        self.metrics = Metrics()
        self.requests: Counter = self.metrics.counter(
            "http_requests_total", "HTTP requests", {"method": (), "route": (), "status": ()}
        )
        self.latency: Histogram = self.metrics.histogram(
            "http_request_duration_seconds", "HTTP request latency",
            {"method": (), "route": ()}, buckets=LATENCY_BUCKETS,
        )
        # read when scraped, not bumped per request
        self.metrics.gauge("http_requests_in_flight", "requests being served").set_function(
            lambda: self.in_flight
        )
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # (method, path) -> (route, endpoint) of the fast routes the middleware calls itself
        self.fast_routes: dict[tuple[str, str], tuple[Route, Endpoint]] = {}
        # path prefix -> the error body of a protocol served there (the Open Inference
        # Protocol's `{"error": ...}` under /v2), for the errors the middleware answers itself
        self.error_shapes: dict[str, ErrorShape] = {}

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The (counter, histogram) children for a request kind, looked up once."""
        key = (method, route, status)
        found = self._series.get(key)
        if found is None:
            found = (self.requests.labels(method, route, str(status)),
                     self.latency.labels(method, route))
            self._series[key] = found
        return found

    def set_header(self, name: str, value: str) -> None:
        """Send `name: value` on every response from now on (e.g. an artifact's lineage)."""
        key = name.lower().encode("latin-1")
        self.headers = [(k, v) for k, v in self.headers if k != key]
        self.headers.append((key, value.encode("latin-1")))

    @property
    def model_version(self) -> str | None:
        return self._version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        self._version = version
        self.version_header = (b"x-model-version", version.encode()) if version else None

    def error_reply(
        self, path: str, status: int, message: str, request_id: str | None
    ) -> Response:
        """The scaffold's JSON error, or the body of the protocol served under `path`."""
        for prefix, shape in self.error_shapes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return shape(status, message, request_id)
        return error_response(status, message, request_id=request_id)

    def stats_view(self) -> dict[str, Any]:
        """The `/stats` body: hits and concurrency, the declared metrics, the other facts."""
        out: dict[str, Any] = {
            "served_by": self.served_by,
            "hits": self.hits,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }
        merge(out, self.metrics.stats())
        return merge(out, self.stats)


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
