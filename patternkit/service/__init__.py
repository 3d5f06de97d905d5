"""The service scaffold every HTTP process of every pattern is built from.

`create_service` returns a FastAPI app with the operational surface users expect of a serving
framework: `/health` (live), `/ready` (503 until the lifespan has loaded what it needs),
`/metadata`, `/metrics` (Prometheus), `/stats` (hits, peak concurrency and the service's own
counters, read from the same registry as /metrics), `X-Request-ID` / `X-Served-By` /
`X-Model-Version` headers on every response (500s included), one JSON error shape for every
4xx/5xx, and a request body limit (413, refused unbuffered).

Modules: `errors` (the error shape), `state` (ServiceState), `metrics` (declare once, two
views), `middleware` (the one ASGI middleware), `routes` (fast and ops routes), `app`
(`create_service` and the typed lifespan state). What patterns import is re-exported here.
"""

from patternkit.service.app import (
    Closable,
    Lifespan,
    ServiceDep,
    background,
    create_service,
    from_state,
)
from patternkit.service.errors import (
    STATUS_ERRORS,
    ApiError,
    BodyTooLarge,
    error_response,
    install_error_handlers,
    json_response,
    request_id,
    validation_error,
)
from patternkit.service.metrics import CounterSet, Metrics
from patternkit.service.middleware import (
    DRAIN_FACTOR,
    DRAIN_TIMEOUT_S,
    OPS_PATHS,
    ServiceMiddleware,
    call_direct,
    drain,
)
from patternkit.service.routes import add_fast_route, fast_route, install_openapi, ops_routes_last
from patternkit.service.state import Endpoint, ServiceState, service_state

__all__ = [
    "DRAIN_FACTOR",
    "DRAIN_TIMEOUT_S",
    "OPS_PATHS",
    "STATUS_ERRORS",
    "ApiError",
    "BodyTooLarge",
    "Closable",
    "CounterSet",
    "Endpoint",
    "Lifespan",
    "Metrics",
    "ServiceDep",
    "ServiceMiddleware",
    "ServiceState",
    "add_fast_route",
    "background",
    "call_direct",
    "create_service",
    "drain",
    "error_response",
    "fast_route",
    "from_state",
    "install_error_handlers",
    "install_openapi",
    "json_response",
    "ops_routes_last",
    "request_id",
    "service_state",
    "validation_error",
]
