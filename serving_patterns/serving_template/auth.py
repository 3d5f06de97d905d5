"""The API-key layer of S12's template: every request but the probes needs `X-API-Key`.

The key lives in the env var the config names (`auth.api_key_env`), never in the config file.
The check runs inside the scaffold's middleware, so a refused call still gets its
`X-Request-ID`, is counted on /metrics, and answers the scaffold's JSON error shape with 401.
"""

from __future__ import annotations

import hmac
import os

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from patternkit.service import error_response

HEADER = "X-API-Key"
OPEN_PATHS = frozenset({"/health", "/ready"})  # probes: orchestrators call them without keys


def api_key_from_env(env_name: str, config_path: str) -> str:
    """The key from the env var the config names; a server without one refuses to start."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise RuntimeError(
            f"{env_name} is not set: the config {config_path} (auth.api_key_env) requires "
            f"an API key in it; set it, e.g. {env_name}=$(openssl rand -hex 16)"
        )
    return key


class ApiKeyMiddleware:
    """Pure ASGI: compares X-API-Key with the key in constant time; 401 JSON when it differs."""

    def __init__(self, app: ASGIApp, key: str, failures: Counter) -> None:
        self.app = app
        self.key = key.encode()
        self.header = HEADER.lower().encode()
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == self.header), None)
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        reason = "missing" if given is None else "wrong"
        self.failures.labels(reason).inc()
        message = (f"missing API key: send it in the {HEADER} header" if given is None
                   else f"the API key in {HEADER} is not valid for this server")
        response = error_response(
            401, message, "unauthorized", request_id=scope.get("patternkit.request_id"),
            headers={"www-authenticate": f'ApiKey header="{HEADER}"'},
        )
        await response(scope, receive, send)


def install_api_key(app: FastAPI, key: str) -> None:
    """Check keys inside the scaffold's middleware (ids, metrics), before routing.

    `add_middleware` would put the check outside the scaffold, where a 401 gets no request id
    and is not counted; appending to `user_middleware` places it just inside instead.
    """
    registry: CollectorRegistry = app.state.service.registry
    failures = Counter(
        "template_auth_failures", "requests refused for a missing or wrong API key",
        ["reason"], registry=registry,
    )
    app.user_middleware.append(Middleware(ApiKeyMiddleware, key=key, failures=failures))
    add_security_scheme(app)


def add_security_scheme(app: FastAPI) -> None:
    """Document the key in OpenAPI: every operation needs it except the probes."""
    base = app.openapi

    def openapi() -> dict[str, object]:
        schema = base()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["ApiKey"] = {
            "type": "apiKey", "in": "header", "name": HEADER,
        }
        schema["security"] = [{"ApiKey": []}]
        for path in OPEN_PATHS:
            for operation in schema.get("paths", {}).get(path, {}).values():
                operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
